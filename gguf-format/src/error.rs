//! The one error type of this crate: every variant names the file (when known) and the byte offset
//! where the problem was found, so a user can `xxd -s OFFSET` straight to it.

use std::path::{Path, PathBuf};

use crate::types::TypeIdError;

/// Everything that can go wrong reading, writing or querying a GGUF file.
///
/// `path` is empty when the bytes did not come from a file (see [`crate::parse_header`]);
/// `offset` is the absolute byte offset in that file of the field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// An operating-system error while opening, mapping or writing a file.
    #[error(
        "{}: I/O error at offset {offset} while {action}: {source}",
        show(path)
    )]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Offset reached when the error happened.
        offset: u64,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error(
        "{}: offset {offset}: not a GGUF file (magic {found:02x?}, expected \"GGUF\")",
        show(path)
    )]
    BadMagic {
        /// File concerned.
        path: PathBuf,
        /// Always 0.
        offset: u64,
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A GGUF version this library does not read (1, or newer than 3).
    #[error(
        "{}: offset {offset}: unsupported GGUF version {version} (this library reads versions 2 and 3)",
        show(path)
    )]
    UnsupportedVersion {
        /// File concerned.
        path: PathBuf,
        /// Offset of the version field (4).
        offset: u64,
        /// The version as read.
        version: u32,
    },
    /// The file ends before a field does.
    #[error(
        "{}: offset {offset}: file truncated reading {what}: need {needed} bytes, {available} left",
        show(path)
    )]
    Truncated {
        /// File concerned.
        path: PathBuf,
        /// Offset of the field that does not fit.
        offset: u64,
        /// Which field.
        what: String,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },
    /// A count (of keys, tensors, array elements, string bytes) that the rest of the file cannot
    /// possibly hold; refused before allocating anything.
    #[error(
        "{}: offset {offset}: implausible {what} {count}: the {available} bytes left can hold at most {max}",
        show(path)
    )]
    CountTooLarge {
        /// File concerned.
        path: PathBuf,
        /// Offset of the count field.
        offset: u64,
        /// Which count.
        what: String,
        /// The count as read.
        count: u64,
        /// Bytes left in the file.
        available: u64,
        /// Largest count those bytes could back.
        max: u64,
    },
    /// A string that is not UTF-8.
    #[error("{}: offset {offset}: {what} is not valid UTF-8: {source}", show(path))]
    InvalidUtf8 {
        /// File concerned.
        path: PathBuf,
        /// Offset of the string's length field.
        offset: u64,
        /// Which string.
        what: String,
        /// Where decoding failed.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A metadata value type id outside 0..=12.
    #[error(
        "{}: offset {offset}: {what}: unknown metadata value type {type_id}",
        show(path)
    )]
    InvalidValueType {
        /// File concerned.
        path: PathBuf,
        /// Offset of the type field.
        offset: u64,
        /// Key (and array position) concerned.
        what: String,
        /// The type id as read.
        type_id: u32,
    },
    /// A bool stored as something other than 0 or 1.
    #[error(
        "{}: offset {offset}: {what}: bool byte is {byte}, expected 0 or 1",
        show(path)
    )]
    InvalidBool {
        /// File concerned.
        path: PathBuf,
        /// Offset of the byte.
        offset: u64,
        /// Key concerned.
        what: String,
        /// The byte.
        byte: u8,
    },
    /// Arrays nested deeper than this library follows.
    #[error(
        "{}: offset {offset}: {what}: arrays nested deeper than {max_depth}",
        show(path)
    )]
    NestingTooDeep {
        /// File concerned.
        path: PathBuf,
        /// Offset of the too-deep array.
        offset: u64,
        /// Key concerned.
        what: String,
        /// The limit.
        max_depth: usize,
    },
    /// The same metadata key twice.
    #[error("{}: offset {offset}: duplicate metadata key {key:?}", show(path))]
    DuplicateKey {
        /// File concerned.
        path: PathBuf,
        /// Offset of the second occurrence.
        offset: u64,
        /// The key.
        key: String,
    },
    /// `general.alignment` is not a non-zero power of two stored as u32.
    #[error("{}: offset {offset}: general.alignment {detail}", show(path))]
    BadAlignment {
        /// File concerned.
        path: PathBuf,
        /// Offset of the key-value pair.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// A tensor info that cannot describe a tensor (too many dims, size overflow, shape not a
    /// whole number of blocks, duplicate name).
    #[error("{}: offset {offset}: tensor {tensor:?}: {detail}", show(path))]
    BadTensorInfo {
        /// File concerned.
        path: PathBuf,
        /// Offset of the tensor info (or the field at fault).
        offset: u64,
        /// Tensor name (as far as it was read).
        tensor: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor type id that was removed from ggml or is unknown.
    #[error("{}: offset {offset}: tensor {tensor:?}: {source}", show(path))]
    BadTensorType {
        /// File concerned.
        path: PathBuf,
        /// Offset of the type field.
        offset: u64,
        /// Tensor name.
        tensor: String,
        /// Removed or unknown id.
        #[source]
        source: TypeIdError,
    },
    /// A tensor whose data lies (partly) outside the file.
    #[error(
        "{}: offset {offset}: tensor {tensor:?} data [{start}, {end}) lies outside the file ({file_len} bytes)",
        show(path)
    )]
    TensorOutOfBounds {
        /// File concerned.
        path: PathBuf,
        /// Absolute offset where the tensor's data starts.
        offset: u64,
        /// Tensor name.
        tensor: String,
        /// Absolute start.
        start: u64,
        /// Absolute end (exclusive).
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// A metadata key that is required but absent.
    #[error("{}: offset {offset}: metadata key {key:?} is missing", show(path))]
    MissingKey {
        /// File concerned.
        path: PathBuf,
        /// Offset of the metadata section (where the key would be).
        offset: u64,
        /// The key.
        key: String,
    },
    /// A metadata value of another type than the caller asked for (or out of its range).
    #[error(
        "{}: offset {offset}: metadata key {key:?}: expected {expected}, found {found}",
        show(path)
    )]
    WrongType {
        /// File concerned.
        path: PathBuf,
        /// Offset of the key-value pair.
        offset: u64,
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: String,
        /// What the file holds (type, and value where it does not fit).
        found: String,
    },
    /// Files of a split set that do not fit together, or a tensor in two of them.
    #[error("{}: offset {offset}: split set: {detail}", show(path))]
    Split {
        /// File concerned.
        path: PathBuf,
        /// Offset of the field at fault (0 when about the file as a whole).
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// Input to the writer that cannot be written as GGUF.
    #[error("{}: offset {offset}: cannot write: {detail}", show(path))]
    InvalidWrite {
        /// File being written.
        path: PathBuf,
        /// Offset in the output where the problem arose.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
}

fn show(p: &Path) -> std::path::Display<'_> {
    if p.as_os_str().is_empty() {
        Path::new("<memory>").display()
    } else {
        p.display()
    }
}

impl GgufError {
    /// The byte offset the error refers to.
    pub fn offset(&self) -> u64 {
        use GgufError::*;
        match self {
            Io { offset, .. }
            | BadMagic { offset, .. }
            | UnsupportedVersion { offset, .. }
            | Truncated { offset, .. }
            | CountTooLarge { offset, .. }
            | InvalidUtf8 { offset, .. }
            | InvalidValueType { offset, .. }
            | InvalidBool { offset, .. }
            | NestingTooDeep { offset, .. }
            | DuplicateKey { offset, .. }
            | BadAlignment { offset, .. }
            | BadTensorInfo { offset, .. }
            | BadTensorType { offset, .. }
            | TensorOutOfBounds { offset, .. }
            | MissingKey { offset, .. }
            | WrongType { offset, .. }
            | Split { offset, .. }
            | InvalidWrite { offset, .. } => *offset,
        }
    }

    /// The file the error refers to (empty for in-memory input).
    pub fn path(&self) -> &Path {
        use GgufError::*;
        match self {
            Io { path, .. }
            | BadMagic { path, .. }
            | UnsupportedVersion { path, .. }
            | Truncated { path, .. }
            | CountTooLarge { path, .. }
            | InvalidUtf8 { path, .. }
            | InvalidValueType { path, .. }
            | InvalidBool { path, .. }
            | NestingTooDeep { path, .. }
            | DuplicateKey { path, .. }
            | BadAlignment { path, .. }
            | BadTensorInfo { path, .. }
            | BadTensorType { path, .. }
            | TensorOutOfBounds { path, .. }
            | MissingKey { path, .. }
            | WrongType { path, .. }
            | Split { path, .. }
            | InvalidWrite { path, .. } => path,
        }
    }
}
