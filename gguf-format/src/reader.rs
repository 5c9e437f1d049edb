//! Parsing the GGUF header (magic, version, counts, metadata, tensor infos) from bytes.
//!
//! Every read is bounds-checked; every count is compared with the bytes left before anything is
//! allocated from it, so a hostile file costs at most O(file size) memory and never panics.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::GgufError;
use crate::types::GgmlType;
use crate::value::{Array, Metadata, StringArray, Value, ValueType};
use crate::{DEFAULT_ALIGNMENT, MAX_DIMS, TensorInfo};

/// Byte order of a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Endian {
    /// Little-endian (nearly every file).
    #[default]
    Little,
    /// Big-endian (GGUF v3 allows it; detected by the version reading byte-swapped).
    Big,
}

/// Deepest array nesting followed; deeper is an error rather than a stack overflow.
pub const MAX_ARRAY_DEPTH: usize = 64;

/// Everything in a GGUF file before the tensor data.
#[derive(Debug, Clone)]
pub struct Header {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Byte order.
    pub endian: Endian,
    /// Key-value pairs in file order.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of every tensor offset.
    pub alignment: u64,
    /// Absolute offset where the tensor infos end (before padding).
    pub infos_end: u64,
    /// Absolute offset of the data section (`infos_end` rounded up to `alignment`).
    pub data_offset: u64,
}

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    endian: Endian,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if (n as u64) > self.left() {
            return Err(GgufError::Truncated {
                path: self.path(),
                offset: self.pos as u64,
                what: what(),
                needed: n as u64,
                available: self.left(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        if self.endian == Endian::Big {
            a.reverse();
        }
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A count of items each at least `min_size` bytes, refused if the rest of the file cannot hold it.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize, GgufError> {
        let offset = self.pos as u64;
        let count = self.u64(what)?;
        let max = self.left() / min_size.max(1) as u64;
        if count > max {
            return Err(GgufError::CountTooLarge {
                path: self.path(),
                offset,
                what: what(),
                count,
                available: self.left(),
                max,
            });
        }
        Ok(count as usize)
    }

    fn str(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, GgufError> {
        let offset = self.pos as u64;
        let len = self.count(1, &|| format!("length of {}", what()))?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|source| GgufError::InvalidUtf8 {
            path: self.path(),
            offset,
            what: what(),
            source,
        })
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<ValueType, GgufError> {
        let offset = self.pos as u64;
        let id = self.u32(&|| format!("value type of {}", what()))?;
        ValueType::from_id(id).ok_or_else(|| GgufError::InvalidValueType {
            path: self.path(),
            offset,
            what: what(),
            type_id: id,
        })
    }

    fn value(&mut self, t: ValueType, what: &dyn Fn() -> String) -> Result<Value, GgufError> {
        Ok(match t {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.arr(what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.arr(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            ValueType::Bool => Value::Bool(self.bool(what)?),
            ValueType::String => Value::String(self.str(what)?.to_string()),
            ValueType::Array => Value::Array(self.array(0, what)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
        })
    }

    fn bool(&mut self, what: &dyn Fn() -> String) -> Result<bool, GgufError> {
        let offset = self.pos as u64;
        match self.take(1, what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(GgufError::InvalidBool {
                path: self.path(),
                offset,
                what: what(),
                byte,
            }),
        }
    }

    /// Fixed-size elements: one bounds check, then a tight decode loop.
    fn fixed<T, const N: usize>(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
        f: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        // `n` was checked against the bytes left by `count`, so this cannot overflow or over-allocate.
        let bytes = self.take(n * N, what)?;
        let big = self.endian == Endian::Big;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                if big {
                    a.reverse();
                }
                f(a)
            })
            .collect())
    }

    fn array(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<Array, GgufError> {
        let offset = self.pos as u64;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                path: self.path(),
                offset,
                what: what(),
                max_depth: MAX_ARRAY_DEPTH,
            });
        }
        let t = self.value_type(&|| format!("element type of {}", what()))?;
        let n = self.count(t.min_size(), &|| format!("element count of {}", what()))?;
        Ok(match t {
            ValueType::U8 => Array::U8(self.take(n, what)?.to_vec()),
            ValueType::I8 => Array::I8(self.fixed(n, what, i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(self.fixed(n, what, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.fixed(n, what, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.fixed(n, what, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.fixed(n, what, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.fixed(n, what, f32::from_le_bytes)?),
            ValueType::U64 => Array::U64(self.fixed(n, what, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.fixed(n, what, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.fixed(n, what, f64::from_le_bytes)?),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.bool(&|| format!("{}[{i}]", what()))?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                // First pass measures, so the buffer is allocated once at its exact size.
                let start = self.pos;
                let mut total = 0usize;
                for i in 0..n {
                    let len = self.count(1, &|| format!("length of {}[{i}]", what()))?;
                    self.take(len, &|| format!("{}[{i}]", what()))?;
                    total += len;
                }
                self.pos = start;
                let mut a = StringArray::with_capacity(n, total);
                for i in 0..n {
                    a.push(self.str(&|| format!("{}[{i}]", what()))?);
                }
                Array::String(a)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.array(depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                Array::Array(v)
            }
        })
    }
}

/// Round `x` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Parse the header of a GGUF file held in `bytes` (the whole file, or at least its header).
///
/// `path` only labels errors (pass an empty path for in-memory data).
pub fn parse_header_at(bytes: &[u8], path: &Path) -> Result<Header, GgufError> {
    parse_impl(bytes, path, None)
}

/// Parse the header of an in-memory GGUF file (errors carry an empty path).
pub fn parse_header(bytes: &[u8]) -> Result<Header, GgufError> {
    parse_header_at(bytes, Path::new(""))
}

/// Parse as far as the structure allows, collecting problems that do not stop parsing
/// (duplicate keys or tensor names, a bad alignment value, unaligned offsets, bad tensor types
/// or shapes: such tensors are left out) into `soft` instead of failing on the first.
pub(crate) fn parse_lenient(
    bytes: &[u8],
    path: &Path,
    soft: &mut Vec<GgufError>,
) -> Result<Header, GgufError> {
    parse_impl(bytes, path, Some(soft))
}

fn parse_impl(
    bytes: &[u8],
    path: &Path,
    mut soft: Option<&mut Vec<GgufError>>,
) -> Result<Header, GgufError> {
    // A problem the structure survives: fatal in strict mode, collected in lenient mode.
    let mut problem = |e: GgufError| -> Result<(), GgufError> {
        match soft.as_deref_mut() {
            Some(v) => {
                v.push(e);
                Ok(())
            }
            None => Err(e),
        }
    };
    let mut c = Cursor {
        bytes,
        pos: 0,
        endian: Endian::Little,
        path,
    };
    let magic: [u8; 4] = {
        let s = c.take(4, &|| "magic".into())?;
        [s[0], s[1], s[2], s[3]]
    };
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            offset: 0,
            found: magic,
        });
    }
    let mut version = c.u32(&|| "version".into())?;
    // Nothing flags a big-endian file except the version reading byte-swapped (gguf-py's rule:
    // a little-endian read with the low 16 bits zero).
    if version & 0xFFFF == 0 && version != 0 {
        c.endian = Endian::Big;
        version = version.swap_bytes();
    }
    if !(2..=3).contains(&version) || (version == 2 && c.endian == Endian::Big) {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            offset: 4,
            version,
        });
    }
    // Minimum on-disk sizes: a tensor info is name len (8) + n_dims (4) + type (4) + offset (8);
    // a key-value pair is key len (8) + type (4) + at least one byte of value.
    let n_tensors_off = c.pos as u64;
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let n_kv = c.u64(&|| "metadata key-value count".into())?;
    let left = c.left();
    if n_kv > left / 13 {
        return Err(GgufError::CountTooLarge {
            path: path.to_path_buf(),
            offset: n_tensors_off + 8,
            what: "metadata key-value count".into(),
            count: n_kv,
            available: left,
            max: left / 13,
        });
    }
    let shared_path: Option<Arc<Path>> = if path.as_os_str().is_empty() {
        None
    } else {
        Some(Arc::from(path))
    };
    let mut metadata = Metadata::with_origin(shared_path, c.pos as u64);
    for i in 0..n_kv {
        let kv_off = c.pos as u64;
        let key = c.str(&|| format!("key of metadata pair {i}"))?.to_string();
        let what = || format!("metadata {key:?}");
        let t = c.value_type(&what)?;
        let value = c.value(t, &what)?;
        if !metadata.push_from_file(key.clone(), value, kv_off) {
            problem(GgufError::DuplicateKey {
                path: path.to_path_buf(),
                offset: kv_off,
                key,
            })?;
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
        Some(v) => {
            problem(GgufError::BadAlignment {
                path: path.to_path_buf(),
                offset: metadata.offset_of("general.alignment").unwrap_or(0),
                detail: match v {
                    Value::U32(a) => format!("is {a}, not a non-zero power of two"),
                    v => format!("has type {}, expected uint32", v.type_description()),
                },
            })?;
            DEFAULT_ALIGNMENT
        }
    };
    let left = c.left();
    if n_tensors > left / 24 {
        return Err(GgufError::CountTooLarge {
            path: path.to_path_buf(),
            offset: n_tensors_off,
            what: "tensor count".into(),
            count: n_tensors,
            available: left,
            max: left / 24,
        });
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    let bad = |offset: u64, name: &str, detail: String| GgufError::BadTensorInfo {
        path: path.to_path_buf(),
        offset,
        tensor: name.to_string(),
        detail,
    };
    for i in 0..n_tensors {
        let info_off = c.pos as u64;
        let name = c.str(&|| format!("name of tensor {i}"))?.to_string();
        let dims_off = c.pos as u64;
        let n_dims = c.u32(&|| format!("n_dims of tensor {name:?}"))?;
        let mut keep = true;
        if n_dims as usize > MAX_DIMS {
            // Reading on is still well defined, as long as the dims fit in the file.
            if n_dims as u64 > c.left() / 8 {
                return Err(bad(dims_off, &name, format!("{n_dims} dimensions")));
            }
            problem(bad(
                dims_off,
                &name,
                format!("{n_dims} dimensions, at most {MAX_DIMS} allowed"),
            ))?;
            keep = false;
        }
        let mut shape = Vec::with_capacity((n_dims as usize).min(MAX_DIMS));
        for d in 0..n_dims {
            let ne = c.u64(&|| format!("ne[{d}] of tensor {name:?}"))?;
            if keep {
                shape.push(ne);
            }
        }
        let type_off = c.pos as u64;
        let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
        let offset_off = c.pos as u64;
        let offset = c.u64(&|| format!("offset of tensor {name:?}"))?;
        let ggml_type = match GgmlType::from_id(type_id) {
            Ok(t) => t,
            Err(source) => {
                problem(GgufError::BadTensorType {
                    path: path.to_path_buf(),
                    offset: type_off,
                    tensor: name.clone(),
                    source,
                })?;
                continue;
            }
        };
        if !keep {
            continue;
        }
        let info = TensorInfo {
            name,
            ggml_type,
            shape,
            offset,
        };
        // ggml's rules: every ne fits in i64, the element count does not overflow, rows are whole
        // blocks; the data offset is aligned; names are unique.
        if let Some(d) = info.shape.iter().position(|&n| n > i64::MAX as u64) {
            problem(bad(
                dims_off,
                &info.name,
                format!("ne[{d}] = {} is negative as int64", info.shape[d]),
            ))?;
            continue;
        }
        if let Err(detail) = info.checked_size() {
            problem(bad(dims_off, &info.name, detail))?;
            continue;
        }
        if offset % alignment != 0 {
            problem(bad(
                offset_off,
                &info.name,
                format!("data offset {offset} is not a multiple of the alignment {alignment}"),
            ))?;
        }
        if !names.insert(info.name.clone()) {
            problem(bad(info_off, &info.name, "duplicate tensor name".into()))?;
            continue;
        }
        tensors.push(info);
    }
    let infos_end = c.pos as u64;
    let data_offset = align_up(infos_end, alignment).ok_or_else(|| GgufError::BadAlignment {
        path: path.to_path_buf(),
        offset: infos_end,
        detail: format!("{alignment} overflows the data offset"),
    })?;
    Ok(Header {
        version,
        endian: c.endian,
        metadata,
        tensors,
        alignment,
        infos_end,
        data_offset,
    })
}
