//! AVX2 and AVX-512 (VL + BW + VNNI) kernels. Each computes the exact integer sum of every block
//! pair with SIMD and then performs the same float operations, in the same order, as the scalar
//! kernel in `scalar.rs`, so the results are identical bit for bit.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::scalar::{mxfp4_q8_0_block, q8_0_q8_0_block, reduce8};
use crate::mxfp4::{E2M1_DOUBLED_I8, E8M0_HALF, e8m0_to_f32_half};
use crate::util::rd_u16;

/// Loads 16 bytes.
#[inline(always)]
fn load128(s: &[u8]) -> __m128i {
    let s = &s[..16];
    // SAFETY: `s` is exactly 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// Loads 32 bytes.
#[inline]
#[target_feature(enable = "avx")]
fn load256(s: &[u8]) -> __m256i {
    let s = &s[..32];
    // SAFETY: `s` is exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Horizontal sums of eight i32x8 vectors: lane k of the result is the sum of `p[k]`.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum8_epi32(p: [__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(p[0], p[1]);
    let h23 = _mm256_hadd_epi32(p[2], p[3]);
    let h45 = _mm256_hadd_epi32(p[4], p[5]);
    let h67 = _mm256_hadd_epi32(p[6], p[7]);
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    let lo = _mm256_permute2x128_si256(h0123, h4567, 0x20);
    let hi = _mm256_permute2x128_si256(h0123, h4567, 0x31);
    _mm256_add_epi32(lo, hi)
}

/// Per-block products of scales for 8 blocks: the weight scales `dw` times the f16 scales at
/// the start of each 34-byte Q8_0 activation block in `a`. Built with `set` intrinsics rather
/// than through a stack array, which would stall on store-to-load forwarding.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scales8(dw: __m256, a: &[u8]) -> __m256 {
    let h = |k: usize| rd_u16(a, k * 34) as i16;
    let da = _mm_set_epi16(h(7), h(6), h(5), h(4), h(3), h(2), h(1), h(0));
    _mm256_mul_ps(dw, _mm256_cvtph_ps(da))
}

/// The eight weight scales of a group as a vector.
#[inline]
#[target_feature(enable = "avx")]
fn set8(d: [f32; 8]) -> __m256 {
    _mm256_set_ps(d[7], d[6], d[5], d[4], d[3], d[2], d[1], d[0])
}

/// MXFP4 codes of one block as 32 int8 doubled E2M1 values, in element order.
#[inline]
#[target_feature(enable = "avx2")]
fn mxfp4_codes(table: __m128i, m4: __m128i, qs: &[u8]) -> __m256i {
    let q = load128(qs);
    let lo = _mm_and_si128(q, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
    _mm256_set_m128i(_mm_shuffle_epi8(table, hi), _mm_shuffle_epi8(table, lo))
}

#[inline]
#[target_feature(enable = "avx")]
fn finish(acc: __m256, tail: impl Fn(&mut [f32; 8])) -> f32 {
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` is 8 f32 on the stack.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    tail(&mut lanes);
    reduce8(lanes)
}

/// MXFP4 x Q8_0 with AVX2. The activation is made unsigned (|a|, which is exact even for -128
/// read as 128) and its sign moved onto the weight, which never overflows since |w| <= 12.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn mxfp4_q8_0_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let table = load128(&E2M1_DOUBLED_I8.map(|v| v as u8));
    let m4 = _mm_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let groups = nb / 8;
    for (wg, ag) in w
        .chunks_exact(8 * 17)
        .zip(a.chunks_exact(8 * 34))
        .take(groups)
    {
        let mut p = [_mm256_setzero_si256(); 8];
        let mut dw = [0.0f32; 8];
        for k in 0..8 {
            let wb = &wg[k * 17..k * 17 + 17];
            let wv = mxfp4_codes(table, m4, &wb[1..17]);
            let av = load256(&ag[k * 34 + 2..k * 34 + 34]);
            let prod = _mm256_maddubs_epi16(_mm256_abs_epi8(av), _mm256_sign_epi8(wv, av));
            p[k] = _mm256_madd_epi16(prod, ones);
            dw[k] = E8M0_HALF[wb[0] as usize];
        }
        let sums = _mm256_cvtepi32_ps(hsum8_epi32(p));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(scales8(set8(dw), ag), sums));
    }
    finish(acc, |lanes| {
        for b in groups * 8..nb {
            lanes[b % 8] += mxfp4_q8_0_block(&w[b * 17..b * 17 + 17], &a[b * 34..b * 34 + 34]);
        }
    })
}

/// Q8_0 x Q8_0 with AVX2: both sides widened to i16 so every byte value, -128 included, is exact.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q8_0_q8_0_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let groups = nb / 8;
    for (wg, ag) in w
        .chunks_exact(8 * 34)
        .zip(a.chunks_exact(8 * 34))
        .take(groups)
    {
        let mut p = [_mm256_setzero_si256(); 8];
        let mut dw = [0.0f32; 8];
        for k in 0..8 {
            let wb = &wg[k * 34..k * 34 + 34];
            let ab = &ag[k * 34..k * 34 + 34];
            let w0 = _mm256_cvtepi8_epi16(load128(&wb[2..18]));
            let w1 = _mm256_cvtepi8_epi16(load128(&wb[18..34]));
            let a0 = _mm256_cvtepi8_epi16(load128(&ab[2..18]));
            let a1 = _mm256_cvtepi8_epi16(load128(&ab[18..34]));
            p[k] = _mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1));
            dw[k] = half::f16::from_bits(rd_u16(wb, 0)).to_f32();
        }
        let sums = _mm256_cvtepi32_ps(hsum8_epi32(p));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(scales8(set8(dw), ag), sums));
    }
    finish(acc, |lanes| {
        for b in groups * 8..nb {
            lanes[b % 8] += q8_0_q8_0_block(&w[b * 34..b * 34 + 34], &a[b * 34..b * 34 + 34]);
        }
    })
}

/// MXFP4 x Q8_0 with AVX-512 VNNI on 256-bit vectors (`vpdpbusd` fuses the u8 x i8 multiply and
/// the i32 accumulation, with no i16 intermediate to saturate).
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn mxfp4_q8_0_avx512(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let table = load128(&E2M1_DOUBLED_I8.map(|v| v as u8));
    let m4 = _mm_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let groups = nb / 8;
    for (wg, ag) in w
        .chunks_exact(8 * 17)
        .zip(a.chunks_exact(8 * 34))
        .take(groups)
    {
        let mut p = [_mm256_setzero_si256(); 8];
        let mut dw = [0.0f32; 8];
        for k in 0..8 {
            let wb = &wg[k * 17..k * 17 + 17];
            let wv = mxfp4_codes(table, m4, &wb[1..17]);
            let av = load256(&ag[k * 34 + 2..k * 34 + 34]);
            p[k] = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_abs_epi8(av),
                _mm256_sign_epi8(wv, av),
            );
            dw[k] = E8M0_HALF[wb[0] as usize];
        }
        let sums = _mm256_cvtepi32_ps(hsum8_epi32(p));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(scales8(set8(dw), ag), sums));
    }
    finish(acc, |lanes| {
        for b in groups * 8..nb {
            lanes[b % 8] += mxfp4_q8_0_block(&w[b * 17..b * 17 + 17], &a[b * 34..b * 34 + 34]);
        }
    })
}

/// Q8_0 x Q8_0 with AVX-512: one 512-bit widening per side and `vpdpwssd`.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn q8_0_q8_0_avx512(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let groups = nb / 8;
    for (wg, ag) in w
        .chunks_exact(8 * 34)
        .zip(a.chunks_exact(8 * 34))
        .take(groups)
    {
        let mut p = [_mm256_setzero_si256(); 8];
        let mut dw = [0.0f32; 8];
        for k in 0..8 {
            let wb = &wg[k * 34..k * 34 + 34];
            let ab = &ag[k * 34..k * 34 + 34];
            let w16 = _mm512_cvtepi8_epi16(load256(&wb[2..34]));
            let a16 = _mm512_cvtepi8_epi16(load256(&ab[2..34]));
            let s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w16, a16);
            p[k] = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
            dw[k] = half::f16::from_bits(rd_u16(wb, 0)).to_f32();
        }
        let sums = _mm256_cvtepi32_ps(hsum8_epi32(p));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(scales8(set8(dw), ag), sums));
    }
    finish(acc, |lanes| {
        for b in groups * 8..nb {
            lanes[b % 8] += q8_0_q8_0_block(&w[b * 34..b * 34 + 34], &a[b * 34..b * 34 + 34]);
        }
    })
}

/// MXFP4 rows to f32 with AVX2: the doubled int8 codes are widened to f32 and multiplied by the
/// block's half scale, the same single rounding as the scalar `E2M1_DOUBLED_I8[c] as f32 * d`.
#[target_feature(enable = "avx2")]
pub(crate) fn mxfp4_dequant_avx2(src: &[u8], dst: &mut [f32]) {
    let table = load128(&E2M1_DOUBLED_I8.map(|v| v as u8));
    let m4 = _mm_set1_epi8(0x0f);
    for (b, y) in src.chunks_exact(17).zip(dst.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(e8m0_to_f32_half(b[0]));
        let q = load128(&b[1..17]);
        let lo = _mm_shuffle_epi8(table, _mm_and_si128(q, m4));
        let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
        let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
        for (k, p) in parts.into_iter().enumerate() {
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p)), d);
            let out = &mut y[8 * k..8 * k + 8];
            // SAFETY: `out` is exactly 8 writable f32; the store is unaligned.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        }
    }
}

/// Q8_0 rows to f32 with AVX2 (int8 widened to f32 times the f16 scale: the scalar operation).
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q8_0_dequant_avx2(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(half::f16::from_bits(rd_u16(b, 0)).to_f32());
        let lo = load128(&b[2..18]);
        let hi = load128(&b[18..34]);
        let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
        for (k, p) in parts.into_iter().enumerate() {
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p)), d);
            let out = &mut y[8 * k..8 * k + 8];
            // SAFETY: `out` is exactly 8 writable f32; the store is unaligned.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        }
    }
}
