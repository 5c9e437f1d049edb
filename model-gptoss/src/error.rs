//! Errors of model loading, the forward pass and generation.

use gptoss_backend::BackendError;

/// Everything that can go wrong between a GGUF file and generated tokens.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened or parsed.
    #[error("{message}")]
    File {
        /// The file.
        path: String,
        /// What the reader reported (naming the file).
        message: String,
    },
    /// A metadata key the model needs is absent.
    #[error("metadata key '{key}' is missing (needed for {what})")]
    MissingKey {
        /// The full key (`gpt-oss.block_count`).
        key: String,
        /// What it is used for.
        what: &'static str,
    },
    /// A metadata key has a value the model cannot use.
    #[error("metadata key '{key}': {detail}")]
    BadKey {
        /// The full key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The file's architecture is not GPT-OSS.
    #[error("general.architecture is '{found}', expected 'gpt-oss'")]
    WrongArchitecture {
        /// The architecture the file names.
        found: String,
    },
    /// A tensor the model needs is absent.
    #[error("tensor '{name}' is missing from the model file")]
    MissingTensor {
        /// Its name.
        name: String,
    },
    /// A tensor's shape disagrees with the metadata.
    #[error(
        "tensor '{name}' has shape {found:?} (ggml order), but the metadata implies {expected:?}"
    )]
    TensorShape {
        /// Its name.
        name: String,
        /// What the metadata implies.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },
    /// A tensor the reader could not hand over (unknown type, bad range).
    #[error("tensor '{name}': {detail}")]
    BadTensor {
        /// Its name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// The model uses a feature this implementation does not support.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The session has no room for the tokens.
    #[error(
        "context full: {have} positions used + {adding} new tokens exceed the session's limit of {limit} tokens (raise --ctx, up to the model's context_length)"
    )]
    ContextFull {
        /// Positions already in the cache.
        have: usize,
        /// Tokens that were to be added.
        adding: usize,
        /// The session's capacity.
        limit: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab} ids")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Invalid arguments to a model call.
    #[error("{0}")]
    InvalidInput(String),
    /// A previous forward call failed midway and left the KV cache half-written.
    #[error(
        "this session was left inconsistent by an earlier failed forward pass; start a new session"
    )]
    SessionPoisoned,
    /// The compute backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Result alias for the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;
