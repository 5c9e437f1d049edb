//! GGUF: read, write, validate and memory-map the ggml model container.
//!
//! - [`GgufFile::open`] maps one file and parses only its header: opening a 60 GB model costs
//!   the same as opening a 1 MB one. Tensor data are zero-copy `&[u8]` views into the map.
//! - [`GgufModel::open`] opens a single file or a whole split set (`NAME-00001-of-00003.gguf`).
//! - [`Metadata`] keeps keys in file order with typed getters whose errors name the key, the
//!   expected and the found type.
//! - [`writer`] streams metadata, tensor infos and aligned data to a temporary file and renames
//!   it into place; rewriting a file reproduces it byte for byte.
//! - [`validate()`] checks structure and tensor data and reports every problem found.
//!
//! Nothing in this crate panics on malformed input, and no allocation is sized by a count the
//! file's length cannot back.
#![warn(missing_docs)]

pub mod error;
pub mod model;
pub mod reader;
pub mod types;
pub mod validate;
pub mod value;
pub mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

pub use error::GgufError;
pub use model::{GgufModel, TensorView, split_paths};
pub use reader::{Endian, Header, parse_header, parse_header_at};
pub use types::{GgmlType, TypeIdError};
pub use validate::{Finding, Severity, ValidationReport, validate, validate_bytes};
pub use value::{Array, Metadata, StringArray, Value, ValueType};
pub use writer::{
    GgufWriter, SplitBy, WriteOptions, encode_header, pack_offsets, rewrite, to_bytes, write_split,
};

/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name llama.cpp accepts, in bytes, including its terminating NUL (`GGML_MAX_NAME`).
pub const MAX_NAME_BYTES: usize = 64;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.ffn_down_exps.weight`).
    pub name: String,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Dimensions in ggml order: `shape[0]` is the contiguous one (the reverse of PyTorch's).
    pub shape: Vec<u64>,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of the shape; 1 for a scalar with no dimensions).
    ///
    /// Saturates at `u64::MAX` for shapes a parsed file cannot have (the reader refuses overflow).
    pub fn n_elements(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(1u64, |a, &n| a.checked_mul(n))
            .unwrap_or(u64::MAX)
    }

    /// Bytes of data: `n_elements / block_size * type_size` (saturating, like `n_elements`).
    pub fn size_bytes(&self) -> u64 {
        self.checked_size().unwrap_or(u64::MAX)
    }

    /// Bytes of one row (`shape[0]` elements).
    pub fn row_bytes(&self) -> u64 {
        let ne0 = self.shape.first().copied().unwrap_or(1);
        ne0 / self.ggml_type.block_size() as u64 * self.ggml_type.type_size() as u64
    }

    /// Data size, or why the shape cannot hold data of its type (overflow, partial blocks).
    pub fn checked_size(&self) -> Result<u64, String> {
        let n = self
            .shape
            .iter()
            .try_fold(1u64, |a, &n| a.checked_mul(n))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("element count of shape {:?} overflows", self.shape))?;
        let bs = self.ggml_type.block_size() as u64;
        let ne0 = self.shape.first().copied().unwrap_or(1);
        if ne0 % bs != 0 {
            return Err(format!(
                "ne[0] = {ne0} is not a multiple of the {} block size {bs}",
                self.ggml_type
            ));
        }
        self.ggml_type
            .bytes_for(n)
            .ok_or_else(|| format!("byte size of shape {:?} overflows", self.shape))
    }
}

/// One memory-mapped GGUF file: its parsed header and a shared map of its bytes.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    header: Header,
    mmap: Arc<Mmap>,
}

impl GgufFile {
    /// Map `path` and parse its header. Tensor data are not touched (not even paged in).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |action, source| GgufError::Io {
            path: path.to_path_buf(),
            offset: 0,
            action,
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| io("opening", e))?;
        // SAFETY: the map is read-only and never handed out as mutable. Another process
        // truncating or rewriting the file while it is mapped would be undefined behaviour;
        // like every mmap-based model loader we accept that for files we only read.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io("memory-mapping", e))?;
        let header = parse_header_at(&mmap, path)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            header,
            mmap: Arc::new(mmap),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Byte order.
    pub fn endian(&self) -> Endian {
        self.header.endian
    }

    /// Data alignment (from `general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The info of the tensor named `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// True for an empty file (never true for a file that parsed).
    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// The shared map, so a backend can keep views past this borrow without copying.
    pub fn mmap(&self) -> &Arc<Mmap> {
        &self.mmap
    }

    /// Absolute byte range of a tensor's data in the map, checked against the file length.
    pub fn tensor_range(&self, info: &TensorInfo) -> Result<Range<usize>, GgufError> {
        let start = self.header.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.size_bytes()));
        let len = self.mmap.len() as u64;
        match (start, end) {
            (Some(s), Some(e)) if e <= len => Ok(s as usize..e as usize),
            _ => Err(GgufError::TensorOutOfBounds {
                path: self.path.clone(),
                offset: start.unwrap_or(u64::MAX),
                tensor: info.name.clone(),
                start: start.unwrap_or(u64::MAX),
                end: end.unwrap_or(u64::MAX),
                file_len: len,
            }),
        }
    }

    /// A tensor's data, zero-copy.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let r = self.tensor_range(info)?;
        Ok(&self.mmap[r])
    }
}

impl GgufFile {
    /// The file as one JSON object (what `gptoss inspect --json` prints): `version`,
    /// `alignment`, `metadata` (keys in file order, arrays in full) and `tensors` (`name`,
    /// `type` as the ggml name, `shape` in ggml order, `offset` relative to the data section,
    /// `size_bytes`).
    pub fn to_json(&self) -> serde_json::Value {
        let tensors: Vec<serde_json::Value> = self
            .tensors()
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "type": t.ggml_type.name(),
                    "shape": t.shape,
                    "offset": t.offset,
                    "size_bytes": t.size_bytes(),
                })
            })
            .collect();
        serde_json::json!({
            "version": self.version(),
            "alignment": self.alignment(),
            "metadata": self.metadata().to_json(),
            "tensors": tensors,
        })
    }
}
