//! AVX2 and AVX-512 (VL + BW + VNNI) kernels. Each computes the exact integer sum of every block
//! pair with SIMD and then performs the same float operations, in the same order, as the scalar
//! kernel in `scalar.rs`, so the results are identical bit for bit.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::scalar::{MXFP4_LANE, mxfp4_q8_0_block, q8_0_q8_0_block, reduce8};
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

#[inline]
#[target_feature(enable = "avx")]
fn finish(acc: __m256, tail: impl Fn(&mut [f32; 8])) -> f32 {
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` is 8 f32 on the stack.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    tail(&mut lanes);
    reduce8(lanes)
}

/// Loads two 16-byte pieces into the low and high halves of a 256-bit vector (the high half
/// goes in with a memory-operand insert, which needs no shuffle port).
#[inline]
#[target_feature(enable = "avx2")]
fn load2x128(lo: &[u8], hi: &[u8]) -> __m256i {
    let (lo, hi) = (&lo[..16], &hi[..16]);
    // SAFETY: both slices are exactly 16 readable bytes; the loads are unaligned.
    unsafe { _mm256_loadu2_m128i(hi.as_ptr().cast(), lo.as_ptr().cast()) }
}

/// Integer dot products of 8 MXFP4 blocks with 8 Q8_0 blocks. Blocks go in pairs, one per
/// 128-bit half, so no cross-lane shuffles are needed; the result holds blocks 0, 2, 4, 6 in
/// lanes 0..4 and 1, 3, 5, 7 in lanes 4..8 ([`MXFP4_LANE`]). `dot` multiplies u8 x i8 and sums
/// groups of four into i32 lanes.
// One body for both instruction sets: the closures carry the instructions that differ.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mxfp4_group_sums<const WB: usize>(
    wg: &[u8],
    ag: &[u8],
    dot: impl Fn(__m256i, __m256i) -> __m256i,
    nibbles: impl Fn(__m256i) -> (__m256i, __m256i),
    sign: impl Fn(__m256i, __m256i) -> __m256i,
    abs: impl Fn(__m256i) -> __m256i,
    add: impl Fn(__m256i, __m256i) -> __m256i,
    hadd: impl Fn(__m256i, __m256i) -> __m256i,
    load2: impl Fn(&[u8], &[u8]) -> __m256i,
) -> __m256i {
    let mut p = [None; 4];
    for (j, pj) in p.iter_mut().enumerate() {
        // WB-byte weight blocks (17 for MXFP4, 18 for Q4_0/IQ4_NL): scale first, 16 code bytes last.
        let (w0, w1) = (
            &wg[2 * WB * j..2 * WB * j + WB],
            &wg[2 * WB * j + WB..2 * WB * j + 2 * WB],
        );
        let (a0, a1) = (&ag[68 * j..68 * j + 34], &ag[68 * j + 34..68 * j + 68]);
        let (lo, hi) = nibbles(load2(&w0[WB - 16..WB], &w1[WB - 16..WB]));
        let al = load2(&a0[2..18], &a1[2..18]);
        let ah = load2(&a0[18..34], &a1[18..34]);
        *pj = Some(add(dot(abs(al), sign(lo, al)), dot(abs(ah), sign(hi, ah))));
    }
    let [p0, p1, p2, p3] = p.map(|v| v.expect("set above"));
    hadd(hadd(p0, p1), hadd(p2, p3))
}

/// The 8 weight scales of a group in [`MXFP4_LANE`] order.
#[inline(always)]
fn mxfp4_scales(wg: &[u8]) -> [f32; 8] {
    let mut d = [0.0f32; 8];
    for (b, &lane) in MXFP4_LANE.iter().enumerate() {
        d[lane] = E8M0_HALF[wg[17 * b] as usize];
    }
    d
}

/// The 8 activation f16 scales of a group in [`MXFP4_LANE`] order, times `dw`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn mxfp4_act_scales(dw: __m256, a: &[u8]) -> __m256 {
    let h = |k: usize| rd_u16(a, k * 34) as i16;
    let da = _mm_set_epi16(h(7), h(5), h(3), h(1), h(6), h(4), h(2), h(0));
    _mm256_mul_ps(dw, _mm256_cvtph_ps(da))
}

#[inline]
#[target_feature(enable = "avx2")]
fn mxfp4_nibbles(table: __m256i, m4: __m256i, q: __m256i) -> (__m256i, __m256i) {
    let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, m4));
    let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
    (lo, hi)
}

/// MXFP4 x Q8_0 with AVX2. The activation is made unsigned (|a|, exact even for -128 read as
/// 128) and its sign moved onto the weight, which cannot overflow since |w| <= 12.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn mxfp4_q8_0_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let t = load128(&E2M1_DOUBLED_I8.map(|v| v as u8));
    let table = _mm256_broadcastsi128_si256(t);
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let groups = nb / 8;
    for (wg, ag) in w
        .chunks_exact(8 * 17)
        .zip(a.chunks_exact(8 * 34))
        .take(groups)
    {
        // The closures inherit this function's target features.
        let sums = mxfp4_group_sums::<17>(
            wg,
            ag,
            |u, s| _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones),
            |q| mxfp4_nibbles(table, m4, q),
            |w, a| _mm256_sign_epi8(w, a),
            |a| _mm256_abs_epi8(a),
            |x, y| _mm256_add_epi32(x, y),
            |x, y| _mm256_hadd_epi32(x, y),
            |l, h| load2x128(l, h),
        );
        let d = mxfp4_act_scales(set8(mxfp4_scales(wg)), ag);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(sums)));
    }
    finish(acc, |lanes| {
        for b in groups * 8..nb {
            lanes[MXFP4_LANE[b % 8]] +=
                mxfp4_q8_0_block(&w[b * 17..b * 17 + 17], &a[b * 34..b * 34 + 34]);
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

/// MXFP4 x Q8_0 with AVX-512 VNNI on 256-bit vectors (`vpdpbusd` fuses the u8 x i8 multiply
/// and the i32 accumulation, with no i16 intermediate to saturate).
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn mxfp4_q8_0_avx512(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let t = load128(&E2M1_DOUBLED_I8.map(|v| v as u8));
    let table = _mm256_broadcastsi128_si256(t);
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let groups = nb / 8;
    for (wg, ag) in w
        .chunks_exact(8 * 17)
        .zip(a.chunks_exact(8 * 34))
        .take(groups)
    {
        // The closures inherit this function's target features.
        let sums = mxfp4_group_sums::<17>(
            wg,
            ag,
            |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
            |q| mxfp4_nibbles(table, m4, q),
            |w, a| _mm256_sign_epi8(w, a),
            |a| _mm256_abs_epi8(a),
            |x, y| _mm256_add_epi32(x, y),
            |x, y| _mm256_hadd_epi32(x, y),
            |l, h| load2x128(l, h),
        );
        let d = mxfp4_act_scales(set8(mxfp4_scales(wg)), ag);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(sums)));
    }
    finish(acc, |lanes| {
        for b in groups * 8..nb {
            lanes[MXFP4_LANE[b % 8]] +=
                mxfp4_q8_0_block(&w[b * 17..b * 17 + 17], &a[b * 34..b * 34 + 34]);
        }
    })
}

/// Q8_0 x Q8_0 with AVX-512 VNNI, exact for every byte: the weights are made unsigned by
/// flipping the top bit (w + 128), `vpdpbusd` sums (w + 128) * a in groups of four, and a second
/// `vpdpbusd` takes 128 * a back off. No widening shuffles.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn q8_0_q8_0_avx512(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let bias = _mm256_set1_epi8(-128);
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
            let wv = _mm256_xor_si256(load256(&wb[2..34]), bias);
            let av = load256(&ab[2..34]);
            let zero = _mm256_setzero_si256();
            p[k] = _mm256_sub_epi32(
                _mm256_dpbusd_epi32(zero, wv, av),
                _mm256_dpbusd_epi32(zero, bias, av),
            );
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

/// F16 rows to f32 with F16C (exact conversion, 8 values per instruction).
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn f16_dequant_f16c(src: &[u8], dst: &mut [f32]) {
    let mut chunks = src.chunks_exact(16).zip(dst.chunks_exact_mut(8));
    for (b, y) in &mut chunks {
        let v = _mm256_cvtph_ps(load128(b));
        // SAFETY: `y` is exactly 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) };
    }
    let done = src.len() / 16 * 8;
    for (y, b) in dst[done..].iter_mut().zip(src[done * 2..].chunks_exact(2)) {
        *y = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// Q4_0 or IQ4_NL (18-byte blocks: f16 scale, 16 code bytes) x Q8_0 with AVX2: the MXFP4 kernel
/// with the type's 16-entry level table (|level| <= 127, so moving the activation's sign onto
/// it cannot overflow) and an f16 weight scale.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn nib4_q8_0_avx2(table: &[i8; 16], w: &[u8], a: &[u8], nb: usize) -> f32 {
    let t = load128(&table.map(|v| v as u8));
    let table_v = _mm256_broadcastsi128_si256(t);
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let groups = nb / 8;
    for (wg, ag) in w
        .chunks_exact(8 * 18)
        .zip(a.chunks_exact(8 * 34))
        .take(groups)
    {
        // The closures inherit this function's target features.
        let sums = mxfp4_group_sums::<18>(
            wg,
            ag,
            |u, s| _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones),
            |q| mxfp4_nibbles(table_v, m4, q),
            |w, a| _mm256_sign_epi8(w, a),
            |a| _mm256_abs_epi8(a),
            |x, y| _mm256_add_epi32(x, y),
            |x, y| _mm256_hadd_epi32(x, y),
            |l, h| load2x128(l, h),
        );
        let mut dw = [0.0f32; 8];
        for (b, &lane) in MXFP4_LANE.iter().enumerate() {
            dw[lane] = half::f16::from_bits(rd_u16(wg, 18 * b)).to_f32();
        }
        let d = mxfp4_act_scales(set8(dw), ag);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(sums)));
    }
    finish(acc, |lanes| {
        for b in groups * 8..nb {
            lanes[MXFP4_LANE[b % 8]] += super::scalar::nib4_q8_0_block(
                table,
                &w[b * 18..b * 18 + 18],
                &a[b * 34..b * 34 + 34],
            );
        }
    })
}
