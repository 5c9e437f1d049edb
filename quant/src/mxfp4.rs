//! MXFP4 (OCP Microscaling FP4, E2M1 elements with one E8M0 scale per 32) as ggml stores it,
//! plus the helpers every backend shares: scale conversion, the code table, nibble-order
//! conversion from OpenAI's checkpoint layout, and exact expansion to wider float formats.
//!
//! ggml block (17 bytes): `u8 e` then `u8 qs[16]`; `qs[j]` holds element `j` in its low nibble
//! and element `j + 16` in its high nibble. Value = E2M1(code) * 2^(e - 127). ggml computes it as
//! `E2M1_DOUBLED_I8[code] * 2^(e - 128)`, which is the same number, and decodes code 8 (negative
//! zero) as +0.0; every function here does the same so all paths agree bit for bit.

use half::{bf16, f16};

/// Bytes per ggml MXFP4 block.
pub const BLOCK_BYTES: usize = 17;
/// Elements per block.
pub const BLOCK_ELEMS: usize = 32;

/// E2M1 code -> value. Code 8 (negative zero in the OCP spec) is +0.0 here, as in ggml.
pub const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// E2M1 code -> twice its value as int8 (ggml's `kvalues_mxfp4`), so that integer dot products
/// work; pair it with [`e8m0_to_f32_half`].
pub const E2M1_DOUBLED_I8: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// E2M1 code -> the same value as an FP8 E4M3 (OCP "e4m3fn", bias 7) byte. Every E2M1 value is
/// exactly representable in E4M3. Code 8 maps to +0 (0x00), as everywhere in this module.
pub const E2M1_TO_E4M3: [u8; 16] = [
    0x00, 0x30, 0x38, 0x3C, 0x40, 0x44, 0x48, 0x4C, 0x00, 0xB0, 0xB8, 0xBC, 0xC0, 0xC4, 0xC8, 0xCC,
];

/// E8M0 scale byte -> 2^(e - 127), exactly as ggml's `ggml_e8m0_to_fp32`: e = 0 gives the
/// subnormal 2^-127 (bits 0x00400000) rather than zero, and e = 255 gives +inf (ggml rejects such
/// blocks when validating rows; OCP calls it NaN).
#[inline(always)]
pub fn e8m0_to_f32(e: u8) -> f32 {
    let bits = if e == 0 {
        0x0040_0000
    } else {
        (e as u32) << 23
    };
    f32::from_bits(bits)
}

/// [`e8m0_to_f32_half`] for every byte, for table lookups in hot loops.
pub const E8M0_HALF: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut e = 0;
    while e < 256 {
        let bits = if e < 2 {
            0x0020_0000u32 << e
        } else {
            ((e as u32) - 1) << 23
        };
        t[e] = f32::from_bits(bits);
        e += 1;
    }
    t
};

/// Half of [`e8m0_to_f32`], i.e. 2^(e - 128), exactly as ggml's `ggml_e8m0_to_fp32_half`
/// (e = 0 -> 2^-128, e = 1 -> 2^-127, both subnormal). The scale that goes with
/// [`E2M1_DOUBLED_I8`].
#[inline(always)]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e as u32) - 1) << 23
    };
    f32::from_bits(bits)
}

/// The E8M0 byte ggml's reference quantizer picks for a block whose largest magnitude is
/// `amax`: `floor(log2(amax)) - 2 + 127` (so the largest element lands in [4, 8) before E2M1
/// rounding), and 0 for `amax == 0`. Non-finite or negative `amax` also gives 0. For
/// `amax < 2^-125` C's float-to-uint8 cast is undefined; this saturates to 0.
#[inline]
pub fn f32_to_e8m0(amax: f32) -> u8 {
    if amax > 0.0 && amax.is_finite() {
        // `as u8` saturates: values below 0 become 0, and the result never exceeds 252.
        (amax.log2().floor() - 2.0 + 127.0) as u8
    } else {
        0
    }
}

/// Index of the E2M1 code whose doubled value times `d` is nearest to `x`, first minimum winning
/// (ggml's `best_index_mxfp4`).
#[inline(always)]
pub(crate) fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (E2M1_DOUBLED_I8[0] as f32 * d - x).abs();
    for i in 1..16 {
        let err = (E2M1_DOUBLED_I8[i] as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// Dequantizes one block (ggml's `dequantize_row_mxfp4`).
#[inline(always)]
pub(crate) fn deq_block(b: &[u8], y: &mut [f32]) {
    let d = e8m0_to_f32_half(b[0]);
    for j in 0..16 {
        let q = b[1 + j];
        y[j] = E2M1_DOUBLED_I8[(q & 0x0f) as usize] as f32 * d;
        y[j + 16] = E2M1_DOUBLED_I8[(q >> 4) as usize] as f32 * d;
    }
}

/// Dequantizes a whole row; sizes were checked by the caller. Uses AVX2 when the CPU has it
/// (same products, so the same bits).
pub(crate) fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if crate::dot::Dispatch::Avx2.is_available() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { crate::dot::x86::mxfp4_dequant_avx2(src, dst) };
        return;
    }
    for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(BLOCK_BYTES)) {
        deq_block(b, y);
    }
}

/// Quantizes one block (ggml's `quantize_row_mxfp4_ref`).
pub(crate) fn q_block(x: &[f32], b: &mut [u8]) {
    let mut amax = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    let e = f32_to_e8m0(amax);
    let d = e8m0_to_f32_half(e);
    b[0] = e;
    for j in 0..16 {
        b[1 + j] = best_index(x[j], d) | (best_index(x[j + 16], d) << 4);
    }
}

/// Builds a ggml block from OpenAI checkpoint data: the scale byte (`*_scales`) and the 16 code
/// bytes of one block (`*_blocks`), where byte k holds element 2k in its low nibble and element
/// 2k+1 in its high nibble. Lossless.
pub fn ggml_block_from_openai(scale: u8, blocks: &[u8; 16]) -> [u8; BLOCK_BYTES] {
    let mut codes = [0u8; 32];
    for k in 0..16 {
        codes[2 * k] = blocks[k] & 0x0f;
        codes[2 * k + 1] = blocks[k] >> 4;
    }
    let mut out = [0u8; BLOCK_BYTES];
    out[0] = scale;
    for j in 0..16 {
        out[1 + j] = codes[j] | (codes[j + 16] << 4);
    }
    out
}

/// The inverse of [`ggml_block_from_openai`]: (scale byte, 16 code bytes in OpenAI's order).
pub fn openai_from_ggml(block: &[u8; BLOCK_BYTES]) -> (u8, [u8; 16]) {
    let codes = block_codes(block);
    let mut out = [0u8; 16];
    for k in 0..16 {
        out[k] = codes[2 * k] | (codes[2 * k + 1] << 4);
    }
    (block[0], out)
}

/// Repacks a whole row (or tensor) of OpenAI MXFP4 data into ggml blocks: `scales` has one byte
/// per block, `blocks` 16 bytes per block, `out` 17 bytes per block.
pub fn ggml_row_from_openai(
    scales: &[u8],
    blocks: &[u8],
    out: &mut [u8],
) -> Result<(), crate::QuantError> {
    let nb = scales.len();
    if blocks.len() != nb * 16 {
        return Err(crate::QuantError::SizeMismatch {
            name: "blocks",
            expected: nb * 16,
            found: blocks.len(),
        });
    }
    if out.len() != nb * BLOCK_BYTES {
        return Err(crate::QuantError::SizeMismatch {
            name: "out",
            expected: nb * BLOCK_BYTES,
            found: out.len(),
        });
    }
    for ((s, b), o) in scales
        .iter()
        .zip(blocks.chunks_exact(16))
        .zip(out.chunks_exact_mut(BLOCK_BYTES))
    {
        let b: &[u8; 16] = b.try_into().expect("chunks_exact(16)");
        o.copy_from_slice(&ggml_block_from_openai(*s, b));
    }
    Ok(())
}

/// The 32 E2M1 codes of a ggml block, in element order.
#[inline]
pub fn block_codes(block: &[u8; BLOCK_BYTES]) -> [u8; 32] {
    let mut c = [0u8; 32];
    for j in 0..16 {
        c[j] = block[1 + j] & 0x0f;
        c[j + 16] = block[1 + j] >> 4;
    }
    c
}

/// The block decoded to f32, identical to [`crate::dequantize`] on that block.
pub fn block_to_f32(block: &[u8; BLOCK_BYTES]) -> [f32; 32] {
    let mut y = [0.0f32; 32];
    deq_block(block, &mut y);
    y
}

/// The block decoded to bf16. Exact for every scale byte below 255: an E2M1 value needs 2
/// significant bits and bf16 has f32's exponent range (subnormals down to 2^-133), so each
/// element is the same number as [`block_to_f32`] gives.
pub fn block_to_bf16(block: &[u8; BLOCK_BYTES]) -> [bf16; 32] {
    block_to_f32(block).map(bf16::from_f32)
}

/// The block decoded to f16 (round to nearest even). Exact when 104 <= e <= 140, i.e. the scale
/// 2^(e-127) lies in [2^-23, 2^13] (every element then fits f16); outside that range elements underflow or
/// overflow, so GPU kernels should prefer [`block_codes_to_f16`] and apply the scale separately.
pub fn block_to_f16(block: &[u8; BLOCK_BYTES]) -> [f16; 32] {
    block_to_f32(block).map(f16::from_f32)
}

/// The unscaled E2M1 values of the block as f16 (always exact); multiply by
/// [`e8m0_to_f32`]`(block[0])` to get the element values.
pub fn block_codes_to_f16(block: &[u8; BLOCK_BYTES]) -> [f16; 32] {
    block_codes(block).map(|c| f16::from_f32(E2M1[c as usize]))
}

/// The unscaled E2M1 values of the block as bf16 (always exact).
pub fn block_codes_to_bf16(block: &[u8; BLOCK_BYTES]) -> [bf16; 32] {
    block_codes(block).map(|c| bf16::from_f32(E2M1[c as usize]))
}

/// The unscaled E2M1 values of the block as FP8 E4M3 bytes (always exact, see
/// [`E2M1_TO_E4M3`]); the scale byte `block[0]` applies on top, unchanged.
pub fn block_codes_to_e4m3(block: &[u8; BLOCK_BYTES]) -> [u8; 32] {
    block_codes(block).map(|c| E2M1_TO_E4M3[c as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent FP8 E4M3 decoder from the OCP definition (bias 7, subnormals at exponent 0).
    fn e4m3_value(b: u8) -> f32 {
        let s = if b & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = ((b >> 3) & 0x0f) as i32;
        let m = (b & 7) as f32;
        if e == 0 {
            s * m / 8.0 * 2f32.powi(-6)
        } else {
            s * (1.0 + m / 8.0) * 2f32.powi(e - 7)
        }
    }

    #[test]
    fn e2m1_tables_agree_with_the_spec() {
        // OCP MX spec: E2M1 with bias 1; exponent 0 is subnormal with value m * 0.5.
        for c in 0u8..16 {
            let s = if c & 8 != 0 { -1.0f32 } else { 1.0 };
            let e = ((c >> 1) & 3) as i32;
            let m = (c & 1) as f32;
            let v = if e == 0 {
                s * m * 0.5
            } else {
                s * (1.0 + m * 0.5) * 2f32.powi(e - 1)
            };
            assert_eq!(E2M1[c as usize], v + 0.0, "code {c}");
            assert_eq!(E2M1_DOUBLED_I8[c as usize] as f32, 2.0 * v, "code {c}");
            assert_eq!(e4m3_value(E2M1_TO_E4M3[c as usize]), v, "code {c}");
        }
    }

    #[test]
    fn e8m0_matches_ggml_bit_patterns() {
        assert_eq!(e8m0_to_f32(0).to_bits(), 0x0040_0000);
        assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(254), 2f32.powi(127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        for e in 0u8..255 {
            assert_eq!(e8m0_to_f32_half(e) * 2.0, e8m0_to_f32(e), "e = {e}");
            assert_eq!(
                E8M0_HALF[e as usize].to_bits(),
                e8m0_to_f32_half(e).to_bits()
            );
        }
        assert_eq!(f32_to_e8m0(0.0), 0);
        assert_eq!(f32_to_e8m0(6.0), 127);
        assert_eq!(f32_to_e8m0(1.0), 125);
    }

    #[test]
    fn openai_order_round_trips_and_matches_element_order() {
        let mut state = 0x1234_5678u32;
        for _ in 0..100 {
            let mut blocks = [0u8; 16];
            for b in &mut blocks {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                *b = (state >> 24) as u8;
            }
            let g = ggml_block_from_openai(119, &blocks);
            assert_eq!(openai_from_ggml(&g), (119, blocks));
            let codes = block_codes(&g);
            for k in 0..32 {
                let openai_code = (blocks[k / 2] >> (4 * (k % 2))) & 0x0f;
                assert_eq!(codes[k], openai_code, "element {k}");
            }
        }
    }

    #[test]
    fn wide_expansions_are_exact() {
        let mut block = [0u8; 17];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        for e in [0u8, 1, 100, 104, 127, 140, 254] {
            block[0] = e;
            let f = block_to_f32(&block);
            let bf = block_to_bf16(&block);
            for k in 0..32 {
                assert_eq!(bf[k].to_f32().to_bits(), f[k].to_bits(), "bf16 e={e} k={k}");
            }
            let codes16 = block_codes_to_f16(&block);
            let codesb = block_codes_to_bf16(&block);
            let fp8 = block_codes_to_e4m3(&block);
            for k in 0..32 {
                let v = codes16[k].to_f32() * e8m0_to_f32(e);
                assert_eq!(v.to_bits(), f[k].to_bits(), "f16 codes e={e} k={k}");
                assert_eq!(codesb[k].to_f32(), codes16[k].to_f32());
                assert_eq!(
                    e4m3_value(fp8[k]) * e8m0_to_f32(e),
                    f[k],
                    "e4m3 e={e} k={k}"
                );
            }
            if (104..=140).contains(&e) {
                let h = block_to_f16(&block);
                for k in 0..32 {
                    assert_eq!(h[k].to_f32(), f[k], "f16 e={e} k={k}");
                }
            }
        }
    }
}
