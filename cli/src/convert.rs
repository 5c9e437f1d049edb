//! Hugging Face GPT-OSS checkpoint (OpenAI's layout) to GGUF, writing what llama.cpp's
//! `convert_hf_to_gguf.py` writes: the same metadata keys and values in the same order, the same
//! tensor names, types, shapes, order and bytes. MXFP4 experts are repacked losslessly (scale
//! byte + nibbles reordered into ggml blocks); gate/up rows, interleaved in the checkpoint, are
//! split into `ffn_gate_exps` (even rows) and `ffn_up_exps` (odd rows).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gguf_format::{Array, GgmlType, Metadata, StringArray, Value};
use memmap2::Mmap;
use safetensors::Dtype;
use serde_json::Value as Json;

use crate::gguf_out::OutTensor;

/// The converter's `--outtype`: the type of the non-expert matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// BF16 (the default, lossless for these checkpoints).
    Bf16,
    /// F16.
    F16,
    /// Q8_0 (what the published GGUF files use).
    Q8_0,
}

impl OutType {
    /// Parse `bf16`, `f16` or `q8_0`.
    pub fn parse(s: &str) -> Result<OutType, String> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" => Ok(OutType::Bf16),
            "f16" => Ok(OutType::F16),
            "q8_0" => Ok(OutType::Q8_0),
            _ => Err(format!(
                "unknown outtype '{s}' (expected bf16, f16 or q8_0)"
            )),
        }
    }

    fn matrix_type(self) -> GgmlType {
        match self {
            OutType::Bf16 => GgmlType::BF16,
            OutType::F16 => GgmlType::F16,
            OutType::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// `general.file_type`: llama.cpp's converter marks MXFP4 checkpoints MOSTLY_MXFP4_MOE (38)
    /// except with `--outtype q8_0`, which it records as MOSTLY_Q8_0 (7).
    fn file_type(self) -> u32 {
        match self {
            OutType::Q8_0 => 7,
            _ => 38,
        }
    }
}

/// One safetensors tensor: which file, dtype, shape, absolute byte range.
#[derive(Debug, Clone)]
struct StTensor {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A checkpoint folder: config, tokenizer and the memory-mapped safetensors files.
pub struct Checkpoint {
    dir: PathBuf,
    config: Json,
    maps: Vec<Mmap>,
    tensors: BTreeMap<String, StTensor>,
}

fn read_json(p: &Path) -> Result<Json> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))
}

impl Checkpoint {
    /// Open `dir`: config.json plus model.safetensors or the shards named by
    /// model.safetensors.index.json.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let config = read_json(&dir.join("config.json"))?;
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let idx = read_json(&index)?;
            let map = idx["weight_map"]
                .as_object()
                .with_context(|| format!("{}: no weight_map object", index.display()))?;
            let mut f: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            f.sort();
            f.dedup();
            f.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut maps = Vec::new();
        let mut tensors = BTreeMap::new();
        for (fi, path) in files.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: read-only map of a checkpoint we only read; concurrent truncation by another
            // process would be undefined behaviour, as for every mmap-based loader.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("memory-mapping {}", path.display()))?;
            let (n, meta) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| anyhow::anyhow!("{}: bad safetensors header: {e}", path.display()))?;
            let base = 8 + n;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if base + e > map.len() || s > e {
                    bail!("{}: tensor {name} data out of bounds", path.display());
                }
                tensors.insert(
                    name.clone(),
                    StTensor {
                        file: fi,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            maps.push(map);
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            maps,
            tensors,
        })
    }

    fn get(&self, name: &str) -> Result<(&StTensor, &[u8])> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("checkpoint has no tensor {name}"))?;
        Ok((t, &self.maps[t.file][t.start..t.end]))
    }

    fn cfg_usize(&self, key: &str) -> Result<usize> {
        self.config[key]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("config.json: {key} missing or not an integer"))
    }

    fn cfg_f32(&self, key: &str) -> Result<f32> {
        self.config[key]
            .as_f64()
            .map(|v| v as f32)
            .with_context(|| format!("config.json: {key} missing or not a number"))
    }
}

/// Where a GGUF tensor's data comes from.
#[derive(Debug, Clone)]
enum Source {
    /// A BF16/F32 tensor, converted to the output type.
    Plain(String),
    /// Every other row (`parity` 0 = even = gate, 1 = odd = up) of a BF16 tensor [E, 2F].
    Interleaved(String, usize),
    /// MXFP4 blocks+scales (`*_blocks`, `*_scales`), optionally every other row.
    Mxfp4 { base: String, rows: Option<usize> },
}

/// One tensor of the output file.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Header entry.
    pub out: OutTensor,
    source: Source,
}

fn hf_to_gguf(name: &str) -> Option<String> {
    let map = |s: &str| -> Option<&'static str> {
        Some(match s {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "post_attention_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.o_proj.bias" => "attn_output.bias",
            "self_attn.sinks" => "attn_sinks.weight",
            "mlp.router.weight" => "ffn_gate_inp.weight",
            "mlp.router.bias" => "ffn_gate_inp.bias",
            "mlp.experts.down_proj_bias" => "ffn_down_exps.bias",
            _ => return None,
        })
    };
    match name {
        "lm_head.weight" => Some("output.weight".into()),
        "model.embed_tokens.weight" => Some("token_embd.weight".into()),
        "model.norm.weight" => Some("output_norm.weight".into()),
        _ => {
            let rest = name.strip_prefix("model.layers.")?;
            let (l, tail) = rest.split_once('.')?;
            let l: usize = l.parse().ok()?;
            Some(format!("blk.{l}.{}", map(tail)?))
        }
    }
}

/// The output tensors in the converter's order: MXFP4 experts first (checkpoint name order),
/// then every other tensor in checkpoint name order.
pub fn plan(ck: &Checkpoint, outtype: OutType) -> Result<Vec<Planned>> {
    let mut experts = Vec::new();
    let mut rest = Vec::new();
    let shape_ne = |s: &[usize]| s.iter().rev().map(|&d| d as u64).collect::<Vec<_>>();
    for (name, t) in &ck.tensors {
        if let Some(base) = name.strip_suffix("_blocks") {
            // [E, rows, nb, 16] u8 -> ggml [nb*32, rows, E]
            if t.shape.len() != 4 || t.shape[3] != 16 || t.dtype != Dtype::U8 {
                bail!(
                    "{name}: expected u8 [E, rows, blocks, 16], found {:?} {:?}",
                    t.dtype,
                    t.shape
                );
            }
            let (e, rows, nb) = (t.shape[0] as u64, t.shape[1] as u64, t.shape[2] as u64);
            let l = base
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .with_context(|| format!("{name}: not in a layer"))?;
            if base.ends_with("gate_up_proj") {
                for (i, which) in ["ffn_gate_exps", "ffn_up_exps"].iter().enumerate() {
                    experts.push(Planned {
                        out: OutTensor {
                            name: format!("blk.{l}.{which}.weight"),
                            ne: vec![nb * 32, rows / 2, e],
                            ty: GgmlType::MXFP4,
                        },
                        source: Source::Mxfp4 {
                            base: base.to_string(),
                            rows: Some(i),
                        },
                    });
                }
            } else if base.ends_with("down_proj") {
                experts.push(Planned {
                    out: OutTensor {
                        name: format!("blk.{l}.ffn_down_exps.weight"),
                        ne: vec![nb * 32, rows, e],
                        ty: GgmlType::MXFP4,
                    },
                    source: Source::Mxfp4 {
                        base: base.to_string(),
                        rows: None,
                    },
                });
            } else {
                bail!("{name}: unexpected MXFP4 tensor");
            }
            continue;
        }
        if name.ends_with("_scales") {
            continue;
        }
        if let Some(base) = name.strip_suffix("gate_up_proj_bias") {
            let l = base
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .with_context(|| format!("{name}: not in a layer"))?;
            if t.shape.len() != 2 {
                bail!("{name}: expected [E, 2F], found {:?}", t.shape);
            }
            for (i, which) in ["ffn_gate_exps", "ffn_up_exps"].iter().enumerate() {
                rest.push(Planned {
                    out: OutTensor {
                        name: format!("blk.{l}.{which}.bias"),
                        ne: vec![t.shape[1] as u64 / 2, t.shape[0] as u64],
                        ty: GgmlType::F32,
                    },
                    source: Source::Interleaved(name.clone(), i),
                });
            }
            continue;
        }
        let Some(gname) = hf_to_gguf(name) else {
            bail!("{name}: tensor not known to the GPT-OSS converter");
        };
        let ne = shape_ne(&t.shape);
        // Vectors, biases and the router stay F32, as llama.cpp's converter keeps them.
        let ty = if ne.len() < 2 || gname.contains("ffn_gate_inp") || !gname.ends_with(".weight") {
            GgmlType::F32
        } else {
            outtype.matrix_type()
        };
        rest.push(Planned {
            out: OutTensor {
                name: gname,
                ne,
                ty,
            },
            source: Source::Plain(name.clone()),
        });
    }
    experts.extend(rest);
    Ok(experts)
}

fn to_f32(dtype: Dtype, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => bail!("{name}: dtype {other:?} is not a float type"),
    })
}

/// The bytes of one planned tensor.
pub fn tensor_bytes(ck: &Checkpoint, p: &Planned) -> Result<Vec<u8>> {
    match &p.source {
        Source::Mxfp4 { base, rows } => {
            let (bt, blocks) = ck.get(&format!("{base}_blocks"))?;
            let (st, scales) = ck.get(&format!("{base}_scales"))?;
            let (e, r, nb) = (bt.shape[0], bt.shape[1], bt.shape[2]);
            if st.shape != [e, r, nb] {
                bail!(
                    "{base}_scales: shape {:?} does not match blocks {:?}",
                    st.shape,
                    bt.shape
                );
            }
            let mut out = Vec::with_capacity(p.out.n_bytes()? as usize);
            let mut row = vec![0u8; nb * 17];
            for ei in 0..e {
                for ri in 0..r {
                    if let Some(par) = rows
                        && ri % 2 != *par
                    {
                        continue;
                    }
                    let o = (ei * r + ri) * nb;
                    gptoss_quant::mxfp4::ggml_row_from_openai(
                        &scales[o..o + nb],
                        &blocks[o * 16..(o + nb) * 16],
                        &mut row,
                    )?;
                    out.extend_from_slice(&row);
                }
            }
            Ok(out)
        }
        Source::Interleaved(name, par) => {
            let (t, b) = ck.get(name)?;
            let x = to_f32(t.dtype, b, name)?;
            let w = t.shape[1];
            let v: Vec<f32> = x
                .chunks_exact(w)
                .flat_map(|r| r.iter().skip(*par).step_by(2).copied())
                .collect();
            crate::requant::quantize_rows(GgmlType::F32, &v, w / 2)
        }
        Source::Plain(name) => {
            let (t, b) = ck.get(name)?;
            if p.out.ty == GgmlType::BF16 && t.dtype == Dtype::BF16 {
                return Ok(b.to_vec());
            }
            let x = to_f32(t.dtype, b, name)?;
            crate::requant::quantize_rows(p.out.ty, &x, p.out.ne[0] as usize)
        }
    }
}

fn title_case(s: &str) -> String {
    // Python's str.title() on the folder name, with '-'/'_' as spaces (gguf-py's naming).
    let mut out = String::new();
    let mut prev_alpha = false;
    for c in s.chars() {
        let c = if c == '-' || c == '_' { ' ' } else { c };
        if c.is_alphabetic() {
            if prev_alpha {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_alpha = true;
        } else {
            out.push(c);
            prev_alpha = false;
        }
    }
    out
}

/// Tokenizer metadata from tokenizer.json, tokenizer_config.json and chat_template.jinja.
fn tokenizer_meta(ck: &Checkpoint, n_vocab: usize, m: &mut Metadata) -> Result<()> {
    let tj = read_json(&ck.dir.join("tokenizer.json"))?;
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        bail!("tokenizer.json: model type {:?} is not BPE", model["type"]);
    }
    let vocab = model["vocab"]
        .as_object()
        .context("tokenizer.json: model.vocab missing")?;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![1i32; n_vocab];
    let mut set = |id: usize, text: &str, ty: i32| -> Result<()> {
        if id >= n_vocab {
            bail!("tokenizer.json: token id {id} ({text:?}) is past the vocabulary size {n_vocab}");
        }
        tokens[id] = Some(text.to_string());
        types[id] = ty;
        Ok(())
    };
    for (text, id) in vocab {
        let id = id.as_u64().context("tokenizer.json: non-integer id")? as usize;
        set(id, text, 1)?;
    }
    let mut by_text = std::collections::HashMap::new();
    for (text, id) in vocab {
        by_text.insert(text.clone(), id.as_u64().unwrap_or(0) as usize);
    }
    if let Some(added) = tj["added_tokens"].as_array() {
        for a in added {
            let id = a["id"].as_u64().context("added_tokens: id")? as usize;
            let text = a["content"].as_str().context("added_tokens: content")?;
            let special = a["special"].as_bool().unwrap_or(false);
            set(id, text, if special { 3 } else { 4 })?;
            by_text.insert(text.to_string(), id);
        }
    }
    let mut arr = StringArray::with_capacity(n_vocab, n_vocab * 8);
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Some(s) => arr.push(s),
            None => {
                // Holes are padding, as the converter writes them.
                arr.push(&format!("[PAD{i}]"));
                types[i] = 5;
            }
        }
    }
    let merges = match model["merges"].as_array() {
        Some(list) => list
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(p) if p.len() == 2 => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                )),
                _ => bail!("tokenizer.json: malformed merge {m}"),
            })
            .collect::<Result<StringArray>>()?,
        None => StringArray::new(),
    };
    let tc = read_json(&ck.dir.join("tokenizer_config.json")).unwrap_or(Json::Null);
    let special_id = |key: &str| -> Option<u32> {
        let v = &tc[key];
        let text = v.as_str().or_else(|| v["content"].as_str())?;
        by_text.get(text).map(|&i| i as u32)
    };
    m.insert("tokenizer.ggml.model", Value::String("gpt2".into()));
    // llama.cpp names the o200k pre-tokenizer "gpt-4o".
    m.insert("tokenizer.ggml.pre", Value::String("gpt-4o".into()));
    m.insert("tokenizer.ggml.tokens", Value::Array(Array::String(arr)));
    m.insert("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
    m.insert("tokenizer.ggml.merges", Value::Array(Array::String(merges)));
    for (k, key) in [
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("pad_token", "padding"),
    ] {
        let id = special_id(k).or_else(|| {
            let ck_key = if key == "padding" {
                "pad_token_id".to_string()
            } else {
                format!("{key}_token_id")
            };
            ck.config[&ck_key].as_u64().map(|v| v as u32)
        });
        if let Some(id) = id {
            m.insert(format!("tokenizer.ggml.{key}_token_id"), Value::U32(id));
        }
    }
    m.insert(
        "tokenizer.ggml.add_bos_token",
        Value::Bool(tc["add_bos_token"].as_bool().unwrap_or(false)),
    );
    m.insert(
        "tokenizer.ggml.add_eos_token",
        Value::Bool(tc["add_eos_token"].as_bool().unwrap_or(false)),
    );
    let tmpl_path = ck.dir.join("chat_template.jinja");
    let tmpl = if tmpl_path.exists() {
        Some(
            std::fs::read_to_string(&tmpl_path)
                .with_context(|| format!("reading {}", tmpl_path.display()))?,
        )
    } else {
        tc["chat_template"].as_str().map(str::to_string)
    };
    if let Some(t) = tmpl {
        m.insert("tokenizer.chat_template", Value::String(t));
    }
    Ok(())
}

/// The output metadata, in the converter's key order.
pub fn metadata(ck: &Checkpoint, outtype: OutType, planned: &[Planned]) -> Result<Metadata> {
    let mut m = Metadata::new();
    let s = |v: &str| Value::String(v.to_string());
    let u = |v: usize| Value::U32(v as u32);
    let dir_name = ck
        .dir
        .canonicalize()
        .unwrap_or_else(|_| ck.dir.clone())
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let n_expert = ck.cfg_usize("num_local_experts")?;
    m.insert("general.architecture", s("gpt-oss"));
    m.insert("general.type", s("model"));
    m.insert("general.name", s(&title_case(&dir_name)));
    let (mut shared, mut expert) = (0u64, 0u64);
    for p in planned {
        let n: u64 = p.out.ne.iter().product();
        if p.out.name.contains("_exps.") {
            expert += n / n_expert as u64;
        } else {
            shared += n;
        }
    }
    m.insert(
        "general.size_label",
        s(&crate::synth::size_label_from(shared + expert, n_expert)),
    );
    let a = |k: &str| format!("gpt-oss.{k}");
    let rope = &ck.config["rope_scaling"];
    m.insert(a("block_count"), u(ck.cfg_usize("num_hidden_layers")?));
    m.insert(
        a("context_length"),
        u(ck.cfg_usize("max_position_embeddings")?),
    );
    m.insert(a("embedding_length"), u(ck.cfg_usize("hidden_size")?));
    m.insert(
        a("feed_forward_length"),
        u(ck.cfg_usize("intermediate_size")?),
    );
    m.insert(
        a("attention.head_count"),
        u(ck.cfg_usize("num_attention_heads")?),
    );
    m.insert(
        a("attention.head_count_kv"),
        u(ck.cfg_usize("num_key_value_heads")?),
    );
    if rope.is_object() {
        m.insert(
            a("rope.scaling.type"),
            s(rope["rope_type"].as_str().unwrap_or("yarn")),
        );
        let f = |k: &str| rope[k].as_f64().map(|v| v as f32);
        m.insert(
            a("rope.scaling.factor"),
            Value::F32(f("factor").context("rope_scaling.factor")?),
        );
        m.insert(
            a("rope.scaling.original_context_length"),
            u(rope["original_max_position_embeddings"]
                .as_u64()
                .context("rope_scaling.original_max_position_embeddings")? as usize),
        );
        if let Some(b) = f("beta_fast") {
            m.insert(a("rope.scaling.yarn_beta_fast"), Value::F32(b));
        }
        if let Some(b) = f("beta_slow") {
            m.insert(a("rope.scaling.yarn_beta_slow"), Value::F32(b));
        }
    }
    m.insert(a("rope.freq_base"), Value::F32(ck.cfg_f32("rope_theta")?));
    m.insert(
        a("attention.layer_norm_rms_epsilon"),
        Value::F32(ck.cfg_f32("rms_norm_eps")?),
    );
    m.insert(a("expert_count"), u(n_expert));
    let used = ck
        .cfg_usize("experts_per_token")
        .or_else(|_| ck.cfg_usize("num_experts_per_tok"))?;
    m.insert(a("expert_used_count"), u(used));
    let head_dim = ck.cfg_usize("head_dim")?;
    m.insert(a("attention.key_length"), u(head_dim));
    m.insert(a("attention.value_length"), u(head_dim));
    m.insert("general.file_type", Value::U32(outtype.file_type()));
    m.insert(
        a("attention.sliding_window"),
        u(ck.cfg_usize("sliding_window")?),
    );
    m.insert(
        a("expert_feed_forward_length"),
        u(ck.cfg_usize("intermediate_size")?),
    );
    m.insert("general.quantization_version", Value::U32(2));
    tokenizer_meta(ck, ck.cfg_usize("vocab_size")?, &mut m)?;
    Ok(m)
}
