//! The compute-backend trait of gptoss-rs, and the CPU reference backend every other backend is
//! checked against.
//!
//! The trait sits at GPT-OSS granularity (embed, RMSNorm, linear, RoPE, attention with a KV
//! cache, the MoE block, argmax): coarse enough that a GPU backend can fuse and graph-capture,
//! fine enough that every operation can be run on two backends and compared. Weights are uploaded
//! once, in their file formats (MXFP4 stays MXFP4); activations are f32 matrices.
//!
//! Nothing here knows about GGUF: a weight arrives as a ggml type, a shape and bytes.
#![warn(missing_docs)]

pub mod bytes;
pub mod cpu;
pub mod rope;

pub use bytes::HostBytes;
pub use cpu::{CpuBackend, CpuKvCache, CpuMode, CpuTensor, CpuWeight};
pub use gptoss_quant::GgmlType;
pub use rope::{Rope, RopeConfig};

/// Errors a backend can report.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run on this machine (no driver, no adapter, no device).
    #[error("backend {backend} is not available: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: String,
        /// What is missing, and what the user can do about it.
        reason: String,
    },
    /// A weight type the backend cannot handle for this operation.
    #[error("{op}: weight '{name}' has type {dtype}, which this backend does not support here")]
    UnsupportedType {
        /// The operation.
        op: &'static str,
        /// The weight's name.
        name: String,
        /// Its type.
        dtype: GgmlType,
    },
    /// Shapes that do not fit together.
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What disagreed with what.
        detail: String,
    },
    /// An operation this backend does not implement (in this form).
    #[error("{backend}: {what} is not supported by this backend")]
    Unsupported {
        /// The backend's name.
        backend: String,
        /// What was asked for.
        what: String,
    },
    /// The KV cache is full.
    #[error("context full: position {pos} is past the cache capacity of {capacity} tokens")]
    ContextFull {
        /// The first position that did not fit.
        pos: usize,
        /// The cache's capacity.
        capacity: usize,
    },
    /// Anything the device or driver reported.
    #[error("{backend}: {message}")]
    Device {
        /// The backend's name.
        backend: String,
        /// The device's message.
        message: String,
    },
}

/// Result alias for backend operations.
pub type Result<T> = std::result::Result<T, BackendError>;

/// A weight tensor as it comes from the file, before upload: ggml type, shape in ggml order
/// (`shape[0]` is the contiguous dimension) and the raw bytes.
#[derive(Clone)]
pub struct WeightData {
    /// Name, for error messages (`blk.0.attn_q.weight`).
    pub name: String,
    /// Element type of `bytes`.
    pub dtype: GgmlType,
    /// Shape in ggml order: `[ne0, ne1, ...]`, `ne0` contiguous. A matrix used by `linear` is
    /// `[k, n]` (n rows of k elements); an expert stack is `[k, n, n_experts]`.
    pub shape: Vec<usize>,
    /// The bytes, exactly as in the file.
    pub bytes: HostBytes,
}

impl std::fmt::Debug for WeightData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightData")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl WeightData {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The weights of one MoE block, uploaded.
pub struct MoeWeights<W> {
    /// Router matrix `[d_model, n_experts]`.
    pub router: W,
    /// Router bias `[n_experts]`.
    pub router_bias: W,
    /// Gate projections `[d_model, d_ff, n_experts]`.
    pub gate: W,
    /// Gate biases `[d_ff, n_experts]`.
    pub gate_bias: W,
    /// Up projections `[d_model, d_ff, n_experts]`.
    pub up: W,
    /// Up biases `[d_ff, n_experts]`.
    pub up_bias: W,
    /// Down projections `[d_ff, d_model, n_experts]`.
    pub down: W,
    /// Down biases `[d_model, n_experts]`.
    pub down_bias: W,
}

/// Shape and policy of one layer's attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionConfig {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA: `n_heads % n_kv_heads == 0`).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Sliding window: a query at position p sees keys p-window+1 ..= p. `None`: full causal.
    pub window: Option<usize>,
    /// Softmax scale (1/sqrt(head_dim) for GPT-OSS).
    pub scale: f32,
}

/// What a per-layer KV cache must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Longest context (positions) the cache must serve.
    pub max_positions: usize,
    /// A sliding-window layer needs only the last `window` positions: the cache may be a ring
    /// of that size.
    pub window: Option<usize>,
}

/// One draw from a temperature softmax over a logits row, as `gptoss_model`'s sampler makes it
/// when no top-k or top-p cut applies: a logit `l` of a token in `penalized` becomes
/// `l / penalty` when positive and `l * penalty` otherwise; NaN logits count as `-inf`; each
/// token's weight is `w = exp((l - max) * inv_temperature)` in f32 (the largest is 1), and
/// weights below `min_weight` become 0; the token is the first, in id order, whose running sum
/// of weights exceeds `u` times their total (the last token of positive weight when rounding
/// leaves none). A row with no finite logit has no token: an error.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftmaxDraw {
    /// `1 / temperature` (temperature > 0).
    pub inv_temperature: f32,
    /// Weights below this (min-p) are dropped; 0 keeps every token.
    pub min_weight: f32,
    /// Distinct token ids whose logit the repetition penalty changes.
    pub penalized: Vec<u32>,
    /// The repetition penalty (1 changes nothing).
    pub penalty: f32,
    /// The uniform draw in [0, 1).
    pub u: f64,
}

/// What [`Backend::softmax_candidates`] returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SoftmaxCandidates {
    /// (token id, penalized logit) of every token at or above the weight floor, in any order.
    pub tokens: Vec<(u32, f32)>,
    /// The sum of the other tokens' weights (relative to the largest, whose weight is 1).
    pub rest_weight: f64,
}

/// The MoE routing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts in the stack.
    pub n_experts: usize,
    /// Experts used per token.
    pub top_k: usize,
}

/// One compute backend: a device, its memory, and the GPT-OSS operations on it.
///
/// Activations are `Tensor`s: f32 row-major matrices `[rows, cols]` (rows = tokens). Each method
/// states its shapes; a backend returns [`BackendError::Shape`] rather than panicking on a
/// mismatch. Outputs are freshly allocated unless the method says it works in place.
pub trait Backend {
    /// A device-resident f32 matrix.
    type Tensor;
    /// A device-resident weight, in its file format.
    type Weight;
    /// One layer's KV cache.
    type KvCache;

    /// A short name for logs and tables (`"cpu"`, `"cuda:0 (NVIDIA H100 80GB HBM3)"`).
    fn name(&self) -> String;

    /// Upload a weight, keeping its format (a backend may re-lay the same bits out at upload).
    fn upload(&self, w: &WeightData) -> Result<Self::Weight>;

    /// Copy a host matrix `[rows, cols]` to the device.
    #[allow(clippy::wrong_self_convention)] // `from_` reads naturally: the backend makes a tensor.
    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;

    /// Copy a device matrix back: `(data, rows, cols)`.
    fn to_host(&self, t: &Self::Tensor) -> Result<(Vec<f32>, usize, usize)>;

    /// Rows of `table` (`[d, vocab]`, any type) for each id: `[ids.len(), d]`.
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor>;

    /// RMSNorm of each row of `x` (`[t, d]`) times `weight` (`[d]`).
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32) -> Result<Self::Tensor>;

    /// `x @ W^T + bias`: `x` `[t, k]`, `w` `[k, n]` in ggml order (any weight type), optional
    /// `bias` `[n]`; result `[t, n]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
    ) -> Result<Self::Tensor>;

    /// Several products of the same input, `[x @ W_i^T + bias_i]` (the q, k and v projections):
    /// the same as calling [`Backend::linear`] for each, which is what this default does; a
    /// backend may run them in one launch.
    fn linear_many(
        &self,
        x: &Self::Tensor,
        ws: &[(&Self::Weight, Option<&Self::Weight>)],
    ) -> Result<Vec<Self::Tensor>> {
        ws.iter().map(|(w, b)| self.linear(x, w, *b)).collect()
    }

    /// `x += y`, elementwise; same shapes.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;

    /// NEOX-style rotary embedding in place. `x` is `[t, n_heads * head_dim]`; row i is at
    /// position `pos0 + i`. `rope` holds the (YaRN) frequencies and the cos/sin scale.
    fn rope(&self, x: &mut Self::Tensor, n_heads: usize, pos0: usize, rope: &Rope) -> Result<()>;

    /// `x += y`, then the RMSNorm of the sum times `weight` (the residual add that ends one
    /// sub-block and the norm that starts the next). The same as [`Backend::add_assign`] then
    /// [`Backend::rms_norm`], which is what this default does; a backend may fuse them.
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        y: &Self::Tensor,
        weight: &Self::Weight,
        eps: f32,
    ) -> Result<Self::Tensor> {
        self.add_assign(x, y)?;
        self.rms_norm(x, weight, eps)
    }

    /// RoPE of the queries (`n_heads` heads) and the keys (`n_kv_heads`) of the same rows: the
    /// same as two [`Backend::rope`] calls, which is what this default does; a backend may
    /// run them in one launch.
    fn rope_qk(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        n_heads: usize,
        n_kv_heads: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<()> {
        self.rope(q, n_heads, pos0, rope)?;
        self.rope(k, n_kv_heads, pos0, rope)
    }

    /// The q, k and v products of one input, then RoPE of q and k: the same as
    /// [`Backend::linear_many`] over the three then [`Backend::rope_qk`], which is what this
    /// default does; a backend may apply the rotation as the products are written.
    #[allow(clippy::too_many_arguments)]
    fn qkv_rope(
        &self,
        x: &Self::Tensor,
        q: (&Self::Weight, Option<&Self::Weight>),
        k: (&Self::Weight, Option<&Self::Weight>),
        v: (&Self::Weight, Option<&Self::Weight>),
        n_heads: usize,
        n_kv_heads: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<[Self::Tensor; 3]> {
        let mut out = self.linear_many(x, &[q, k, v])?.into_iter();
        let (Some(mut qt), Some(mut kt), Some(vt)) = (out.next(), out.next(), out.next()) else {
            return Err(BackendError::Shape {
                op: "qkv_rope",
                detail: "linear_many returned fewer than 3 outputs".into(),
            });
        };
        self.rope_qk(&mut qt, &mut kt, n_heads, n_kv_heads, pos0, rope)?;
        Ok([qt, kt, vt])
    }

    /// A fresh, empty KV cache for one layer.
    fn new_kv_cache(&self, cfg: &KvCacheConfig) -> Result<Self::KvCache>;

    /// Causal attention with sinks. `q` `[t, n_heads*head_dim]`, `k`/`v` `[t, n_kv_heads*head_dim]`
    /// (already roped), rows at positions `pos0..pos0+t`. The new keys and values are appended
    /// to `cache` (which must hold exactly positions `0..pos0` before the call), then each query
    /// attends to every cached or new key it may see (causal, and `cfg.window`). `sinks` `[n_heads]`
    /// (f32) is each head's sink logit: it joins the softmax denominator and has no value.
    /// Result `[t, n_heads*head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        pos0: usize,
        sinks: &Self::Weight,
        cfg: &AttentionConfig,
    ) -> Result<Self::Tensor>;

    /// The GPT-OSS MoE block on `x` `[t, d_model]`: router logits `W_r x + b_r`, top-k of the raw
    /// logits (ties: lower expert id first), softmax over those k; per chosen expert
    /// `g = min(gate, 7)`, `u = clamp(up, -7, 7)`, `h = g * sigmoid(1.702 g) * (u + 1)`,
    /// `W_down h + b_down`; the routing-weighted sum. Result `[t, d_model]`.
    fn moe(
        &self,
        x: &Self::Tensor,
        w: &MoeWeights<Self::Weight>,
        cfg: &MoeConfig,
    ) -> Result<Self::Tensor>;

    /// The MoE block with only the experts `experts` (`lo..hi` of `cfg.n_experts`) held here:
    /// expert parallelism. `w.router`/`w.router_bias` are the full router (`[d_model,
    /// n_experts]`), the six expert tensors hold only the local slice (last dimension
    /// `hi - lo`, local expert `i` is global expert `lo + i`). The routing is exactly that of
    /// [`Backend::moe`] over all experts (top-k, softmax over the k); then a pick outside
    /// `lo..hi` contributes nothing and a pick inside contributes its routing-weighted expert
    /// output, so that the sum over ranks of disjoint ranges covering `0..n_experts` is the
    /// full MoE. Default: the full range is [`Backend::moe`]; any other range is
    /// [`BackendError::Unsupported`].
    fn moe_local(
        &self,
        x: &Self::Tensor,
        w: &MoeWeights<Self::Weight>,
        cfg: &MoeConfig,
        experts: std::ops::Range<usize>,
    ) -> Result<Self::Tensor> {
        if experts == (0..cfg.n_experts) {
            return self.moe(x, w, cfg);
        }
        Err(BackendError::Unsupported {
            backend: self.name(),
            what: format!(
                "an expert-parallel MoE over experts {experts:?} of {} (only the full range)",
                cfg.n_experts
            ),
        })
    }

    /// `x += y`, then the MoE block ([`Backend::moe`]) on the RMSNorm of the sum times `norm`:
    /// the residual add that ends the attention sub-block, the norm that starts the MoE one,
    /// and the MoE. The same as [`Backend::add_rms_norm`] then [`Backend::moe`], which is what
    /// this default does; a backend may fuse the add and the norm into the MoE's router.
    fn add_rms_norm_moe(
        &self,
        x: &mut Self::Tensor,
        y: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        w: &MoeWeights<Self::Weight>,
        cfg: &MoeConfig,
    ) -> Result<Self::Tensor> {
        let xm = self.add_rms_norm(x, y, norm, eps)?;
        self.moe(&xm, w, cfg)
    }

    /// Index of the largest value in each row (first on ties).
    fn argmax(&self, x: &Self::Tensor) -> Result<Vec<u32>>;

    /// A token drawn on the device from the softmax of the last row of `logits` (see
    /// [`SoftmaxDraw`]), so that only the token id crosses back; `Ok(None)` when this backend
    /// has no such kernel, and the caller copies the row and draws on the host (with the same
    /// `u`). Default: `Ok(None)`.
    fn sample_softmax(&self, logits: &Self::Tensor, draw: &SoftmaxDraw) -> Result<Option<u32>> {
        let _ = (logits, draw);
        Ok(None)
    }

    /// The candidates of a draw with a top-k or top-p cut (`draw.u` unused): every token of
    /// the last row of `logits` whose weight (as [`SoftmaxDraw`] defines it, before
    /// `min_weight`) is at least `floor`, or, when `0 < top_k < cols`, every token whose
    /// penalized logit is at least the `top_k`-th largest (`top_k` of them, more on ties);
    /// with its penalized logit, and the sum of the other tokens' weights. `gptoss_model`'s
    /// sampler finishes the cut on them when they decide it. `Ok(None)`: more than `cap`
    /// candidates, or no such kernel here (default).
    fn softmax_candidates(
        &self,
        logits: &Self::Tensor,
        draw: &SoftmaxDraw,
        floor: f32,
        top_k: usize,
        cap: usize,
    ) -> Result<Option<SoftmaxCandidates>> {
        let _ = (logits, draw, floor, top_k, cap);
        Ok(None)
    }

    /// The last row of `x` as a `[1, cols]` matrix (logits are only needed for the last token
    /// during generation).
    fn last_row(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Replay the recorded single-token forward pass (see [`Backend::step_record_begin`]) for
    /// `token` at position `pos` over `caches`, when one was recorded for these caches and its
    /// launch shapes fit `pos`: returns the logits `[1, vocab]`, and the caches then hold
    /// `pos + 1` positions, as after the forward pass itself. `Ok(None)`: nothing to replay.
    /// Default: never.
    fn step_replay(
        &self,
        caches: &mut [Self::KvCache],
        token: u32,
        pos: usize,
    ) -> Result<Option<Self::Tensor>> {
        let _ = (caches, token, pos);
        Ok(None)
    }

    /// Begin recording the single-token forward pass of `token` at `pos` over `caches` (a CUDA
    /// graph): when this returns true, the operations called next are recorded, not yet run,
    /// until [`Backend::step_record_end`]. Default: false (the backend does not record).
    fn step_record_begin(&self, caches: &[Self::KvCache], token: u32, pos: usize) -> Result<bool> {
        let _ = (caches, token, pos);
        Ok(false)
    }

    /// End a recording begun by [`Backend::step_record_begin`] with the pass's logits (`None`
    /// when the pass returned an error), and run it: returns the logits, or `Ok(None)` when the
    /// pass could not be recorded, in which case nothing ran and `caches` are as before the
    /// pass (run it plainly: a genuine error then shows there). Default: the logits as given.
    fn step_record_end(
        &self,
        caches: &mut [Self::KvCache],
        pos: usize,
        logits: Option<Self::Tensor>,
    ) -> Result<Option<Self::Tensor>> {
        let _ = (caches, pos);
        Ok(logits)
    }

    /// Bytes of device memory in use at most so far, if the backend can tell.
    fn peak_memory_bytes(&self) -> Option<u64> {
        None
    }

    /// Make this backend's device the calling thread's current one. A caller that drives
    /// several backends from one thread (the split backend of gptoss-parallel: one backend per
    /// GPU) calls it before each backend's operations, so that driver calls which act on the
    /// thread's current device reach the right one. Default: nothing to do.
    fn make_current(&self) -> Result<()> {
        Ok(())
    }
}
