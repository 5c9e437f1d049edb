//! Every ggml block format: decode, encode and quantized dot products, bit-exact with ggml.
//!
//! - [`dequantize`] decodes any type a GGUF file can hold to f32 (and [`dequantize_f16`] /
//!   [`dequantize_bf16`] to half floats), with the same float operations as ggml's
//!   `dequantize_row_*`, so results are bit-identical to ggml and gguf-py.
//! - [`quantize`] encodes with ggml's reference quantizers (`quantize_row_*_ref`), bit for bit.
//! - [`vec_dot`] is the CPU backend's quantized dot product, with run-time SIMD dispatch
//!   ([`Dispatch`]: AVX2 / AVX-512 on x86-64, NEON with or without `sdot` on aarch64); SIMD and
//!   scalar results are identical.
//! - [`mxfp4`] holds the MXFP4 helpers every backend shares.
#![warn(missing_docs)]
// The codecs keep ggml's index loops one to one: that is what makes bit-exactness reviewable.
#![allow(clippy::needless_range_loop)]

mod dot;
mod error;
mod iquants;
mod kquants;
mod kquants_q;
pub mod mxfp4;
mod simple;
pub mod tables;
mod ternary;
mod util;

pub use dot::{
    Dispatch, current_dispatch, set_simd_enabled, vec_dot, vec_dot_tile, vec_dot_tile_with,
    vec_dot_type, vec_dot_with,
};
pub use error::QuantError;
pub use gguf_format::GgmlType;
pub use half::{bf16, f16};

use error::{check_bytes, n_blocks};

/// A per-block decoder: `src` is one block's bytes, `dst` its elements.
type BlockDecoder = fn(&[u8], &mut [f32]);
/// A per-block encoder.
type BlockEncoder = fn(&[f32], &mut [u8]);

fn block_decoder(ty: GgmlType) -> Option<BlockDecoder> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => simple::deq_q4_0,
        Q4_1 => simple::deq_q4_1,
        Q5_0 => simple::deq_q5_0,
        Q5_1 => simple::deq_q5_1,
        Q8_0 => simple::deq_q8_0,
        Q8_1 => simple::deq_q8_1,
        MXFP4 => mxfp4::deq_block,
        NVFP4 => ternary::deq_nvfp4,
        Q2_K => kquants::deq_q2_k,
        Q3_K => kquants::deq_q3_k,
        Q4_K => kquants::deq_q4_k,
        Q5_K => kquants::deq_q5_k,
        Q6_K => kquants::deq_q6_k,
        Q8_K => kquants::deq_q8_k,
        TQ1_0 => ternary::deq_tq1_0,
        TQ2_0 => ternary::deq_tq2_0,
        IQ2_XXS => iquants::deq_iq2_xxs,
        IQ2_XS => iquants::deq_iq2_xs,
        IQ2_S => iquants::deq_iq2_s,
        IQ3_XXS => iquants::deq_iq3_xxs,
        IQ3_S => iquants::deq_iq3_s,
        IQ1_S => iquants::deq_iq1_s,
        IQ1_M => iquants::deq_iq1_m,
        IQ4_NL => iquants::deq_iq4_nl,
        IQ4_XS => iquants::deq_iq4_xs,
        _ => return None,
    })
}

fn block_encoder(ty: GgmlType) -> Option<BlockEncoder> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => simple::q_q4_0,
        Q4_1 => simple::q_q4_1,
        Q5_0 => simple::q_q5_0,
        Q5_1 => simple::q_q5_1,
        Q8_0 => simple::q_q8_0,
        Q8_1 => simple::q_q8_1,
        MXFP4 => mxfp4::q_block,
        Q2_K => kquants_q::q_q2_k,
        Q3_K => kquants_q::q_q3_k,
        Q4_K => kquants_q::q_q4_k,
        Q5_K => kquants_q::q_q5_k,
        Q6_K => kquants_q::q_q6_k,
        Q8_K => kquants_q::q_q8_k,
        TQ1_0 => ternary::q_tq1_0,
        TQ2_0 => ternary::q_tq2_0,
        IQ4_NL => iquants::q_iq4_nl,
        IQ4_XS => iquants::q_iq4_xs,
        _ => return None,
    })
}

/// Whether [`dequantize`] supports `ty` (every type except Q1_0/Q2_0, which are newer than the
/// ggml version this crate follows).
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64) || block_decoder(ty).is_some()
}

/// Whether [`quantize`] supports `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | BF16) || block_encoder(ty).is_some()
}

/// Decodes `dst.len()` elements of type `ty` from `src` (little-endian ggml layout) to f32.
/// `src.len()` must be exactly the encoded size of `dst.len()` elements. Integer types (I8..I64)
/// are converted to the nearest f32, F64 rounded to f32.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    check_bytes(ty, dst.len(), src.len(), "src")?;
    match ty {
        F32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        F16 if Dispatch::Avx2.is_available() => {
            // SAFETY: the CPU supports AVX2 and F16C (checked by the guard).
            unsafe { dot::x86::f16_dequant_f16c(src, dst) }
        }
        F16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        BF16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        F64 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                *y = f64::from_le_bytes(a) as f32;
            }
        }
        I8 => {
            for (y, &b) in dst.iter_mut().zip(src) {
                *y = b as i8 as f32;
            }
        }
        I16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = i16::from_le_bytes([b[0], b[1]]) as f32;
            }
        }
        I32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
            }
        }
        I64 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                *y = i64::from_le_bytes(a) as f32;
            }
        }
        MXFP4 => mxfp4::dequantize_row(src, dst),
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        Q8_0 if Dispatch::Avx2.is_available() => {
            // SAFETY: the CPU supports AVX2 and F16C (checked by the guard).
            unsafe { dot::x86::q8_0_dequant_avx2(src, dst) }
        }
        _ => {
            let f = block_decoder(ty).ok_or(QuantError::Unsupported {
                ty,
                op: "dequantize",
            })?;
            let (bs, ts) = (ty.block_size(), ty.type_size());
            for (y, b) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(ts)) {
                f(b, y);
            }
        }
    }
    Ok(())
}

/// Decodes through f32 in stack-sized chunks and converts each element with `conv`.
fn dequantize_via_f32<T>(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [T],
    conv: impl Fn(f32) -> T,
) -> Result<(), QuantError> {
    check_bytes(ty, dst.len(), src.len(), "src")?;
    const CHUNK: usize = 1024; // a multiple of every block size
    let mut buf = [0.0f32; CHUNK];
    let (bs, ts) = (ty.block_size(), ty.type_size());
    for (i, y) in dst.chunks_mut(CHUNK).enumerate() {
        let start = i * CHUNK / bs * ts;
        let end = start + y.len() / bs * ts;
        let len = y.len();
        dequantize(ty, &src[start..end], &mut buf[..len])?;
        for (o, &v) in y.iter_mut().zip(&buf[..len]) {
            *o = conv(v);
        }
    }
    Ok(())
}

/// [`dequantize`] to IEEE half (round to nearest even). F16 input is copied unchanged.
pub fn dequantize_f16(ty: GgmlType, src: &[u8], dst: &mut [f16]) -> Result<(), QuantError> {
    if ty == GgmlType::F16 {
        check_bytes(ty, dst.len(), src.len(), "src")?;
        for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *y = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        }
        return Ok(());
    }
    dequantize_via_f32(ty, src, dst, f16::from_f32)
}

/// [`dequantize`] to bfloat16 (round to nearest even, ggml's conversion). BF16 input is copied
/// unchanged.
pub fn dequantize_bf16(ty: GgmlType, src: &[u8], dst: &mut [bf16]) -> Result<(), QuantError> {
    if ty == GgmlType::BF16 {
        check_bytes(ty, dst.len(), src.len(), "src")?;
        for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *y = bf16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        }
        return Ok(());
    }
    dequantize_via_f32(ty, src, dst, |v| bf16::from_bits(f32_to_bf16_bits(v)))
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even, NaN made quiet.
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

/// Encodes `src` as type `ty` into `dst` with ggml's reference quantizer for that type
/// (`quantize_row_*_ref`; for F16/BF16 the round-to-nearest-even conversion). `src.len()` must be
/// a multiple of the block size and `dst.len()` exactly the encoded size.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    use GgmlType::*;
    check_bytes(ty, src.len(), dst.len(), "dst")?;
    match ty {
        F32 => {
            for (b, &x) in dst.chunks_exact_mut(4).zip(src) {
                b.copy_from_slice(&x.to_le_bytes());
            }
        }
        F16 => {
            for (b, &x) in dst.chunks_exact_mut(2).zip(src) {
                b.copy_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
            }
        }
        BF16 => {
            for (b, &x) in dst.chunks_exact_mut(2).zip(src) {
                b.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
            }
        }
        _ => {
            let f = block_encoder(ty).ok_or(QuantError::Unsupported { ty, op: "quantize" })?;
            let (bs, ts) = (ty.block_size(), ty.type_size());
            for (x, b) in src.chunks_exact(bs).zip(dst.chunks_exact_mut(ts)) {
                f(x, b);
            }
        }
    }
    Ok(())
}

/// Encoded size in bytes of `n` elements of `ty`, or an error when `n` is not a whole number
/// of blocks.
pub fn row_size(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    Ok(n_blocks(ty, n)? * ty.type_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F16C row decoder, tail included, against `half`'s conversion.
    #[test]
    fn f16_rows_of_any_length_decode_exactly() {
        for n in [1usize, 7, 8, 9, 23] {
            let vals: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(i as f32 * 0.37 - 2.0))
                .collect();
            let src: Vec<u8> = vals
                .iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect();
            let mut out = vec![0.0f32; n];
            dequantize(GgmlType::F16, &src, &mut out).unwrap();
            for (o, v) in out.iter().zip(&vals) {
                assert_eq!(o.to_bits(), v.to_f32().to_bits());
            }
        }
    }

    /// The SIMD row decoders (MXFP4, Q8_0) against the per-block scalar decoders.
    #[test]
    fn simd_row_decoders_equal_the_scalar_block_decoders() {
        let mut s = 0x2545_f491u32;
        for ty in [GgmlType::MXFP4, GgmlType::Q8_0] {
            let nb = 37;
            let mut src = vec![0u8; nb * ty.type_size()];
            for b in src.iter_mut() {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                *b = (s >> 24) as u8;
            }
            for blk in src.chunks_exact_mut(ty.type_size()) {
                if ty == GgmlType::Q8_0 {
                    blk[1] &= 0x3b; // a finite f16 scale
                } else {
                    blk[0] = 100 + blk[0] % 50;
                }
            }
            let mut fast = vec![0.0f32; nb * 32];
            dequantize(ty, &src, &mut fast).unwrap();
            let f = block_decoder(ty).unwrap();
            let mut slow = vec![0.0f32; nb * 32];
            for (y, b) in slow
                .chunks_exact_mut(32)
                .zip(src.chunks_exact(ty.type_size()))
            {
                f(b, y);
            }
            for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty} element {i}");
            }
            assert!(slow.iter().any(|v| *v != 0.0));
        }
    }
}
