//! Writing GGUF: a streaming writer (header first, then each tensor's data in order), the
//! header encoder, whole-file rewrites and split writing.
//!
//! Layout rules follow gguf-py's `GGUFWriter` (which wrote the fixtures): the data section starts
//! at the end of the tensor infos rounded up to the alignment, every tensor is followed by zero
//! padding up to the alignment, and a file without tensors ends right after its metadata.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::reader::{Endian, align_up};
use crate::value::{Array, Metadata, Value};
use crate::{DEFAULT_ALIGNMENT, GgufError, GgufFile, GgufModel, MAX_DIMS, TensorInfo};

/// Format choices of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// GGUF version: 3 (default) or 2.
    pub version: u32,
    /// Byte order; big-endian needs version 3.
    pub endian: Endian,
    /// Pad a file without tensors up to the alignment after its metadata. Both forms exist:
    /// gguf-py pads when `write_tensors_to_file` runs (even for zero tensors) and does not when a
    /// vocab-only converter skips it (the o200k and llama-vocab fixtures). Default: no padding.
    pub pad_empty_data_section: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            version: 3,
            endian: Endian::Little,
            pad_empty_data_section: false,
        }
    }
}

struct Enc<'a> {
    buf: &'a mut Vec<u8>,
    big: bool,
}

impl Enc<'_> {
    fn raw<const N: usize>(&mut self, mut b: [u8; N]) {
        if self.big {
            b.reverse();
        }
        self.buf.extend_from_slice(&b);
    }
    fn u32(&mut self, v: u32) {
        self.raw(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.raw(v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn value(&mut self, v: &Value) {
        match v {
            Value::U8(x) => self.raw(x.to_le_bytes()),
            Value::I8(x) => self.raw(x.to_le_bytes()),
            Value::U16(x) => self.raw(x.to_le_bytes()),
            Value::I16(x) => self.raw(x.to_le_bytes()),
            Value::U32(x) => self.raw(x.to_le_bytes()),
            Value::I32(x) => self.raw(x.to_le_bytes()),
            Value::F32(x) => self.raw(x.to_le_bytes()),
            Value::Bool(x) => self.buf.push(*x as u8),
            Value::String(s) => self.str(s),
            Value::Array(a) => self.array(a),
            Value::U64(x) => self.raw(x.to_le_bytes()),
            Value::I64(x) => self.raw(x.to_le_bytes()),
            Value::F64(x) => self.raw(x.to_le_bytes()),
        }
    }
    fn array(&mut self, a: &Array) {
        self.u32(a.element_type().id());
        self.u64(a.len() as u64);
        macro_rules! each {
            ($v:expr) => {
                for x in $v {
                    self.raw(x.to_le_bytes())
                }
            };
        }
        match a {
            Array::U8(v) => self.buf.extend_from_slice(v),
            Array::I8(v) => each!(v),
            Array::U16(v) => each!(v),
            Array::I16(v) => each!(v),
            Array::U32(v) => each!(v),
            Array::I32(v) => each!(v),
            Array::F32(v) => each!(v),
            Array::U64(v) => each!(v),
            Array::I64(v) => each!(v),
            Array::F64(v) => each!(v),
            Array::Bool(v) => self.buf.extend(v.iter().map(|&b| b as u8)),
            Array::String(v) => {
                for s in v.iter() {
                    self.str(s)
                }
            }
            Array::Array(v) => {
                for inner in v {
                    self.array(inner)
                }
            }
        }
    }
}

/// Alignment a metadata set asks for, or why it is unusable.
fn metadata_alignment(md: &Metadata) -> Result<u64, String> {
    match md.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(*a as u64),
        Some(v) => Err(format!(
            "general.alignment must be a power-of-two uint32, found {}",
            v.type_description()
        )),
    }
}

/// Give `tensors` consecutive offsets, each rounded up to `alignment` (llama.cpp's packing).
pub fn pack_offsets(tensors: &mut [TensorInfo], alignment: u64) -> Result<u64, GgufError> {
    let mut off = 0u64;
    for t in tensors {
        let size = t
            .checked_size()
            .map_err(|detail| invalid(0, format!("tensor {:?}: {detail}", t.name)))?;
        t.offset = off;
        off = off
            .checked_add(size)
            .and_then(|e| align_up(e, alignment))
            .ok_or_else(|| invalid(0, "data section size overflows".into()))?;
    }
    Ok(off)
}

fn invalid(offset: u64, detail: String) -> GgufError {
    GgufError::InvalidWrite {
        path: PathBuf::new(),
        offset,
        detail,
    }
}

/// Encode everything before the data section (magic ... tensor infos, plus the padding to the
/// data section when there are tensors), checking that the result is a file this crate reads.
///
/// Returns the bytes and the data section's offset.
pub fn encode_header(
    metadata: &Metadata,
    tensors: &[TensorInfo],
    opts: WriteOptions,
) -> Result<(Vec<u8>, u64), GgufError> {
    if !(2..=3).contains(&opts.version) || (opts.version == 2 && opts.endian == Endian::Big) {
        return Err(invalid(
            4,
            format!("version {} with {:?} byte order", opts.version, opts.endian),
        ));
    }
    let alignment = metadata_alignment(metadata).map_err(|d| invalid(0, d))?;
    let mut names = std::collections::HashSet::new();
    let mut end = 0u64;
    for t in tensors {
        let size = t
            .checked_size()
            .map_err(|d| invalid(0, format!("tensor {:?}: {d}", t.name)))?;
        if t.shape.len() > MAX_DIMS {
            return Err(invalid(
                0,
                format!("tensor {:?} has {} dimensions", t.name, t.shape.len()),
            ));
        }
        if t.offset % alignment != 0 || t.offset < end {
            return Err(invalid(
                0,
                format!(
                    "tensor {:?}: offset {} is unaligned ({alignment}) or overlaps the previous tensor (ends at {end})",
                    t.name, t.offset
                ),
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err(invalid(0, format!("duplicate tensor name {:?}", t.name)));
        }
        end = t.offset + size;
    }
    let mut buf = Vec::new();
    let mut e = Enc {
        buf: &mut buf,
        big: opts.endian == Endian::Big,
    };
    e.buf.extend_from_slice(b"GGUF");
    e.u32(opts.version);
    e.u64(tensors.len() as u64);
    e.u64(metadata.len() as u64);
    for (k, v) in metadata.iter() {
        e.str(k);
        e.u32(v.value_type().id());
        e.value(v);
    }
    for t in tensors {
        e.str(&t.name);
        e.u32(t.shape.len() as u32);
        for &n in &t.shape {
            e.u64(n);
        }
        e.u32(t.ggml_type.id());
        e.u64(t.offset);
    }
    let infos_end = buf.len() as u64;
    let data_offset =
        align_up(infos_end, alignment).ok_or_else(|| invalid(infos_end, "overflow".into()))?;
    if !tensors.is_empty() || opts.pad_empty_data_section {
        buf.resize(data_offset as usize, 0);
    }
    Ok((buf, data_offset))
}

/// A GGUF file being written: the header goes out at creation, then each tensor's data in info
/// order; [`GgufWriter::finish`] renames the temporary file into place. Dropping the writer
/// without finishing deletes the temporary file and leaves any existing file at `path` untouched.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    tensors: Vec<TensorInfo>,
    next: usize,
    /// Bytes of tensor `next` given so far through [`GgufWriter::write_tensor_part`].
    part: u64,
    header_len: u64,
    pos: u64,
    data_offset: u64,
    alignment: u64,
}

const ZEROS: [u8; 4096] = [0; 4096];

impl GgufWriter {
    /// Start writing `path` with this metadata (written in its order) and these tensor infos.
    ///
    /// The infos' offsets are written as given (see [`pack_offsets`] to compute them); they must
    /// be aligned and in increasing order.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &Metadata,
        tensors: Vec<TensorInfo>,
        opts: WriteOptions,
    ) -> Result<GgufWriter, GgufError> {
        let path = path.as_ref().to_path_buf();
        let with_path = |e: GgufError| match e {
            GgufError::InvalidWrite { offset, detail, .. } => GgufError::InvalidWrite {
                path: path.clone(),
                offset,
                detail,
            },
            e => e,
        };
        let (header, data_offset) = encode_header(metadata, &tensors, opts).map_err(with_path)?;
        let alignment = metadata_alignment(metadata).unwrap_or(DEFAULT_ALIGNMENT);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".gguf-write-")
            .tempfile_in(&dir)
            .map_err(|source| GgufError::Io {
                path: path.clone(),
                offset: 0,
                action: "creating a temporary file",
                source,
            })?;
        let mut w = GgufWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, tmp),
            tensors,
            next: 0,
            part: 0,
            header_len: header.len() as u64,
            pos: 0,
            data_offset,
            alignment,
        };
        w.put(&header)?;
        Ok(w)
    }

    /// [`GgufWriter::create`] with the offsets packed as llama.cpp packs them (each tensor's
    /// data aligned to the metadata's `general.alignment`, 32 by default).
    pub fn create_packed(
        path: impl AsRef<Path>,
        metadata: &Metadata,
        mut tensors: Vec<TensorInfo>,
        opts: WriteOptions,
    ) -> Result<GgufWriter, GgufError> {
        let alignment = metadata_alignment(metadata).unwrap_or(DEFAULT_ALIGNMENT);
        pack_offsets(&mut tensors, alignment)?;
        GgufWriter::create(path, metadata, tensors, opts)
    }

    /// The size the file will have once every tensor is written.
    pub fn file_size(&self) -> u64 {
        self.tensors
            .last()
            .map(|t| {
                let end = self.data_offset + t.offset + t.size_bytes();
                align_up(end, self.alignment).unwrap_or(end)
            })
            // No tensors: the header is the whole file.
            .unwrap_or(self.header_len)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), GgufError> {
        self.out.write_all(b).map_err(|source| GgufError::Io {
            path: self.path.clone(),
            offset: self.pos,
            action: "writing",
            source,
        })?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, target: u64) -> Result<(), GgufError> {
        while self.pos < target {
            let n = (target - self.pos).min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// The info of the tensor whose data are due next, `None` when all have been written.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Write the data of the next tensor (exactly its `size_bytes`).
    pub fn write_tensor_data(&mut self, data: &[u8]) -> Result<(), GgufError> {
        self.write_tensor_chunks(std::iter::once(data))
    }

    /// Append part of the data of the tensor due next; once exactly its `size_bytes` have been
    /// given it is complete (and padded), and the next part starts the following tensor. For
    /// producers that make a tensor in pieces over time. Tensors of zero bytes are skipped.
    pub fn write_tensor_part(&mut self, part: &[u8]) -> Result<(), GgufError> {
        if part.is_empty() {
            return Ok(());
        }
        self.skip_empty_tensors()?;
        let Some(t) = self.tensors.get(self.next) else {
            return Err(GgufError::InvalidWrite {
                path: self.path.clone(),
                offset: self.pos,
                detail: "more tensor data than tensor infos".into(),
            });
        };
        let (start, size) = (self.data_offset + t.offset, t.size_bytes());
        if self.part + part.len() as u64 > size {
            return Err(GgufError::InvalidWrite {
                path: self.path.clone(),
                offset: self.pos,
                detail: format!("tensor {:?}: more than its {size} bytes of data", t.name),
            });
        }
        if self.part == 0 {
            self.pad_to(start)?;
        }
        self.put(part)?;
        self.part += part.len() as u64;
        if self.part == size {
            let padded = align_up(self.pos, self.alignment).unwrap_or(self.pos);
            self.pad_to(padded)?;
            self.next += 1;
            self.part = 0;
        }
        Ok(())
    }

    /// Step over tensors of zero bytes due next (they need no data).
    fn skip_empty_tensors(&mut self) -> Result<(), GgufError> {
        while self.part == 0 {
            match self.tensors.get(self.next) {
                Some(t) if t.size_bytes() == 0 => {
                    let start = self.data_offset + t.offset;
                    self.pad_to(start)?;
                    self.next += 1;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Write the data of the next tensor from pieces (streaming: no need to hold it whole).
    pub fn write_tensor_chunks<'b>(
        &mut self,
        chunks: impl IntoIterator<Item = &'b [u8]>,
    ) -> Result<(), GgufError> {
        if self.part != 0 {
            return Err(GgufError::InvalidWrite {
                path: self.path.clone(),
                offset: self.pos,
                detail: "a tensor given in parts is not complete".into(),
            });
        }
        let Some(t) = self.tensors.get(self.next) else {
            return Err(GgufError::InvalidWrite {
                path: self.path.clone(),
                offset: self.pos,
                detail: "more tensor data than tensor infos".into(),
            });
        };
        let (start, size, name) = (self.data_offset + t.offset, t.size_bytes(), t.name.clone());
        self.pad_to(start)?;
        for c in chunks {
            if self.pos + c.len() as u64 > start + size {
                return Err(GgufError::InvalidWrite {
                    path: self.path.clone(),
                    offset: self.pos,
                    detail: format!("tensor {name:?}: more than its {size} bytes of data"),
                });
            }
            self.put(c)?;
        }
        if self.pos != start + size {
            return Err(GgufError::InvalidWrite {
                path: self.path.clone(),
                offset: self.pos,
                detail: format!(
                    "tensor {name:?}: {} bytes of data, expected {size}",
                    self.pos - start
                ),
            });
        }
        let padded = align_up(self.pos, self.alignment).unwrap_or(self.pos);
        self.pad_to(padded)?;
        self.next += 1;
        Ok(())
    }

    /// Check every tensor was written, flush, sync and rename into place. Returns the file size.
    pub fn finish(mut self) -> Result<u64, GgufError> {
        self.skip_empty_tensors()?;
        if self.next != self.tensors.len() {
            return Err(GgufError::InvalidWrite {
                path: self.path.clone(),
                offset: self.pos,
                detail: format!(
                    "finished after {} of {} tensors",
                    self.next,
                    self.tensors.len()
                ),
            });
        }
        let io = |path: &Path, offset, action, source| GgufError::Io {
            path: path.to_path_buf(),
            offset,
            action,
            source,
        };
        self.out
            .flush()
            .map_err(|e| io(&self.path, self.pos, "flushing", e))?;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| io(&self.path, self.pos, "flushing", e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| io(&self.path, self.pos, "syncing", e))?;
        tmp.persist(&self.path)
            .map_err(|e| io(&self.path, self.pos, "renaming into place", e.error))?;
        Ok(self.pos)
    }
}

/// Encode a whole file in memory: header plus `data[i]` for `tensors[i]` (for tests and tools
/// working on small files).
pub fn to_bytes(
    metadata: &Metadata,
    tensors: &[TensorInfo],
    data: &[&[u8]],
    opts: WriteOptions,
) -> Result<Vec<u8>, GgufError> {
    let (mut buf, data_offset) = encode_header(metadata, tensors, opts)?;
    if data.len() != tensors.len() {
        return Err(invalid(
            0,
            format!("{} tensors but {} data slices", tensors.len(), data.len()),
        ));
    }
    let alignment = metadata_alignment(metadata).unwrap_or(DEFAULT_ALIGNMENT);
    for (t, d) in tensors.iter().zip(data) {
        if d.len() as u64 != t.size_bytes() {
            return Err(invalid(
                buf.len() as u64,
                format!(
                    "tensor {:?}: {} bytes of data, expected {}",
                    t.name,
                    d.len(),
                    t.size_bytes()
                ),
            ));
        }
        buf.resize((data_offset + t.offset) as usize, 0);
        buf.extend_from_slice(d);
        let padded = align_up(buf.len() as u64, alignment).unwrap_or(buf.len() as u64);
        buf.resize(padded as usize, 0);
    }
    Ok(buf)
}

/// Write `file`'s metadata, tensor infos and data to `out` (same version and byte order).
pub fn rewrite(file: &GgufFile, out: impl AsRef<Path>) -> Result<u64, GgufError> {
    let opts = WriteOptions {
        version: file.version(),
        endian: file.endian(),
        pad_empty_data_section: file.tensors().is_empty() && file.len() > file.header().infos_end,
    };
    let mut w = GgufWriter::create(out, file.metadata(), file.tensors().to_vec(), opts)?;
    for t in file.tensors() {
        w.write_tensor_data(file.tensor_data(t)?)?;
    }
    w.finish()
}

/// How [`write_split`] cuts a model into files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBy {
    /// At most this many bytes of tensor data per file (a single larger tensor gets a file of its own).
    MaxBytes(u64),
    /// At most this many tensors per file.
    MaxTensors(usize),
}

/// Write `model` as a split set `{prefix}-0000k-of-0000n.gguf` the way llama.cpp's `gguf-split`
/// does: the first file carries all metadata plus `split.no`, `split.count` and
/// `split.tensors.count`; the others only the `split.*` keys. Returns the paths written.
pub fn write_split(
    model: &GgufModel,
    prefix: impl AsRef<Path>,
    by: SplitBy,
) -> Result<Vec<PathBuf>, GgufError> {
    let prefix = prefix.as_ref();
    let all: Vec<&TensorInfo> = model.tensors().collect();
    let mut groups: Vec<Vec<&TensorInfo>> = vec![Vec::new()];
    let mut bytes = 0u64;
    for t in all.iter().copied() {
        let g = groups.last_mut().expect("groups starts non-empty");
        let full = match by {
            SplitBy::MaxBytes(max) => !g.is_empty() && bytes.saturating_add(t.size_bytes()) > max,
            SplitBy::MaxTensors(max) => g.len() >= max.max(1),
        };
        if full {
            groups.push(Vec::new());
            bytes = 0;
        }
        groups.last_mut().expect("non-empty").push(t);
        bytes = bytes.saturating_add(t.size_bytes());
    }
    let n = groups.len();
    if n > u16::MAX as usize || all.len() > i32::MAX as usize {
        return Err(invalid(
            0,
            format!("{n} split files or {} tensors is too many", all.len()),
        ));
    }
    let mut paths = Vec::with_capacity(n);
    for (k, group) in groups.iter().enumerate() {
        let mut md = if k == 0 {
            model.metadata().clone()
        } else {
            Metadata::new()
        };
        if k > 0
            && let Some(a) = model.metadata().get("general.alignment")
        {
            md.insert("general.alignment", a.clone());
        }
        md.insert("split.no", Value::U16(k as u16));
        md.insert("split.count", Value::U16(n as u16));
        md.insert("split.tensors.count", Value::I32(all.len() as i32));
        let mut infos: Vec<TensorInfo> = group.iter().map(|t| (*t).clone()).collect();
        pack_offsets(&mut infos, md.alignment())?;
        let name = format!(
            "{}-{:05}-of-{:05}.gguf",
            prefix
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("model"),
            k + 1,
            n
        );
        let path = prefix.with_file_name(name);
        let mut w = GgufWriter::create(&path, &md, infos, WriteOptions::default())?;
        for t in group {
            let view = model
                .tensor_checked(&t.name)?
                .ok_or_else(|| invalid(0, format!("tensor {:?} vanished", t.name)))?;
            w.write_tensor_data(view.data)?;
        }
        w.finish()?;
        paths.push(path);
    }
    Ok(paths)
}
