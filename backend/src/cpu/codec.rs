//! The CPU backend's one door to the block formats (the quant crate): decode rows to f32, and in
//! fast mode quantize activations and take quantized dot products. Errors become backend errors.

use crate::{BackendError, GgmlType, Result};

fn err(op: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Device {
        backend: "cpu".into(),
        message: format!("{op}: {e}"),
    }
}

/// Decode `dst.len()` elements of type `ty` from `src` (a whole number of blocks).
pub(crate) fn dequantize(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
) -> std::result::Result<(), String> {
    gptoss_quant::dequantize(ty, src, dst).map_err(|e| e.to_string())
}

/// True when the quant crate decodes `ty`.
pub(crate) fn can_decode(ty: GgmlType) -> bool {
    gptoss_quant::can_dequantize(ty)
}

/// The activation type ggml pairs with weights of type `wty`.
pub(crate) fn vec_dot_type(wty: GgmlType) -> GgmlType {
    gptoss_quant::vec_dot_type(wty)
}

/// Bytes of one row of `k` elements of `ty`.
pub(crate) fn row_bytes(ty: GgmlType, k: usize) -> Result<usize> {
    ty.bytes_for(k as u64)
        .map(|b| b as usize)
        .ok_or_else(|| BackendError::Shape {
            op: "quantize activations",
            detail: format!("rows of {k} values are not whole {ty} blocks"),
        })
}

/// Quantize one activation row to `ty`.
pub(crate) fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    gptoss_quant::quantize(ty, src, dst).map_err(|e| err("quantize activations", e))
}

/// `n`-element dot product of a weight row and an activation row.
#[inline]
pub(crate) fn vec_dot(wty: GgmlType, w: &[u8], aty: GgmlType, a: &[u8], n: usize) -> Result<f32> {
    gptoss_quant::vec_dot(wty, w, aty, a, n).map_err(|e| err("vec_dot", e))
}

/// Dot products of `n_rows` consecutive weight rows (`w`) with every row of `acts`:
/// `out[r * acts.len() + t]`, equal bit for bit to [`vec_dot`] on each pair (tiled: each weight
/// row is unpacked once for all activation rows).
#[inline]
pub(crate) fn vec_dot_tile(
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    aty: GgmlType,
    acts: &[&[u8]],
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    gptoss_quant::vec_dot_tile(wty, w, n_rows, aty, acts, n, out)
        .map_err(|e| err("vec_dot_tile", e))
}
