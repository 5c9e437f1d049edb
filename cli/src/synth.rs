//! Random-weight GPT-OSS models with the exact layout of the real ones: the tensor names, shapes,
//! types and metadata llama.cpp writes, so speed and memory can be measured without a download.
//!
//! Weights are drawn so the forward pass stays numerically sane through every layer: matrices
//! with standard deviation `1/sqrt(k)` (k = input width) so each projection keeps unit scale,
//! norm weights near 1, small biases. Every chunk of every tensor has its own seed, so the output
//! depends only on `--seed`, never on the number of threads.

use anyhow::{Context, Result, bail};
use gguf_format::{Array, GgmlType, Metadata, StringArray, Value};
use rand::{RngCore, SeedableRng, rngs::SmallRng};

use crate::qplan::{self, FileType, ModelFacts, TensorDesc};

/// GPT-OSS hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    /// Preset name, for `general.name`.
    pub name: String,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Experts per MoE block.
    pub n_expert: usize,
    /// Experts used per token.
    pub n_expert_used: usize,
    /// Width of one expert's hidden layer.
    pub n_ff_exp: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Trained context length.
    pub context_length: usize,
    /// Sliding window of the even layers.
    pub sliding_window: usize,
}

impl Hparams {
    /// The named preset: `20b`, `120b` (the published models), `tiny` (the test fixture's
    /// shape) or `small` (a few layers of the real width ratio that runs in seconds on a CPU).
    pub fn preset(name: &str) -> Result<Hparams> {
        let real = |n_layer, n_expert| Hparams {
            name: format!("gpt-oss-{name}"),
            n_layer,
            n_embd: 2880,
            n_head: 64,
            n_head_kv: 8,
            head_dim: 64,
            n_expert,
            n_expert_used: 4,
            n_ff_exp: 2880,
            n_vocab: 201088,
            context_length: 131072,
            sliding_window: 128,
        };
        Ok(match name {
            "20b" => real(24, 32),
            "120b" => real(36, 128),
            "tiny" => Hparams {
                name: "gpt-oss-tiny".into(),
                n_layer: 4,
                n_embd: 64,
                n_head: 4,
                n_head_kv: 2,
                head_dim: 32,
                n_expert: 8,
                n_expert_used: 4,
                n_ff_exp: 96,
                n_vocab: 8192,
                context_length: 131072,
                sliding_window: 8,
            },
            "small" => Hparams {
                name: "gpt-oss-small".into(),
                n_layer: 4,
                n_embd: 576,
                n_head: 8,
                n_head_kv: 2,
                head_dim: 64,
                n_expert: 8,
                n_expert_used: 4,
                n_ff_exp: 576,
                n_vocab: 8192,
                context_length: 131072,
                sliding_window: 128,
            },
            other => bail!("unknown preset '{other}' (expected 20b, 120b, small or tiny)"),
        })
    }

    /// What the quantization rules need.
    pub fn facts(&self) -> ModelFacts {
        ModelFacts {
            n_layer: self.n_layer,
            n_expert: self.n_expert,
            n_gqa: self.n_head / self.n_head_kv.max(1),
        }
    }
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with this standard deviation around 0.
    Normal(f32),
    /// Normal with this standard deviation around 1 (norm weights).
    AroundOne(f32),
}

/// One tensor of the model: name, shape (ggml order), final type and how to fill it.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// GGUF name.
    pub name: String,
    /// Shape in ggml order.
    pub ne: Vec<u64>,
    /// Type written to the file.
    pub ty: GgmlType,
    /// Value distribution.
    pub init: Init,
}

impl TensorSpec {
    /// Elements.
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
    /// Bytes in the file.
    pub fn n_bytes(&self) -> u64 {
        self.ty.bytes_for(self.n_elements()).unwrap_or(u64::MAX)
    }
}

/// The tensors of a GPT-OSS model as llama.cpp's converter writes them (experts MXFP4, matrices
/// BF16, vectors F32), before any requantization.
pub fn base_tensors(hp: &Hparams) -> Vec<TensorSpec> {
    let (d, e, f) = (hp.n_embd as u64, hp.n_expert as u64, hp.n_ff_exp as u64);
    let q = (hp.n_head * hp.head_dim) as u64;
    let kv = (hp.n_head_kv * hp.head_dim) as u64;
    let v = hp.n_vocab as u64;
    let std_in = |k: u64| 1.0 / (k as f32).sqrt();
    let bias = Init::Normal(0.02);
    let mut out = Vec::new();
    let mut push = |name: String, ne: Vec<u64>, ty: GgmlType, init: Init| {
        out.push(TensorSpec { name, ne, ty, init })
    };
    use GgmlType::{BF16, F32, MXFP4};
    push(
        "output.weight".into(),
        vec![d, v],
        BF16,
        Init::Normal(std_in(d)),
    );
    push(
        "output_norm.weight".into(),
        vec![d],
        F32,
        Init::AroundOne(0.05),
    );
    push(
        "token_embd.weight".into(),
        vec![d, v],
        BF16,
        Init::Normal(1.0),
    );
    for l in 0..hp.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}");
        push(n("attn_k.bias"), vec![kv], F32, bias);
        push(
            n("attn_k.weight"),
            vec![d, kv],
            BF16,
            Init::Normal(std_in(d)),
        );
        push(n("attn_norm.weight"), vec![d], F32, Init::AroundOne(0.05));
        push(n("attn_output.bias"), vec![d], F32, bias);
        push(
            n("attn_output.weight"),
            vec![q, d],
            BF16,
            Init::Normal(std_in(q)),
        );
        push(n("attn_q.bias"), vec![q], F32, bias);
        push(
            n("attn_q.weight"),
            vec![d, q],
            BF16,
            Init::Normal(std_in(d)),
        );
        push(
            n("attn_sinks.weight"),
            vec![hp.n_head as u64],
            F32,
            Init::Normal(0.5),
        );
        push(n("attn_v.bias"), vec![kv], F32, bias);
        push(
            n("attn_v.weight"),
            vec![d, kv],
            BF16,
            Init::Normal(std_in(d)),
        );
        push(n("ffn_down_exps.bias"), vec![d, e], F32, bias);
        push(
            n("ffn_down_exps.weight"),
            vec![f, d, e],
            MXFP4,
            Init::Normal(std_in(f)),
        );
        push(n("ffn_gate_exps.bias"), vec![f, e], F32, bias);
        push(
            n("ffn_gate_exps.weight"),
            vec![d, f, e],
            MXFP4,
            Init::Normal(std_in(d)),
        );
        push(n("ffn_gate_inp.bias"), vec![e], F32, bias);
        push(
            n("ffn_gate_inp.weight"),
            vec![d, e],
            F32,
            Init::Normal(std_in(d)),
        );
        push(n("ffn_up_exps.bias"), vec![f, e], F32, bias);
        push(
            n("ffn_up_exps.weight"),
            vec![d, f, e],
            MXFP4,
            Init::Normal(std_in(d)),
        );
        push(
            n("post_attention_norm.weight"),
            vec![d],
            F32,
            Init::AroundOne(0.05),
        );
    }
    out.sort_by(|a, b| qplan::llama_order(&a.name, &b.name));
    out
}

/// The model's tensors with the types `llama-quantize --type ftype` gives them, in llama.cpp's
/// order.
pub fn tensors_for(hp: &Hparams, ftype: FileType) -> Vec<TensorSpec> {
    let mut t = base_tensors(hp);
    let descs: Vec<_> = t
        .iter()
        .map(|s| TensorDesc {
            name: &s.name,
            ne: &s.ne,
        })
        .collect();
    let cur: Vec<_> = t.iter().map(|s| s.ty).collect();
    let types = qplan::choose_types(&descs, &cur, ftype, hp.facts());
    for (s, ty) in t.iter_mut().zip(types) {
        s.ty = ty;
    }
    t
}

/// `size_label` as gguf-py computes it (`{experts}x{shared + one expert}` rounded to 2 digits).
fn size_label(tensors: &[TensorSpec], n_expert: usize) -> String {
    let (mut shared, mut expert) = (0u64, 0u64);
    for t in tensors {
        if t.name.contains("_exps.") {
            expert += t.n_elements() / n_expert as u64;
        } else {
            shared += t.n_elements();
        }
    }
    size_label_from(shared + expert, n_expert)
}

/// gguf-py's `size_label` for `n` parameters (shared + one expert) and `n_expert` experts.
pub fn size_label_from(n: u64, n_expert: usize) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round() as u64)
        .trim_start_matches('0')
        .len();
    let fix = 2usize.saturating_sub(digits);
    format!("{n_expert}x{scaled:.fix$}{suffix}")
}

/// Where the tokenizer metadata comes from.
pub enum Vocab {
    /// The `tokenizer.*` keys of a GGUF file (a vocabulary-only GGUF or a model).
    FromGguf(Metadata),
    /// The built-in byte-level vocabulary, padded to the preset's size.
    Builtin,
}

/// The Harmony special tokens of o200k_harmony, at their offsets from `<|startoftext|>`; every
/// other id of the 1090 special slots is `<|reserved_N|>` with N the real o200k id.
const SPECIALS: [(usize, &str); 9] = [
    (0, "<|startoftext|>"),
    (1, "<|endoftext|>"),
    (4, "<|return|>"),
    (5, "<|constrain|>"),
    (7, "<|channel|>"),
    (8, "<|start|>"),
    (9, "<|end|>"),
    (10, "<|message|>"),
    (14, "<|call|>"),
];
/// Number of special-token slots at the end of o200k_harmony (201088 - 199998).
const N_SPECIAL_SLOTS: usize = 1090;

/// A compact Harmony chat template for the built-in vocabulary (system, developer, user,
/// assistant with analysis/final channels and tool calls), rendering the same prompt layout as
/// OpenAI's template for plain conversations.
const BUILTIN_CHAT_TEMPLATE: &str = "{#- gptoss synth: minimal Harmony template -#}\n\
<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
Knowledge cutoff: 2024-06\n\n\
Reasoning: {{ reasoning_effort | default('medium') }}\n\n\
# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
{%- for m in messages %}\
{%- if m.role == 'system' or m.role == 'developer' %}<|start|>developer<|message|># Instructions\n\n{{ m.content }}<|end|>\
{%- elif m.role == 'user' %}<|start|>user<|message|>{{ m.content }}<|end|>\
{%- elif m.role == 'assistant' %}\
{%- if m.thinking and loop.last %}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking }}<|end|>{% endif %}\
<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>\
{%- elif m.role == 'tool' %}<|start|>functions.{{ m.name }} to=assistant<|channel|>commentary<|message|>{{ m.content }}<|end|>\
{%- endif %}\
{%- endfor %}\
{%- if add_generation_prompt %}<|start|>assistant{% endif %}";

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 onward.
/// The order (printable first) is also the order of the 256 byte tokens in o200k.
fn byte_tokens() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut tokens: Vec<String> = printable
        .iter()
        .map(|&b| char::from_u32(b).unwrap_or('?').to_string())
        .collect();
    let mut n = 0u32;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            tokens.push(char::from_u32(256 + n).unwrap_or('?').to_string());
            n += 1;
        }
    }
    tokens
}

/// The `tokenizer.*` metadata of the built-in vocabulary for `n_vocab` ids: 256 byte tokens,
/// unused filler, then the 1090 Harmony special slots (as in o200k_harmony, whose specials start
/// at 199998 = 201088 - 1090).
pub fn builtin_tokenizer(n_vocab: usize) -> Result<Vec<(String, Value)>> {
    if n_vocab < 256 + N_SPECIAL_SLOTS {
        bail!(
            "vocabulary of {n_vocab} ids is too small for the built-in tokenizer (needs {})",
            256 + N_SPECIAL_SLOTS
        );
    }
    let first_special = n_vocab - N_SPECIAL_SLOTS;
    let mut tokens = StringArray::with_capacity(n_vocab, n_vocab * 12);
    let mut types = Vec::with_capacity(n_vocab);
    for t in byte_tokens() {
        tokens.push(&t);
        types.push(1i32);
    }
    for i in 256..first_special {
        tokens.push(&format!("<|unused_{i}|>"));
        types.push(5); // UNUSED: never produced by the BPE (no merges reach it)
    }
    for slot in 0..N_SPECIAL_SLOTS {
        let text = SPECIALS
            .iter()
            .find(|(o, _)| *o == slot)
            .map(|(_, s)| s.to_string())
            .unwrap_or_else(|| format!("<|reserved_{}|>", 199998 + slot));
        tokens.push(&text);
        types.push(3); // CONTROL
    }
    let id = |slot: usize| Value::U32((first_special + slot) as u32);
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-4o".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(StringArray::new())),
        ),
        ("tokenizer.ggml.bos_token_id".into(), id(0)),
        ("tokenizer.ggml.eos_token_id".into(), id(4)),
        ("tokenizer.ggml.padding_token_id".into(), id(1)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(BUILTIN_CHAT_TEMPLATE.into()),
        ),
    ])
}

/// The model's metadata, keys in the order llama.cpp's converter writes them.
pub fn metadata(
    hp: &Hparams,
    ftype: FileType,
    tensors: &[TensorSpec],
    vocab: &Vocab,
) -> Result<Metadata> {
    let mut m = Metadata::new();
    let s = |v: &str| Value::String(v.to_string());
    let u = |v: usize| Value::U32(v as u32);
    m.insert("general.architecture", s("gpt-oss"));
    m.insert("general.type", s("model"));
    m.insert("general.name", s(&hp.name));
    m.insert("general.size_label", s(&size_label(tensors, hp.n_expert)));
    let a = |k: &str| format!("gpt-oss.{k}");
    m.insert(a("block_count"), u(hp.n_layer));
    m.insert(a("context_length"), u(hp.context_length));
    m.insert(a("embedding_length"), u(hp.n_embd));
    m.insert(a("feed_forward_length"), u(hp.n_ff_exp));
    m.insert(a("attention.head_count"), u(hp.n_head));
    m.insert(a("attention.head_count_kv"), u(hp.n_head_kv));
    m.insert(a("rope.scaling.type"), s("yarn"));
    m.insert(a("rope.scaling.factor"), Value::F32(32.0));
    m.insert(a("rope.scaling.original_context_length"), u(4096));
    m.insert(a("rope.scaling.yarn_beta_fast"), Value::F32(32.0));
    m.insert(a("rope.scaling.yarn_beta_slow"), Value::F32(1.0));
    m.insert(a("rope.freq_base"), Value::F32(150000.0));
    m.insert(a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    m.insert(a("expert_count"), u(hp.n_expert));
    m.insert(a("expert_used_count"), u(hp.n_expert_used));
    m.insert(a("attention.key_length"), u(hp.head_dim));
    m.insert(a("attention.value_length"), u(hp.head_dim));
    m.insert("general.file_type", Value::U32(ftype.id()));
    m.insert(a("attention.sliding_window"), u(hp.sliding_window));
    m.insert(a("expert_feed_forward_length"), u(hp.n_ff_exp));
    m.insert("general.quantization_version", Value::U32(2));
    match vocab {
        Vocab::Builtin => {
            for (k, v) in builtin_tokenizer(hp.n_vocab)? {
                m.insert(k, v);
            }
        }
        Vocab::FromGguf(src) => {
            let n = src
                .get_array("tokenizer.ggml.tokens")
                .context("the vocabulary GGUF has no tokenizer.ggml.tokens")?
                .len();
            if n != hp.n_vocab {
                bail!(
                    "vocabulary has {n} tokens but the model needs {}",
                    hp.n_vocab
                );
            }
            for (k, v) in src.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
                m.insert(k, v.clone());
            }
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Value generation

/// A seed for chunk `chunk` of tensor `tensor` (SplitMix64 finalizer over the three inputs).
pub fn chunk_seed(seed: u64, tensor: usize, chunk: usize) -> u64 {
    let mut z = seed
        ^ (tensor as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (chunk as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Approximately standard normal values: Irwin-Hall sum of four 16-bit uniforms per `u64`,
/// centred and scaled to unit variance (tails bounded at +-3.46, which keeps every block's range
/// finite and realistic).
#[inline]
fn normal_from(r: u64) -> f32 {
    let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
    // Sum of four U(0, 65536) has mean 131070 and variance 4 * 65536^2 / 12.
    (s as f32 - 131_070.0) * (1.732_050_8 / 65_536.0)
}

/// Fill `out` with `n` values of `init`.
fn draw(init: Init, rng: &mut SmallRng, out: &mut [f32]) {
    let (mean, std) = match init {
        Init::Normal(s) => (0.0, s),
        Init::AroundOne(s) => (1.0, s),
    };
    for x in out.iter_mut() {
        *x = mean + std * normal_from(rng.next_u64());
    }
}

const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// One MXFP4 block (ggml layout: scale byte, then 16 bytes with element j low and j+16 high),
/// by ggml's reference rule: e = floor(log2(amax)) - 2 + 127, nearest E2M1 code.
fn mxfp4_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let e = if amax > 0.0 {
        (amax.log2().floor() as i32 - 2 + 127).clamp(1, 254)
    } else {
        0
    };
    let inv = if e == 0 { 0.0 } else { (2f32).powi(127 - e) };
    let code = |v: f32| -> u8 {
        let a = v.abs() * inv;
        let mut best = 0usize;
        let mut bd = f32::INFINITY;
        for (i, &m) in E2M1.iter().enumerate() {
            let d = (m - a).abs();
            if d < bd {
                bd = d;
                best = i;
            }
        }
        best as u8 | if v < 0.0 && best != 0 { 8 } else { 0 }
    };
    out[0] = e as u8;
    for j in 0..16 {
        out[1 + j] = code(x[j]) | (code(x[j + 16]) << 4);
    }
}

/// One Q8_0 block (f16 scale amax/127, then 32 rounded int8).
fn q8_0_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

/// Encode f32 values as `ty` (the types synth writes without the quant crate's help: F32, F16,
/// BF16, Q8_0, MXFP4), or through `gptoss_quant` for every other type.
pub fn encode(ty: GgmlType, x: &[f32], n_per_row: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    match ty {
        GgmlType::F32 => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
        GgmlType::F16 => out.extend(x.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => out.extend(
            x.iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
        ),
        GgmlType::Q8_0 => {
            out.resize(x.len() / 32 * 34, 0);
            for (b, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
                q8_0_block(b, o);
            }
        }
        GgmlType::MXFP4 => {
            out.resize(x.len() / 32 * 17, 0);
            for (b, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(17)) {
                mxfp4_block(b, o);
            }
        }
        other => {
            let bytes = crate::requant::quantize_rows(other, x, n_per_row)?;
            out.extend_from_slice(&bytes);
        }
    }
    Ok(())
}

/// Rows per generation chunk: about 4 MiB of f32 values, at least one row.
pub fn rows_per_chunk(ne0: u64) -> u64 {
    ((1u64 << 20) / ne0.max(1)).max(1)
}

/// Generate chunk `chunk` (rows `chunk * rows_per_chunk ..`) of tensor `index`.
pub fn generate_chunk(
    spec: &TensorSpec,
    index: usize,
    seed: u64,
    chunk: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let ne0 = spec.ne[0];
    let rows = spec.n_elements() / ne0;
    let rpc = rows_per_chunk(ne0);
    let r0 = chunk as u64 * rpc;
    let nr = rpc.min(rows - r0);
    let mut rng = SmallRng::seed_from_u64(chunk_seed(seed, index, chunk));
    let mut x = vec![0f32; (nr * ne0) as usize];
    draw(spec.init, &mut rng, &mut x);
    encode(spec.ty, &x, ne0 as usize, out)
}

/// Number of chunks of a tensor.
pub fn n_chunks(spec: &TensorSpec) -> usize {
    let ne0 = spec.ne[0];
    let rows = spec.n_elements() / ne0;
    rows.div_ceil(rows_per_chunk(ne0)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 200_000;
        let v: Vec<f32> = (0..n).map(|_| normal_from(rng.next_u64())).collect();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn twenty_b_layout_size_matches_the_published_file() {
        let hp = Hparams::preset("20b").unwrap();
        let t = tensors_for(&hp, FileType::MXFP4_MOE);
        assert_eq!(t.len(), 3 + 24 * 19);
        let bytes: u64 = t.iter().map(|s| s.n_bytes().div_ceil(32) * 32).sum();
        let gib = bytes as f64 / (1u64 << 30) as f64;
        // The ggml-org gpt-oss-20b MXFP4 GGUF is 11.27 GiB (header ~13 MB of vocabulary aside).
        assert!((gib - 11.26).abs() < 0.02, "{gib} GiB");
        let emb = t.iter().find(|s| s.name == "token_embd.weight").unwrap();
        assert_eq!(emb.ty, GgmlType::Q8_0);
        assert_eq!(size_label(&t, 32), "32x2.4B");
    }

    #[test]
    fn builtin_vocab_puts_specials_where_o200k_has_them() {
        let kv = builtin_tokenizer(201088).unwrap();
        let tokens = match &kv[2].1 {
            Value::Array(Array::String(s)) => s,
            _ => panic!(),
        };
        assert_eq!(tokens.len(), 201088);
        assert_eq!(tokens.get(200006), Some("<|start|>"));
        assert_eq!(tokens.get(200012), Some("<|call|>"));
        assert_eq!(tokens.get(200013), Some("<|reserved_200013|>"));
        assert_eq!(tokens.get(0), Some("!"));
        let tiny = builtin_tokenizer(8192).unwrap();
        let tokens = match &tiny[2].1 {
            Value::Array(Array::String(s)) => s,
            _ => panic!(),
        };
        assert_eq!(tokens.get(7110), Some("<|start|>"));
    }
}
