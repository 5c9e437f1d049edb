//! The CPU backend's one door to the block formats: decode rows to f32, and in fast mode
//! quantize activations and take quantized dot products. Errors become backend errors.
//!
//! Temporary: local decoders for the test types until the quant crate's API lands.

use crate::{BackendError, GgmlType, Result};

/// Decode `dst.len()` elements of type `ty` from `src` (a whole number of blocks).
pub(crate) fn dequantize(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
) -> std::result::Result<(), String> {
    local::dequantize(ty, src, dst)
}

/// True when [`dequantize`] handles `ty`.
pub(crate) fn can_decode(ty: GgmlType) -> bool {
    local::can_decode(ty)
}

/// The activation type ggml pairs with weights of type `wty`.
pub(crate) fn vec_dot_type(wty: GgmlType) -> GgmlType {
    match wty {
        GgmlType::F16 => GgmlType::F16,
        GgmlType::BF16 => GgmlType::BF16,
        t if t.is_quantized() => GgmlType::Q8_0,
        _ => GgmlType::F32,
    }
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

/// Quantize one activation row to `ty` (Q8_0 only, for now).
pub(crate) fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    if ty != GgmlType::Q8_0 {
        return Err(BackendError::Device {
            backend: "cpu".into(),
            message: format!("quantize to {ty}"),
        });
    }
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        for (q, v) in b[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
    Ok(())
}

/// `n`-element dot product of a weight row and an activation row (decode both, f32 dot).
pub(crate) fn vec_dot(wty: GgmlType, w: &[u8], aty: GgmlType, a: &[u8], n: usize) -> Result<f32> {
    let mut wf = vec![0f32; n];
    let mut af = vec![0f32; n];
    let e = |m: String| BackendError::Device {
        backend: "cpu".into(),
        message: m,
    };
    local::dequantize(wty, w, &mut wf).map_err(e)?;
    local::dequantize(aty, a, &mut af).map_err(e)?;
    Ok(super::linear::dot(&wf, &af))
}

/// Temporary decoders for the types the tests use, until the quant crate's `dequantize` lands.
mod local {
    use crate::GgmlType;

    pub(super) fn can_decode(ty: GgmlType) -> bool {
        matches!(
            ty,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::MXFP4
        )
    }

    const E2M1: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];

    pub(super) fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
        let need = ty
            .bytes_for(dst.len() as u64)
            .ok_or_else(|| format!("{} elements are not whole {ty} blocks", dst.len()))?;
        if need != src.len() as u64 {
            return Err(format!(
                "{} elements of {ty} need {need} bytes, got {}",
                dst.len(),
                src.len()
            ));
        }
        match ty {
            GgmlType::F32 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            GgmlType::F16 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([s[0], s[1]]).to_f32();
                }
            }
            GgmlType::BF16 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
                }
            }
            GgmlType::Q8_0 => {
                for (d, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
                    let scale = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    for (x, &q) in d.iter_mut().zip(&b[2..]) {
                        *x = q as i8 as f32 * scale;
                    }
                }
            }
            GgmlType::MXFP4 => {
                for (d, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(17)) {
                    // E8M0: 2^(e-127); e = 0 is the denormal 2^-127, as ggml decodes it.
                    let scale = if b[0] == 0 {
                        f32::from_bits(0x0040_0000)
                    } else {
                        f32::from_bits((b[0] as u32) << 23)
                    };
                    for j in 0..16 {
                        d[j] = E2M1[(b[1 + j] & 0x0f) as usize] * scale;
                        d[j + 16] = E2M1[(b[1 + j] >> 4) as usize] * scale;
                    }
                }
            }
            other => return Err(format!("no decoder for {other}")),
        }
        Ok(())
    }
}
