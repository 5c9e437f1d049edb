//! Requantization: every tensor of a GGUF model dequantized exactly to f32 and re-encoded with
//! llama.cpp's per-tensor type choices ([`crate::qplan`]), in llama.cpp's tensor order, streamed
//! in row chunks so memory stays bounded whatever the model size.

use anyhow::{Context, Result, bail};
use gguf_format::{GgmlType, GgufModel, Metadata, TensorInfo, Value};

use crate::gguf_out::OutTensor;
use crate::qplan::{self, FileType, ModelFacts, TensorDesc};

/// Encode rows of `n_per_row` f32 values as `ty` with ggml's reference quantizers.
pub fn quantize_rows(ty: GgmlType, x: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    if n_per_row == 0 || !x.len().is_multiple_of(n_per_row) {
        bail!("{} values are not whole rows of {n_per_row}", x.len());
    }
    let n = gptoss_quant::row_size(ty, x.len())?;
    let mut out = vec![0u8; n];
    gptoss_quant::quantize(ty, x, &mut out)?;
    Ok(out)
}

/// What the type rules need, from the model's metadata.
pub fn facts(meta: &Metadata) -> Result<ModelFacts> {
    let arch = meta.architecture()?;
    let k = |s: &str| format!("{arch}.{s}");
    let n_head = meta.get_usize(&k("attention.head_count"))?;
    let n_head_kv = meta
        .get_usize(&k("attention.head_count_kv"))
        .unwrap_or(n_head);
    Ok(ModelFacts {
        n_layer: meta.get_usize(&k("block_count"))?,
        n_expert: meta.get_usize(&k("expert_count")).unwrap_or(0),
        n_gqa: n_head / n_head_kv.max(1),
    })
}

/// A requantization: source tensors, their output entries (same order) and the new metadata.
pub struct Plan {
    /// Source tensor infos in output order.
    pub src: Vec<TensorInfo>,
    /// Output tensors.
    pub out: Vec<OutTensor>,
    /// Output metadata: the input's, with `general.file_type` and
    /// `general.quantization_version` set and split keys removed.
    pub meta: Metadata,
}

/// Plan `llama-quantize IN OUT ftype` for `model`.
pub fn plan(model: &GgufModel, ftype: FileType) -> Result<Plan> {
    plan_with(model, ftype, &qplan::Overrides::default())
}

/// [`plan`] with llama-quantize's per-tensor overrides (`--tensor-type` and friends).
pub fn plan_with(model: &GgufModel, ftype: FileType, ov: &qplan::Overrides) -> Result<Plan> {
    let mut src: Vec<TensorInfo> = model.tensors().cloned().collect();
    src.sort_by(|a, b| qplan::llama_order(&a.name, &b.name));
    let descs: Vec<_> = src
        .iter()
        .map(|t| TensorDesc {
            name: &t.name,
            ne: &t.shape,
        })
        .collect();
    let cur: Vec<_> = src.iter().map(|t| t.ggml_type).collect();
    let types = qplan::choose_types_with(&descs, &cur, ftype, facts(model.metadata())?, ov);
    let mut out = Vec::with_capacity(src.len());
    for (t, ty) in src.iter().zip(types) {
        if ty != t.ggml_type {
            if !gptoss_quant::can_dequantize(t.ggml_type) {
                bail!("{}: cannot dequantize type {}", t.name, t.ggml_type);
            }
            if !gptoss_quant::can_quantize(ty) {
                bail!("{}: cannot quantize to {ty}", t.name);
            }
        }
        out.push(OutTensor {
            name: t.name.clone(),
            ne: t.shape.clone(),
            ty,
        });
    }
    let mut meta = model.metadata().clone();
    meta.insert("general.quantization_version", Value::U32(2));
    meta.insert("general.file_type", Value::U32(ftype.id()));
    for k in ["split.no", "split.count", "split.tensors.count"] {
        meta.remove(k);
    }
    Ok(Plan { src, out, meta })
}

/// Chunks of tensor `i` (row chunks of about a million elements).
pub fn n_chunks(p: &Plan, i: usize) -> usize {
    let ne0 = p.src[i].shape.first().copied().unwrap_or(1).max(1);
    let rows = p.src[i].n_elements() / ne0;
    rows.div_ceil(crate::synth::rows_per_chunk(ne0)).max(1) as usize
}

/// The output bytes of chunk `c` of tensor `i`: copied when the type is unchanged, else
/// dequantized to f32 and re-encoded.
pub fn chunk(model: &GgufModel, p: &Plan, i: usize, c: usize) -> Result<Vec<u8>> {
    let (s, o) = (&p.src[i], &p.out[i]);
    let view = model
        .tensor(&s.name)
        .with_context(|| format!("tensor {} vanished", s.name))?;
    let ne0 = s.shape.first().copied().unwrap_or(1).max(1);
    let rows = s.n_elements() / ne0;
    let rpc = crate::synth::rows_per_chunk(ne0);
    let r0 = c as u64 * rpc;
    let nr = rpc.min(rows.saturating_sub(r0));
    let in_row = s.row_bytes();
    let bytes = view
        .data
        .get((r0 * in_row) as usize..((r0 + nr) * in_row) as usize)
        .with_context(|| format!("{}: rows {r0}..{} out of range", s.name, r0 + nr))?;
    if s.ggml_type == o.ty {
        return Ok(bytes.to_vec());
    }
    let mut x = vec![0f32; (nr * ne0) as usize];
    gptoss_quant::dequantize(s.ggml_type, bytes, &mut x)
        .with_context(|| format!("dequantizing {}", s.name))?;
    quantize_rows(o.ty, &x, ne0 as usize)
        .with_context(|| format!("quantizing {} to {}", s.name, o.ty))
}
