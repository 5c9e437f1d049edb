//! GPT-OSS hyperparameters, read from GGUF metadata (`gpt-oss.*` keys), never assumed.

use crate::error::{ModelError, Result};
use gguf_format::Metadata;
use gptoss_backend::{AttentionConfig, KvCacheConfig, MoeConfig, RopeConfig};

/// The architecture name GGUF files of GPT-OSS carry in `general.architecture`.
pub const ARCH: &str = "gpt-oss";

/// Every hyperparameter of a GPT-OSS model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Decoder layers (`block_count`).
    pub n_layers: usize,
    /// Longest context the model was trained for (`context_length`).
    pub context_length: usize,
    /// Residual stream width (`embedding_length`).
    pub d_model: usize,
    /// Width of one expert's hidden layer (`expert_feed_forward_length`).
    pub d_ff: usize,
    /// Experts per layer (`expert_count`).
    pub n_experts: usize,
    /// Experts used per token (`expert_used_count`).
    pub top_k: usize,
    /// Query heads (`attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads (`attention.head_count_kv`).
    pub n_kv_heads: usize,
    /// Dimension of one attention head (`attention.key_length`, equal to `value_length`).
    pub head_dim: usize,
    /// RMSNorm epsilon (`attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Sliding window of the windowed layers (`attention.sliding_window`).
    pub sliding_window: usize,
    /// Which layers use the sliding window (`true` = windowed).
    pub swa_layers: Vec<bool>,
    /// RoPE / YaRN parameters.
    pub rope: RopeConfig,
}

fn key(name: &str) -> String {
    format!("{ARCH}.{name}")
}

fn bad_type(k: String, e: gguf_format::GgufError) -> ModelError {
    ModelError::BadKey {
        key: k,
        detail: e.to_string(),
    }
}

fn opt_u32(md: &Metadata, name: &str) -> Result<Option<usize>> {
    let k = key(name);
    if !md.contains_key(&k) {
        return Ok(None);
    }
    md.get_u32(&k)
        .map(|v| Some(v as usize))
        .map_err(|e| bad_type(k, e))
}

fn req_u32(md: &Metadata, name: &str, what: &'static str) -> Result<usize> {
    opt_u32(md, name)?.ok_or_else(|| ModelError::MissingKey {
        key: key(name),
        what,
    })
}

fn opt_f32(md: &Metadata, name: &str) -> Result<Option<f32>> {
    let k = key(name);
    if !md.contains_key(&k) {
        return Ok(None);
    }
    match md.get_f32(&k) {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        Ok(v) => Err(ModelError::BadKey {
            key: k,
            detail: format!("value {v} is not finite"),
        }),
        Err(e) => Err(bad_type(k, e)),
    }
}

fn req_f32(md: &Metadata, name: &str, what: &'static str) -> Result<f32> {
    opt_f32(md, name)?.ok_or_else(|| ModelError::MissingKey {
        key: key(name),
        what,
    })
}

fn opt_str<'a>(md: &'a Metadata, k: &str) -> Result<Option<&'a str>> {
    if !md.contains_key(k) {
        return Ok(None);
    }
    md.get_str(k)
        .map(Some)
        .map_err(|e| bad_type(k.to_string(), e))
}

/// Which layers are windowed.
fn swa_pattern(md: &Metadata, n_layers: usize) -> Result<Vec<bool>> {
    let k = key("attention.sliding_window_pattern");
    let period = match md.get(&k) {
        None => 2,
        Some(gguf_format::Value::Array(_)) => {
            let v = md.get_bool_array(&k).map_err(|e| bad_type(k.clone(), e))?;
            if v.len() != n_layers {
                return Err(ModelError::BadKey {
                    key: k,
                    detail: format!("{} entries for {n_layers} layers", v.len()),
                });
            }
            return Ok(v.to_vec());
        }
        Some(_) => positive(
            "attention.sliding_window_pattern",
            md.get_u32(&k).map_err(|e| bad_type(k.clone(), e))? as usize,
        )?,
    };
    // llama.cpp's set_swa_pattern(n): layer il is windowed iff il % n < n - 1, so with n = 2
    // the even layers are windowed and the odd ones full (as in the reference).
    Ok((0..n_layers).map(|il| il % period < period - 1).collect())
}

fn positive(name: &str, v: usize) -> Result<usize> {
    if v == 0 {
        Err(ModelError::BadKey {
            key: key(name),
            detail: "must be positive".into(),
        })
    } else {
        Ok(v)
    }
}

impl ModelConfig {
    /// Read the hyperparameters of a GPT-OSS file's metadata.
    ///
    /// Required: `block_count`, `context_length`, `embedding_length`,
    /// `expert_feed_forward_length`, `expert_count`, `expert_used_count`,
    /// `attention.head_count`, `attention.head_count_kv`, `attention.layer_norm_rms_epsilon`,
    /// `attention.sliding_window`, `rope.freq_base`. Optional: `attention.key_length` /
    /// `value_length` (default `embedding_length / head_count`), `rope.scaling.type`
    /// (`yarn` or `none`), `rope.scaling.factor` (1), `rope.scaling.original_context_length`
    /// (`context_length`), `rope.scaling.yarn_beta_fast` / `yarn_beta_slow` (32 / 1), and
    /// `attention.sliding_window_pattern`: a period `n` (layer `il` windowed iff
    /// `il % n < n - 1`) or one bool per layer (`true` = windowed). Absent, the period is 2,
    /// llama.cpp's pattern for GPT-OSS: even layers windowed, odd layers full.
    pub fn from_metadata(md: &Metadata) -> Result<ModelConfig> {
        if let Some(arch) = opt_str(md, "general.architecture")?
            && arch != ARCH
        {
            return Err(ModelError::WrongArchitecture {
                found: arch.to_string(),
            });
        }
        let n_layers = positive(
            "block_count",
            req_u32(md, "block_count", "the number of layers")?,
        )?;
        let context_length = positive(
            "context_length",
            req_u32(md, "context_length", "the context limit")?,
        )?;
        let d_model = positive(
            "embedding_length",
            req_u32(md, "embedding_length", "the residual width")?,
        )?;
        let d_ff = positive(
            "expert_feed_forward_length",
            req_u32(md, "expert_feed_forward_length", "the expert width")?,
        )?;
        let n_experts = positive(
            "expert_count",
            req_u32(md, "expert_count", "the MoE block")?,
        )?;
        let top_k = positive(
            "expert_used_count",
            req_u32(md, "expert_used_count", "the router")?,
        )?;
        if top_k > n_experts {
            return Err(ModelError::BadKey {
                key: key("expert_used_count"),
                detail: format!("{top_k} experts per token, but only {n_experts} experts"),
            });
        }
        let n_heads = positive(
            "attention.head_count",
            req_u32(md, "attention.head_count", "attention")?,
        )?;
        let n_kv_heads = positive(
            "attention.head_count_kv",
            req_u32(md, "attention.head_count_kv", "attention")?,
        )?;
        if n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadKey {
                key: key("attention.head_count_kv"),
                detail: format!(
                    "{n_heads} query heads are not a multiple of {n_kv_heads} KV heads"
                ),
            });
        }
        let key_len = opt_u32(md, "attention.key_length")?;
        let value_len = opt_u32(md, "attention.value_length")?;
        let default_hd = d_model / n_heads;
        let head_dim = positive("attention.key_length", key_len.unwrap_or(default_hd))?;
        let value_dim = value_len.unwrap_or(head_dim);
        if value_dim != head_dim {
            return Err(ModelError::Unsupported(format!(
                "attention.key_length {head_dim} differs from attention.value_length {value_dim}"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(ModelError::BadKey {
                key: key("attention.key_length"),
                detail: format!("head dimension {head_dim} is odd; RoPE needs an even one"),
            });
        }
        let rms_eps = req_f32(md, "attention.layer_norm_rms_epsilon", "RMSNorm")?;
        if rms_eps < 0.0 {
            return Err(ModelError::BadKey {
                key: key("attention.layer_norm_rms_epsilon"),
                detail: format!("negative epsilon {rms_eps}"),
            });
        }
        let sliding_window = positive(
            "attention.sliding_window",
            req_u32(md, "attention.sliding_window", "the sliding-window layers")?,
        )?;
        let swa_layers = swa_pattern(md, n_layers)?;

        let theta = req_f32(md, "rope.freq_base", "RoPE")?;
        if theta <= 1.0 {
            return Err(ModelError::BadKey {
                key: key("rope.freq_base"),
                detail: format!("RoPE base {theta} must exceed 1"),
            });
        }
        let scaling_type = opt_str(md, &key("rope.scaling.type"))?;
        let yarn = match scaling_type {
            None | Some("yarn") => true,
            Some("none") => false,
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "rope.scaling.type '{other}' (only 'yarn' and 'none' are implemented)"
                )));
            }
        };
        let scaling_factor = if yarn {
            opt_f32(md, "rope.scaling.factor")?.unwrap_or(1.0)
        } else {
            1.0
        };
        let original_context =
            opt_u32(md, "rope.scaling.original_context_length")?.unwrap_or(context_length);
        let beta_fast = opt_f32(md, "rope.scaling.yarn_beta_fast")?.unwrap_or(32.0);
        let beta_slow = opt_f32(md, "rope.scaling.yarn_beta_slow")?.unwrap_or(1.0);
        if scaling_factor > 1.0 && (original_context == 0 || beta_fast <= 0.0 || beta_slow <= 0.0) {
            return Err(ModelError::BadKey {
                key: key("rope.scaling"),
                detail: format!(
                    "YaRN needs a positive original context and betas (got {original_context}, {beta_fast}, {beta_slow})"
                ),
            });
        }
        Ok(ModelConfig {
            n_layers,
            context_length,
            d_model,
            d_ff,
            n_experts,
            top_k,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_eps,
            sliding_window,
            swa_layers,
            rope: RopeConfig {
                head_dim,
                theta,
                scaling_factor,
                original_context,
                beta_fast,
                beta_slow,
            },
        })
    }

    /// The sliding window of layer `il`, `None` for full-attention layers.
    pub fn window(&self, il: usize) -> Option<usize> {
        self.swa_layers
            .get(il)
            .copied()
            .unwrap_or(false)
            .then_some(self.sliding_window)
    }

    /// Attention shape and policy of layer `il`.
    pub fn attention(&self, il: usize) -> AttentionConfig {
        AttentionConfig {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            window: self.window(il),
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        }
    }

    /// KV cache requirements of layer `il` for a session of `max_positions` tokens.
    pub fn kv_cache(&self, il: usize, max_positions: usize) -> KvCacheConfig {
        KvCacheConfig {
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            max_positions,
            window: self.window(il),
        }
    }

    /// The MoE routing policy.
    pub fn moe(&self) -> MoeConfig {
        MoeConfig {
            n_experts: self.n_experts,
            top_k: self.top_k,
        }
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
