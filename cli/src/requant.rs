//! Requantization: every tensor of a GGUF model dequantized exactly to f32 and re-encoded with
//! llama.cpp's per-tensor type choices ([`crate::qplan`]).

use anyhow::{Result, bail};
use gguf_format::GgmlType;

/// Encode rows of `n_per_row` f32 values as `ty` with ggml's reference quantizers.
pub fn quantize_rows(ty: GgmlType, x: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    if n_per_row == 0 || x.len() % n_per_row != 0 {
        bail!("{} values are not whole rows of {n_per_row}", x.len());
    }
    let n = gptoss_quant::row_size(ty, x.len())?;
    let mut out = vec![0u8; n];
    gptoss_quant::quantize(ty, x, &mut out)?;
    Ok(out)
}
