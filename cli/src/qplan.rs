//! Which ggml type each tensor gets for a llama.cpp file type: the choices of llama.cpp's
//! `llama-quant.cpp` (`llama_model_quantize_impl` + `llama_tensor_get_type`), restricted to the
//! file types this tool writes, so `gptoss quantize` and `gptoss synth` produce the same tensor
//! types as `llama-quantize` would for GPT-OSS.

use gguf_format::GgmlType;

/// A llama.cpp file type (`general.file_type`), the `--type` of quantize, synth and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q5_0,
    Q8_0,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    MXFP4_MOE,
}

impl FileType {
    /// Every supported file type, in the order `--help` lists them.
    pub const ALL: [FileType; 14] = [
        FileType::MXFP4_MOE,
        FileType::Q8_0,
        FileType::Q6_K,
        FileType::Q5_K_M,
        FileType::Q5_K_S,
        FileType::Q4_K_M,
        FileType::Q4_K_S,
        FileType::Q5_0,
        FileType::Q4_0,
        FileType::IQ4_NL,
        FileType::IQ4_XS,
        FileType::BF16,
        FileType::F16,
        FileType::F32,
    ];

    /// `llama_ftype` id as stored in `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::IQ4_NL => 25,
            FileType::IQ4_XS => 30,
            FileType::BF16 => 32,
            FileType::MXFP4_MOE => 38,
        }
    }

    /// Lower-case name used on the command line (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "f32",
            FileType::F16 => "f16",
            FileType::BF16 => "bf16",
            FileType::Q4_0 => "q4_0",
            FileType::Q5_0 => "q5_0",
            FileType::Q8_0 => "q8_0",
            FileType::Q4_K_S => "q4_k_s",
            FileType::Q4_K_M => "q4_k_m",
            FileType::Q5_K_S => "q5_k_s",
            FileType::Q5_K_M => "q5_k_m",
            FileType::Q6_K => "q6_k",
            FileType::IQ4_NL => "iq4_nl",
            FileType::IQ4_XS => "iq4_xs",
            FileType::MXFP4_MOE => "mxfp4_moe",
        }
    }

    /// Parse a command-line name (case-insensitive; `mxfp4` is accepted for `mxfp4_moe`).
    pub fn parse(s: &str) -> Result<FileType, String> {
        let l = s.to_ascii_lowercase();
        if l == "mxfp4" {
            return Ok(FileType::MXFP4_MOE);
        }
        FileType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == l)
            .ok_or_else(|| {
                let names: Vec<_> = FileType::ALL.iter().map(|t| t.name()).collect();
                format!("unknown type '{s}' (expected one of: {})", names.join(", "))
            })
    }

    /// The type most tensors get (llama.cpp's `default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
            FileType::IQ4_NL => GgmlType::IQ4_NL,
            FileType::IQ4_XS => GgmlType::IQ4_XS,
            FileType::MXFP4_MOE => GgmlType::MXFP4,
        }
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the rules need to know about the model.
#[derive(Debug, Clone, Copy)]
pub struct ModelFacts {
    /// `block_count`.
    pub n_layer: usize,
    /// `expert_count`.
    pub n_expert: usize,
    /// `head_count / head_count_kv`.
    pub n_gqa: usize,
}

/// One tensor as the rules see it.
#[derive(Debug, Clone)]
pub struct TensorDesc<'a> {
    /// GGUF name.
    pub name: &'a str,
    /// Shape in ggml order.
    pub ne: &'a [u64],
}

/// llama.cpp's tensor order for a quantized file (`weight_name_comparer`): tensors outside
/// blocks first, then block by block (numerically), by name within a block.
pub fn llama_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn layer(n: &str) -> i64 {
        n.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or(-1)
    }
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

fn n_dims(ne: &[u64]) -> usize {
    let mut n = ne.len();
    while n > 1 && ne[n - 1] == 1 {
        n -= 1;
    }
    n
}

/// Whether llama.cpp quantizes this tensor at all (otherwise it is copied as is).
pub fn is_quantizable(name: &str, ne: &[u64]) -> bool {
    name.ends_with("weight")
        && n_dims(ne) >= 2
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Per-tensor choices given on the command line, as llama-quantize's `--tensor-type`,
/// `--output-tensor-type` and `--token-embedding-type`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `PATTERN=TYPE` pairs: the first pattern found (regex search) in a quantizable tensor's
    /// name sets its type, replacing the file type's rules.
    pub tensor_types: Vec<(regex::Regex, GgmlType)>,
    /// Type of `output.weight`.
    pub output: Option<GgmlType>,
    /// Type of `token_embd.weight`.
    pub token_embd: Option<GgmlType>,
}

impl Overrides {
    /// Parse one `--tensor-type PATTERN=TYPE` argument (`ffn_.*_exps=mxfp4`).
    pub fn parse_tensor_type(s: &str) -> Result<(regex::Regex, GgmlType), String> {
        let (pat, ty) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("'{s}': expected PATTERN=TYPE, e.g. ffn_.*_exps=mxfp4"))?;
        let re = regex::Regex::new(pat).map_err(|e| format!("'{pat}': {e}"))?;
        Ok((re, parse_ggml_type(ty)?))
    }
}

/// A ggml tensor type by name (`q8_0`, `MXFP4`), limited to types the quantizer can write.
pub fn parse_ggml_type(s: &str) -> Result<GgmlType, String> {
    let ty = GgmlType::from_name(s).ok_or_else(|| format!("'{s}': unknown ggml type"))?;
    if !gptoss_quant::can_quantize(ty) {
        return Err(format!("'{s}': this tool cannot quantize to {ty}"));
    }
    Ok(ty)
}

/// The target type of every tensor, in the order given (which must be llama.cpp's processing
/// order, see [`llama_order`], because the attn_v rule counts tensors as it goes).
/// `current` is each tensor's present type: tensors that are not quantizable keep it.
pub fn choose_types(
    tensors: &[TensorDesc<'_>],
    current: &[GgmlType],
    ftype: FileType,
    facts: ModelFacts,
) -> Vec<GgmlType> {
    choose_types_with(tensors, current, ftype, facts, &Overrides::default())
}

/// [`choose_types`] with command-line overrides, applied where llama-quantize applies them:
/// embedding/output types first, then the first matching `--tensor-type` pattern (which skips
/// the file type's rules), then the fallback for rows that are not whole blocks.
pub fn choose_types_with(
    tensors: &[TensorDesc<'_>],
    current: &[GgmlType],
    ftype: FileType,
    facts: ModelFacts,
    ov: &Overrides,
) -> Vec<GgmlType> {
    let default_type = ftype.default_type();
    let n_attention_wv = tensors
        .iter()
        .filter(|t| t.name.contains("attn_v.weight"))
        .count();
    let has_output = tensors.iter().any(|t| t.name == "output.weight");
    let mut i_attention_wv = 0usize;
    let mut out = Vec::with_capacity(tensors.len());
    for (t, &cur) in tensors.iter().zip(current) {
        if !is_quantizable(t.name, t.ne) {
            out.push(cur);
            continue;
        }
        if let (Some(ty), "token_embd.weight") = (ov.token_embd, t.name) {
            out.push(ty);
            continue;
        }
        if let (Some(ty), "output.weight") = (ov.output, t.name) {
            out.push(ty);
            continue;
        }
        let mut ty = default_type;
        if default_type.is_quantized() {
            let manual = ov.tensor_types.iter().find(|(re, _)| re.is_match(t.name));
            ty = match manual {
                Some(&(_, m)) => fallback(m, t.ne[0]),
                None => tensor_type(
                    t,
                    ty,
                    ftype,
                    facts,
                    has_output,
                    &mut i_attention_wv,
                    n_attention_wv,
                ),
            };
        }
        out.push(ty);
    }
    out
}

fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    i_layer < n_layers / 8
        || i_layer >= 7 * n_layers / 8
        || (i_layer as i64 - (n_layers / 8) as i64).rem_euclid(3) == 2
}

/// `llama_tensor_get_type` for the file types of [`FileType`].
fn tensor_type(
    t: &TensorDesc<'_>,
    mut new_type: GgmlType,
    ftype: FileType,
    facts: ModelFacts,
    has_output: bool,
    i_attention_wv: &mut usize,
    n_attention_wv: usize,
) -> GgmlType {
    use FileType as F;
    use GgmlType as G;
    let name = t.name;
    let nx = t.ne[0];
    if name == "output.weight" || (!has_output && name == "token_embd.weight") {
        let qk = new_type.block_size() as u64;
        if ftype == F::MXFP4_MOE || !nx.is_multiple_of(qk) {
            new_type = G::Q8_0;
        } else if new_type != G::Q8_0 {
            new_type = G::Q6_K;
        }
    } else if ftype == F::MXFP4_MOE {
        // Experts (3-D) in MXFP4, every other matrix in Q8_0.
        new_type = if t.ne.get(2).copied().unwrap_or(1) > 1 {
            G::MXFP4
        } else {
            G::Q8_0
        };
    } else if name == "token_embd.weight" {
        // No rule applies to the file types supported here.
    } else if name.contains("attn_v.weight") {
        if matches!(ftype, F::IQ4_NL | F::IQ4_XS) && facts.n_gqa >= 4 {
            new_type = G::Q5_K;
        } else if matches!(ftype, F::Q4_K_M | F::Q5_K_M)
            && use_more_bits(*i_attention_wv, n_attention_wv)
        {
            new_type = G::Q6_K;
        } else if ftype == F::Q4_K_S && *i_attention_wv < 4 {
            new_type = G::Q5_K;
        }
        if facts.n_expert == 8 {
            new_type = G::Q8_0;
        }
        *i_attention_wv += 1;
    } else if name.contains("attn_k.weight") {
        if facts.n_expert == 8 {
            new_type = G::Q8_0;
        }
    } else if name.contains("ffn_down") {
        let i_layer = layer_of(name).unwrap_or(0);
        let n_layer = facts.n_layer;
        if ftype == F::Q4_K_M {
            if use_more_bits(i_layer, n_layer) {
                new_type = G::Q6_K;
            }
        } else if i_layer < n_layer / 8 && matches!(ftype, F::IQ4_NL | F::IQ4_XS) {
            new_type = G::Q5_K;
        } else if ftype == F::Q5_K_M && use_more_bits(i_layer, n_layer) {
            new_type = G::Q6_K;
        } else if ftype == F::Q4_K_S && i_layer < n_layer / 8 {
            new_type = G::Q5_K;
        }
    } else if name.contains("attn_output.weight")
        && facts.n_expert == 8
        && matches!(ftype, F::IQ4_NL | F::Q4_K_S | F::Q4_K_M | F::IQ4_XS)
    {
        new_type = G::Q5_K;
    }
    fallback(new_type, nx)
}

/// Rows whose length is not a whole number of blocks take llama.cpp's fallback type.
fn fallback(mut new_type: GgmlType, nx: u64) -> GgmlType {
    use GgmlType as G;
    if !nx.is_multiple_of(new_type.block_size() as u64) {
        new_type = match new_type {
            G::IQ4_XS | G::Q2_K | G::Q3_K => G::IQ4_NL,
            G::Q4_K => G::Q5_0,
            G::Q5_K => G::Q5_1,
            G::Q6_K => G::Q8_0,
            other => other,
        };
        if !nx.is_multiple_of(new_type.block_size() as u64) {
            new_type = G::F16;
        }
    }
    new_type
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts20b() -> ModelFacts {
        ModelFacts {
            n_layer: 24,
            n_expert: 32,
            n_gqa: 8,
        }
    }

    #[test]
    fn mxfp4_moe_keeps_experts_and_q8_0_elsewhere() {
        let names = [
            ("blk.0.ffn_down_exps.weight", vec![2880u64, 2880, 32]),
            ("blk.0.attn_q.weight", vec![2880, 4096]),
            ("token_embd.weight", vec![2880, 201088]),
            ("output.weight", vec![2880, 201088]),
            ("blk.0.ffn_gate_inp.weight", vec![2880, 32]),
            ("blk.0.attn_sinks.weight", vec![64]),
        ];
        use GgmlType as G;
        let descs: Vec<_> = names
            .iter()
            .map(|(n, ne)| TensorDesc { name: n, ne })
            .collect();
        let cur = [G::MXFP4, G::BF16, G::BF16, G::BF16, G::F32, G::F32];
        let t = choose_types(&descs, &cur, FileType::MXFP4_MOE, facts20b());
        assert_eq!(t, vec![G::MXFP4, G::Q8_0, G::Q8_0, G::Q8_0, G::F32, G::F32]);
    }

    #[test]
    fn k_quants_fall_back_on_2880_wide_rows() {
        use GgmlType as G;
        let names = [
            ("blk.0.ffn_up_exps.weight", vec![2880u64, 2880, 32]),
            ("blk.0.attn_output.weight", vec![4096, 2880]),
            ("output.weight", vec![2880, 201088]),
            ("blk.0.ffn_down_exps.weight", vec![2880, 2880, 32]),
        ];
        let descs: Vec<_> = names
            .iter()
            .map(|(n, ne)| TensorDesc { name: n, ne })
            .collect();
        let cur = [G::MXFP4, G::BF16, G::BF16, G::MXFP4];
        let t = choose_types(&descs, &cur, FileType::Q4_K_M, facts20b());
        // Q4_K -> Q5_0 fallback; 4096-wide rows keep Q4_K; output Q6_K -> Q8_0; layer 0 down Q6_K -> Q8_0.
        assert_eq!(t, vec![G::Q5_0, G::Q4_K, G::Q8_0, G::Q8_0]);
    }

    #[test]
    fn use_more_bits_matches_llama_cpp_for_24_layers() {
        let v: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        // n/8 = 3: layers 0..3, 21..24, and (i-3)%3==2 -> 5, 8, 11, 14, 17, 20.
        assert_eq!(v, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
    }
}
