//! The CPU backend's one door to the block formats: decode rows to f32, and (fast mode) quantize
//! activations and take quantized dot products. Everything goes through the quant crate; this
//! module only adapts its errors and picks the activation type for each weight type.

use crate::GgmlType;

/// Decode `dst.len()` elements of type `ty` from `src` (a whole number of blocks).
pub(crate) fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    local::dequantize(ty, src, dst)
}

/// True when [`dequantize`] handles `ty`.
pub(crate) fn can_decode(ty: GgmlType) -> bool {
    local::can_decode(ty)
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
