//! GPT-OSS from GGUF: architecture, KV cache, sampling, tokenizer and Harmony chat.

pub mod chat;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod harmony;
pub mod model;
pub mod sampling;
pub mod tokenizer;

pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use generate::{GenerateOptions, Generation, StopReason, generate, pick_next};
pub use gguf::open_gguf;
pub use model::{Layer, Model, Session, TensorSource};
pub use sampling::{Sampler, SamplerConfig};
pub use tokenizer::{StreamDecoder, Tokenizer, TokenizerError};
