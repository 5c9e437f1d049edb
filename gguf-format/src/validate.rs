//! Validation: structure (offsets, alignment, overlaps, sizes, names, counts, required keys) and
//! tensor data in the spirit of ggml's `ggml_validate_row_data` (NaN/Inf in float data and in
//! block scales, E8M0 0xFF in MXFP4). Every problem is reported, not just the first.

use std::fmt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::reader::parse_lenient;
use crate::types::GgmlType;
use crate::{GgufError, Header, MAX_NAME_BYTES, TensorInfo};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Legal but unusual; llama.cpp would still load the file.
    Warning,
    /// The file is broken or llama.cpp would refuse it.
    Error,
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Absolute byte offset of the problem.
    pub offset: u64,
    /// Tensor concerned, if any.
    pub tensor: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}: offset {}: ", self.offset)?;
        if let Some(t) = &self.tensor {
            write!(f, "tensor {t:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Everything [`validate`] found in one file.
#[derive(Debug, Clone, Default)]
pub struct ValidationReport {
    /// The file.
    pub path: PathBuf,
    /// Every problem, in the order found.
    pub findings: Vec<Finding>,
    /// Tensors whose data were checked.
    pub tensors_checked: usize,
    /// Bytes of tensor data scanned.
    pub bytes_checked: u64,
}

impl ValidationReport {
    /// True when no finding is an error (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.errors().next().is_none()
    }

    /// The error findings.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    fn push(&mut self, severity: Severity, offset: u64, tensor: Option<&str>, message: String) {
        self.findings.push(Finding {
            severity,
            offset,
            tensor: tensor.map(str::to_string),
            message,
        });
    }

    fn push_error(&mut self, e: &GgufError) {
        let tensor = match e {
            GgufError::BadTensorInfo { tensor, .. }
            | GgufError::BadTensorType { tensor, .. }
            | GgufError::TensorOutOfBounds { tensor, .. } => Some(tensor.as_str()),
            _ => None,
        };
        // The error's Display starts with "path: offset N: "; keep only the message.
        let text = e.to_string();
        let msg = text
            .split_once(&format!("offset {}: ", e.offset()))
            .map(|(_, m)| m.to_string())
            .unwrap_or(text);
        let msg = match tensor {
            Some(t) => msg
                .strip_prefix(&format!("tensor {t:?}: "))
                .map(str::to_string)
                .unwrap_or(msg),
            None => msg,
        };
        self.push(Severity::Error, e.offset(), tensor, msg);
    }
}

/// Validate the GGUF file at `path`: structure, required keys and all tensor data.
pub fn validate(path: impl AsRef<Path>) -> ValidationReport {
    let path = path.as_ref();
    let mut report = ValidationReport {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(source) => {
            report.push_error(&GgufError::Io {
                path: path.to_path_buf(),
                offset: 0,
                action: "opening",
                source,
            });
            return report;
        }
    };
    // SAFETY: read-only map of a file we only read (see `GgufFile::open`).
    let mmap = match unsafe { memmap2::Mmap::map(&file) } {
        Ok(m) => m,
        Err(source) => {
            report.push_error(&GgufError::Io {
                path: path.to_path_buf(),
                offset: 0,
                action: "memory-mapping",
                source,
            });
            return report;
        }
    };
    check(&mmap, path, &mut report);
    report
}

/// Validate a GGUF file held in memory.
pub fn validate_bytes(bytes: &[u8]) -> ValidationReport {
    let mut report = ValidationReport::default();
    check(bytes, Path::new(""), &mut report);
    report
}

fn check(bytes: &[u8], path: &Path, report: &mut ValidationReport) {
    let mut soft = Vec::new();
    let header = match parse_lenient(bytes, path, &mut soft) {
        Ok(h) => h,
        Err(e) => {
            for s in &soft {
                report.push_error(s);
            }
            report.push_error(&e);
            return;
        }
    };
    for s in &soft {
        report.push_error(s);
    }
    check_structure(&header, bytes.len() as u64, report);
    for t in &header.tensors {
        let Some((start, end)) = abs_range(&header, t) else {
            continue;
        };
        if end > bytes.len() as u64 {
            continue;
        }
        check_data(
            t,
            start,
            &bytes[start as usize..end as usize],
            header.endian == crate::Endian::Big,
            report,
        );
        report.tensors_checked += 1;
        report.bytes_checked += end - start;
    }
}

fn abs_range(h: &Header, t: &TensorInfo) -> Option<(u64, u64)> {
    let start = h.data_offset.checked_add(t.offset)?;
    Some((start, start.checked_add(t.size_bytes())?))
}

fn check_structure(h: &Header, file_len: u64, report: &mut ValidationReport) {
    use Severity::*;
    let md = &h.metadata;
    // Shards after the first of a split set carry only the split.* keys (llama.cpp's gguf-split).
    let later_shard = md.get_u64("split.no").is_ok_and(|n| n > 0);
    match md.get("general.architecture") {
        None if later_shard => {}
        None => report.push(
            Error,
            24,
            None,
            "required key general.architecture is missing".into(),
        ),
        Some(v) if v.as_str().is_none() => report.push(
            Error,
            md.offset_of("general.architecture").unwrap_or(0),
            None,
            format!(
                "general.architecture is {}, expected string",
                v.type_description()
            ),
        ),
        _ => {}
    }
    if h.tensors.iter().any(|t| t.ggml_type.is_quantized())
        && !md.contains_key("general.quantization_version")
    {
        report.push(
            Warning,
            24,
            None,
            "quantized tensors but no general.quantization_version".into(),
        );
    }
    if !h.tensors.is_empty() && h.data_offset > file_len {
        report.push(
            Error,
            h.infos_end,
            None,
            format!(
                "data section starts at {} past the end of the file ({file_len} bytes)",
                h.data_offset
            ),
        );
    }
    for t in &h.tensors {
        if t.name.len() >= MAX_NAME_BYTES {
            report.push(
                Error,
                0,
                Some(&t.name),
                format!(
                    "name is {} bytes, llama.cpp allows at most {}",
                    t.name.len(),
                    MAX_NAME_BYTES - 1
                ),
            );
        }
        match abs_range(h, t) {
            Some((s, e)) if e <= file_len => {
                let _ = s;
            }
            r => {
                let (s, e) = r.unwrap_or((u64::MAX, u64::MAX));
                report.push(
                    Error,
                    s,
                    Some(&t.name),
                    format!(
                        "data [{s}, {e}) ({} bytes for {} {:?}) lies outside the file ({file_len} bytes)",
                        t.size_bytes(),
                        t.ggml_type,
                        t.shape
                    ),
                );
            }
        }
    }
    // Overlaps, in offset order; then llama.cpp's packing (info order, padding < alignment).
    let mut by_off: Vec<&TensorInfo> = h.tensors.iter().collect();
    by_off.sort_by_key(|t| t.offset);
    for w in by_off.windows(2) {
        let end = w[0].offset.saturating_add(w[0].size_bytes());
        if w[1].offset < end {
            report.push(
                Error,
                h.data_offset.saturating_add(w[1].offset),
                Some(&w[1].name),
                format!(
                    "data overlaps tensor {:?} (which ends at data offset {end})",
                    w[0].name
                ),
            );
        }
    }
    let mut expected = 0u64;
    for t in &h.tensors {
        if t.offset != expected {
            report.push(
                Warning,
                h.data_offset.saturating_add(t.offset),
                Some(&t.name),
                format!(
                    "data offset {} where llama.cpp's packing (info order, padding to {}) puts {expected}",
                    t.offset, h.alignment
                ),
            );
        }
        expected = t
            .offset
            .saturating_add(t.size_bytes())
            .div_ceil(h.alignment)
            .saturating_mul(h.alignment);
    }
}

/// Where a block's float scales live, per type: (byte offset in the block, kind).
#[derive(Clone, Copy)]
enum Scale {
    Half(usize),
    Single(usize),
    E8m0(usize),
}

fn scales(t: GgmlType) -> &'static [Scale] {
    use GgmlType::*;
    use Scale::*;
    // Offsets follow the block structs of ggml-common.h.
    match t {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ1_S
        | IQ4_XS => &[Half(0)],
        Q4_1 | Q5_1 | Q8_1 | Q4_K | Q5_K => &[Half(0), Half(2)],
        Q2_K => &[Half(80), Half(82)],
        Q3_K => &[Half(108)],
        Q6_K => &[Half(208)],
        Q8_K => &[Single(0)],
        TQ1_0 => &[Half(52)],
        TQ2_0 => &[Half(64)],
        MXFP4 => &[E8m0(0)],
        _ => &[],
    }
}

struct Bad {
    count: u64,
    first: Option<u64>,
}

impl Bad {
    fn hit(&mut self, i: u64) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(i);
        }
    }
}

fn check_data(t: &TensorInfo, start: u64, d: &[u8], big: bool, report: &mut ValidationReport) {
    // Big-endian files store every multi-byte number swapped, tensor data included.
    fn arr<const N: usize>(c: &[u8], big: bool) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&c[..N]);
        if big {
            a.reverse();
        }
        a
    }
    use GgmlType::*;
    let mut bad = Bad {
        count: 0,
        first: None,
    };
    let what;
    match t.ggml_type {
        F32 => {
            what = "NaN/Inf values";
            for (i, c) in d.chunks_exact(4).enumerate() {
                if !f32::from_le_bytes(arr(c, big)).is_finite() {
                    bad.hit(i as u64 * 4);
                }
            }
        }
        F64 => {
            what = "NaN/Inf values";
            for (i, c) in d.chunks_exact(8).enumerate() {
                if !f64::from_le_bytes(arr(c, big)).is_finite() {
                    bad.hit(i as u64 * 8);
                }
            }
        }
        F16 => {
            what = "NaN/Inf values";
            for (i, c) in d.chunks_exact(2).enumerate() {
                if !f16::from_le_bytes(arr(c, big)).is_finite() {
                    bad.hit(i as u64 * 2);
                }
            }
        }
        BF16 => {
            what = "NaN/Inf values";
            for (i, c) in d.chunks_exact(2).enumerate() {
                if !bf16::from_le_bytes(arr(c, big)).is_finite() {
                    bad.hit(i as u64 * 2);
                }
            }
        }
        ty => {
            let sc = scales(ty);
            if sc.is_empty() {
                return;
            }
            what = if ty == MXFP4 {
                "blocks with E8M0 scale 0xFF (NaN)"
            } else {
                "blocks with a NaN/Inf scale"
            };
            let ts = ty.type_size();
            for (i, b) in d.chunks_exact(ts).enumerate() {
                let broken = sc.iter().any(|s| match *s {
                    Scale::Half(o) => !f16::from_le_bytes(arr(&b[o..], big)).is_finite(),
                    Scale::Single(o) => !f32::from_le_bytes(arr(&b[o..], big)).is_finite(),
                    Scale::E8m0(o) => b[o] == 0xFF,
                });
                if broken {
                    bad.hit((i * ts) as u64);
                }
            }
        }
    }
    if let Some(first) = bad.first {
        report.push(
            Severity::Error,
            start + first,
            Some(&t.name),
            format!(
                "{} {what} in {} data (first at data byte {first})",
                bad.count, t.ggml_type
            ),
        );
    }
}
