//! The GPT-OSS network on any [`Backend`]: weight loading with shape checks, sessions (per-layer
//! KV caches and the position), and the forward pass.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use gptoss_backend::{Backend, MoeWeights, Rope, WeightData};

/// Where weights come from: a GGUF file, or anything else that can name tensors.
pub trait TensorSource {
    /// The tensor called `name` (GGUF naming, e.g. `blk.0.attn_q.weight`), `None` if absent.
    fn weight(&self, name: &str) -> Result<Option<WeightData>>;
}

/// One decoder layer's uploaded weights.
pub struct Layer<W> {
    /// Pre-attention RMSNorm `[d]`.
    pub attn_norm: W,
    /// Query projection `[d, q_dim]` and bias `[q_dim]`.
    pub wq: W,
    /// Query bias.
    pub bq: W,
    /// Key projection `[d, kv_dim]`.
    pub wk: W,
    /// Key bias.
    pub bk: W,
    /// Value projection `[d, kv_dim]`.
    pub wv: W,
    /// Value bias.
    pub bv: W,
    /// Output projection `[q_dim, d]`.
    pub wo: W,
    /// Output bias `[d]`.
    pub bo: W,
    /// Per-head sink logits `[n_heads]`.
    pub sinks: W,
    /// Pre-MoE RMSNorm `[d]` (`post_attention_norm` in GGUF naming).
    pub moe_norm: W,
    /// Router and experts.
    pub moe: MoeWeights<W>,
}

/// A GPT-OSS model with its weights on backend `B`.
pub struct Model<B: Backend> {
    backend: B,
    config: ModelConfig,
    vocab_size: usize,
    rope: Rope,
    token_embd: B::Weight,
    output_norm: B::Weight,
    output: B::Weight,
    layers: Vec<Layer<B::Weight>>,
}

/// The state of one sequence: per-layer KV caches and the number of positions already processed.
pub struct Session<B: Backend> {
    caches: Vec<B::KvCache>,
    pos: usize,
    capacity: usize,
    poisoned: bool,
}

impl<B: Backend> Session<B> {
    /// Positions already in the cache (the position of the next token).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The most positions this session can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions still free.
    pub fn remaining(&self) -> usize {
        self.capacity - self.pos
    }
}

/// Fetch one tensor, checking its shape against what the metadata implies.
fn fetch(src: &dyn TensorSource, name: &str, expected: &[usize]) -> Result<WeightData> {
    let w = src.weight(name)?.ok_or_else(|| ModelError::MissingTensor {
        name: name.to_string(),
    })?;
    if w.shape != expected {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: w.shape.clone(),
        });
    }
    Ok(w)
}

impl<B: Backend> Model<B> {
    /// Load every tensor from `src`, check its shape against `config`, and upload it to `backend`.
    pub fn from_source(backend: B, config: ModelConfig, src: &dyn TensorSource) -> Result<Self> {
        let c = &config;
        let d = c.d_model;
        let up = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            let w = fetch(src, name, shape)?;
            Ok(backend.upload(&w)?)
        };
        // The vocabulary size is not a GPT-OSS metadata key: the embedding table defines it,
        // and the output matrix must agree.
        let embd = src
            .weight("token_embd.weight")?
            .ok_or_else(|| ModelError::MissingTensor {
                name: "token_embd.weight".into(),
            })?;
        if embd.shape.len() != 2 || embd.shape[0] != d || embd.shape[1] == 0 {
            return Err(ModelError::TensorShape {
                name: "token_embd.weight".into(),
                expected: vec![d, embd.shape.get(1).copied().unwrap_or(0).max(1)],
                found: embd.shape.clone(),
            });
        }
        let vocab_size = embd.shape[1];
        let token_embd = backend.upload(&embd)?;
        let output_norm = up("output_norm.weight", &[d])?;
        let output = up("output.weight", &[d, vocab_size])?;

        let (qd, kvd, ff, ne) = (c.q_dim(), c.kv_dim(), c.d_ff, c.n_experts);
        let mut layers = Vec::with_capacity(c.n_layers);
        for il in 0..c.n_layers {
            let n = |s: &str| format!("blk.{il}.{s}");
            layers.push(Layer {
                attn_norm: up(&n("attn_norm.weight"), &[d])?,
                wq: up(&n("attn_q.weight"), &[d, qd])?,
                bq: up(&n("attn_q.bias"), &[qd])?,
                wk: up(&n("attn_k.weight"), &[d, kvd])?,
                bk: up(&n("attn_k.bias"), &[kvd])?,
                wv: up(&n("attn_v.weight"), &[d, kvd])?,
                bv: up(&n("attn_v.bias"), &[kvd])?,
                wo: up(&n("attn_output.weight"), &[qd, d])?,
                bo: up(&n("attn_output.bias"), &[d])?,
                sinks: up(&n("attn_sinks.weight"), &[c.n_heads])?,
                moe_norm: up(&n("post_attention_norm.weight"), &[d])?,
                moe: MoeWeights {
                    router: up(&n("ffn_gate_inp.weight"), &[d, ne])?,
                    router_bias: up(&n("ffn_gate_inp.bias"), &[ne])?,
                    gate: up(&n("ffn_gate_exps.weight"), &[d, ff, ne])?,
                    gate_bias: up(&n("ffn_gate_exps.bias"), &[ff, ne])?,
                    up: up(&n("ffn_up_exps.weight"), &[d, ff, ne])?,
                    up_bias: up(&n("ffn_up_exps.bias"), &[ff, ne])?,
                    down: up(&n("ffn_down_exps.weight"), &[ff, d, ne])?,
                    down_bias: up(&n("ffn_down_exps.bias"), &[d, ne])?,
                },
            });
        }
        let rope = Rope::new(&config.rope);
        Ok(Model {
            backend,
            config,
            vocab_size,
            rope,
            token_embd,
            output_norm,
            output,
            layers,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Vocabulary size (rows of the embedding and output matrices).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A fresh session holding at most `max_positions` tokens (prompt and generated together);
    /// `None` means the model's full `context_length`.
    pub fn new_session(&self, max_positions: Option<usize>) -> Result<Session<B>> {
        let cap = max_positions.unwrap_or(self.config.context_length);
        if cap == 0 || cap > self.config.context_length {
            return Err(ModelError::InvalidInput(format!(
                "context size {cap} must be between 1 and the model's context_length {}",
                self.config.context_length
            )));
        }
        let caches = (0..self.config.n_layers)
            .map(|il| self.backend.new_kv_cache(&self.config.kv_cache(il, cap)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Session {
            caches,
            pos: 0,
            capacity: cap,
            poisoned: false,
        })
    }

    /// Run `tokens` (a whole prompt, or one new token) through the network at the session's
    /// position and append them to its KV caches. Returns logits `[tokens.len(), vocab]` when
    /// `all_logits`, else only the last position's `[1, vocab]`.
    pub fn forward(
        &self,
        session: &mut Session<B>,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<B::Tensor> {
        if let [token] = *tokens {
            self.check_forward(session, tokens)?;
            if let Some(logits) = self.forward_recorded(session, token)? {
                return Ok(logits);
            }
        }
        self.forward_with(session, tokens, all_logits, &mut |_, _| Ok(()))
    }

    /// One token through a recorded step where the backend keeps one (a CUDA graph: the step's
    /// ~200 launches in one): a replay when the backend holds a recording that fits, else a
    /// new recording. `Ok(None)`: the backend does not record this step; run it plainly.
    fn forward_recorded(&self, session: &mut Session<B>, token: u32) -> Result<Option<B::Tensor>> {
        let be = &self.backend;
        let pos = session.pos;
        if let Some(logits) = be.step_replay(&mut session.caches, token, pos)? {
            session.pos += 1;
            return Ok(Some(logits));
        }
        if !be.step_record_begin(&session.caches, token, pos)? {
            return Ok(None);
        }
        session.poisoned = true;
        // An error of the recorded pass is not returned here: the plain pass that follows a
        // failed recording meets it again, and reports it.
        let run = self
            .run_layers(session, &[token], false, &mut |_, _| Ok(()))
            .ok();
        let logits = be.step_record_end(&mut session.caches, pos, run)?;
        session.poisoned = false;
        if logits.is_some() {
            session.pos += 1;
        }
        Ok(logits)
    }

    /// The checks of a forward pass before anything runs.
    fn check_forward(&self, session: &Session<B>, tokens: &[u32]) -> Result<()> {
        if session.poisoned {
            return Err(ModelError::SessionPoisoned);
        }
        if session.caches.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "session has {} layer caches, the model {} layers (a session of another model?)",
                session.caches.len(),
                self.layers.len()
            )));
        }
        if tokens.is_empty() {
            return Err(ModelError::InvalidInput("forward: no tokens given".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                token: bad,
                vocab: self.vocab_size,
            });
        }
        if tokens.len() > session.remaining() {
            return Err(ModelError::ContextFull {
                have: session.pos,
                adding: tokens.len(),
                limit: session.capacity,
            });
        }
        Ok(())
    }

    /// [`Model::forward`], calling `on_layer(il, residual)` with the residual stream `[t, d]`
    /// after each decoder layer (for comparing against a reference layer by layer).
    pub fn forward_with(
        &self,
        session: &mut Session<B>,
        tokens: &[u32],
        all_logits: bool,
        on_layer: &mut dyn FnMut(usize, &B::Tensor) -> Result<()>,
    ) -> Result<B::Tensor> {
        self.check_forward(session, tokens)?;
        // From here on the caches get written: a failure leaves them inconsistent.
        session.poisoned = true;
        let logits = self.run_layers(session, tokens, all_logits, on_layer)?;
        session.pos += tokens.len();
        session.poisoned = false;
        Ok(logits)
    }

    fn run_layers(
        &self,
        session: &mut Session<B>,
        tokens: &[u32],
        all_logits: bool,
        on_layer: &mut dyn FnMut(usize, &B::Tensor) -> Result<()>,
    ) -> Result<B::Tensor> {
        let be = &self.backend;
        let c = &self.config;
        let pos0 = session.pos;
        let mut h = be.embed(&self.token_embd, tokens)?;
        let n_layers = self.layers.len();
        // Each residual add is fused with the norm that follows it (Backend::add_rms_norm):
        // `x` is the normed input of the next sub-block.
        // The final norm needs every row only with all_logits or a single token; otherwise
        // the last row is taken first.
        let fuse_final = all_logits || tokens.len() == 1;
        let mut x = match self.layers.first() {
            Some(l) => be.rms_norm(&h, &l.attn_norm, c.rms_eps)?,
            None if fuse_final => be.rms_norm(&h, &self.output_norm, c.rms_eps)?,
            None => be.rms_norm(&be.last_row(&h)?, &self.output_norm, c.rms_eps)?,
        };
        for (il, (l, cache)) in self
            .layers
            .iter()
            .zip(session.caches.iter_mut())
            .enumerate()
        {
            let [q, k, v] = be.qkv_rope(
                &x,
                (&l.wq, Some(&l.bq)),
                (&l.wk, Some(&l.bk)),
                (&l.wv, Some(&l.bv)),
                c.n_heads,
                c.n_kv_heads,
                pos0,
                &self.rope,
            )?;
            let a = be.attention(&q, &k, &v, cache, pos0, &l.sinks, &c.attention(il))?;
            let o = be.linear(&a, &l.wo, Some(&l.bo))?;
            let m = be.add_rms_norm_moe(&mut h, &o, &l.moe_norm, c.rms_eps, &l.moe, &c.moe())?;
            if let Some(next) = self.layers.get(il + 1) {
                x = be.add_rms_norm(&mut h, &m, &next.attn_norm, c.rms_eps)?;
            } else if fuse_final {
                x = be.add_rms_norm(&mut h, &m, &self.output_norm, c.rms_eps)?;
            } else {
                be.add_assign(&mut h, &m)?;
            }
            on_layer(il, &h)?;
        }
        if n_layers > 0 && !fuse_final {
            x = be.rms_norm(&be.last_row(&h)?, &self.output_norm, c.rms_eps)?;
        }
        Ok(be.linear(&x, &self.output, None)?)
    }
}
