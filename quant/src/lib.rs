//! Every ggml block format: decode, encode and quantized dot products, bit-exact with ggml.
#![warn(missing_docs)]

pub use gguf_format::GgmlType;
