//! GGUF: read, write, validate and memory-map the ggml model container.
#![warn(missing_docs)]

pub mod types;

pub use types::{GgmlType, TypeIdError};
