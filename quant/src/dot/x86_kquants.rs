//! Q4_K x Q8_K and Q6_K x Q8_K with hand-written AVX2 (ggml's shape: `pmaddubsw` of the unsigned
//! weight codes with the signed activations, then `pmaddwd` by the sub-block scales). The integer
//! sums of a super-block are exact, and the float work per super-block is the scalar kernels'
//! (`kquants.rs`), so the results are the same bit for bit.

use std::arch::x86_64::*;

use crate::util::{rd_f16, rd_u16, rd_u32};

#[inline]
#[target_feature(enable = "avx")]
fn load256(s: &[u8]) -> __m256i {
    let s = &s[..32];
    // SAFETY: `s` is exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> i32 {
    let q = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0b01_00_11_10));
    let q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0b10_11_00_01));
    _mm_cvtsi128_si32(q)
}

#[inline(always)]
fn q8k_d(a: &[u8]) -> f32 {
    f32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

/// The 16 i16 block sums of a Q8_K super-block.
#[inline]
#[target_feature(enable = "avx")]
fn bsums(ab: &[u8]) -> __m256i {
    load256(&ab[260..292])
}

/// Loads 16 bytes.
#[inline]
#[target_feature(enable = "sse2")]
fn load128(s: &[u8]) -> __m128i {
    let s = &s[..16];
    // SAFETY: `s` is exactly 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// A Q4_K block's 12 scale bytes (`wb[4..16]`) as 8 six-bit scales (bytes 0..8) and 8 mins
/// (bytes 8..16): ggml's word-parallel form of `scale_min_k4`, in one vector (words u0, u1, u2
/// of the scale bytes; results r0 = u0 & K1, r1 = (u2 & K2) | ((u0 >> 6) & K3) << 4,
/// r2 = u1 & K1, r3 = ((u2 >> 4) & K2) | ((u1 >> 6) & K3) << 4). In registers, not through a
/// stack array, whose 16-byte reload of four 4-byte stores would stall store forwarding.
#[inline]
#[target_feature(enable = "avx2")]
fn scales_mins_k4(wb: &[u8]) -> __m128i {
    const K1: i32 = 0x3f3f_3f3f;
    const K2: i32 = 0x0f0f_0f0f;
    const K3: i32 = 0x0303_0303;
    // Bytes 4..20: the scale words u0, u1, u2 and 4 code bytes (unused).
    let v = load128(&wb[4..20]);
    let a = _mm_shuffle_epi32(v, 0b10_01_10_00); // [u0, u2, u1, u2]
    let b = _mm_shuffle_epi32(v, 0b01_01_00_00); // [u0, u0, u1, u1]
    let lo = _mm_and_si128(
        _mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0)),
        _mm_set_epi32(K2, K1, K2, K1),
    );
    let hi = _mm_slli_epi32(
        _mm_and_si128(_mm_srli_epi32(b, 6), _mm_set_epi32(K3, 0, K3, 0)),
        4,
    );
    _mm_or_si128(lo, hi)
}

/// One Q4_K x Q8_K super-block: the i32 lanes whose total is `sum_j sc_j * dot(q, a)` and
/// those whose total is `sum_j m_j * (bsum_2j + bsum_2j+1)`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q4_k_sums(wb: &[u8], ab: &[u8], bcast: &[__m256i; 8]) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0f);
    let sm = scales_mins_k4(wb);
    // i16: scales 0..8 in the low half, mins 0..8 in the high half.
    let sm16 = _mm256_cvtepu8_epi16(sm);
    let sc = _mm256_permute2x128_si256(sm16, sm16, 0x00);
    let mins = _mm256_extracti128_si256(sm16, 1);
    let aq = &ab[4..260];
    let mut sumv = _mm256_setzero_si256();
    for j in 0..4 {
        let q = load256(&wb[16 + 32 * j..48 + 32 * j]);
        let lo = _mm256_and_si256(q, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        // |pair sum| <= 2 * 15 * 128: no saturation; times a 6-bit scale fits i32.
        let pl = _mm256_maddubs_epi16(lo, load256(&aq[64 * j..64 * j + 32]));
        let ph = _mm256_maddubs_epi16(hi, load256(&aq[64 * j + 32..64 * j + 64]));
        let pl = _mm256_madd_epi16(pl, _mm256_shuffle_epi8(sc, bcast[2 * j]));
        let ph = _mm256_madd_epi16(ph, _mm256_shuffle_epi8(sc, bcast[2 * j + 1]));
        sumv = _mm256_add_epi32(sumv, _mm256_add_epi32(pl, ph));
    }
    // sum_j m_j * (bsum_2j + bsum_2j+1), i16 x i16 into i32 with each min doubled up: exact
    // for any block sums.
    let md = _mm256_set_m128i(
        _mm_unpackhi_epi16(mins, mins),
        _mm_unpacklo_epi16(mins, mins),
    );
    (sumv, _mm256_madd_epi16(bsums(ab), md))
}

/// Totals of four i32x8 vectors, as i32x4 `[sum a, sum b, sum c, sum d]` (wrapping, like the
/// scalar kernels' i32 sums in a release build; exact for every real block).
#[inline]
#[target_feature(enable = "avx2")]
fn hsum4_epi32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
}

/// Q4_K x Q8_K: per 32-value sub-block j, `sc_j * dot(q, a)` summed exactly, and
/// `m_j * (bsum_2j + bsum_2j+1)` likewise. Super-blocks go in pairs, so that one horizontal
/// reduction and one set of float multiplies (4 lanes: d and dmin of each) serve both; the float
/// operations per super-block and their order are the scalar kernel's
/// (`acc += d * sumi - dmin * summ`, super-block by super-block).
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q4_k_q8_k_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    // Byte pairs (2k, 2k + 1) everywhere: broadcast i16 element k of a 128-bit half.
    let bcast: [__m256i; 8] =
        std::array::from_fn(|k| _mm256_set1_epi16((0x0100 + 0x0202 * k) as i16));
    let mut acc = 0.0f32;
    let pairs = nb / 2;
    for (wp, ap) in w
        .chunks_exact(2 * 144)
        .zip(a.chunks_exact(2 * 292))
        .take(pairs)
    {
        let (w0, w1) = (&wp[..144], &wp[144..]);
        let (a0, a1) = (&ap[..292], &ap[292..]);
        let (s0, m0) = q4_k_sums(w0, a0, &bcast);
        let (s1, m1) = q4_k_sums(w1, a1, &bcast);
        // [sumi0, summ0, sumi1, summ1]
        let sums = _mm_cvtepi32_ps(hsum4_epi32(s0, m0, s1, m1));
        // [d0, dmin0, d1, dmin1] as f16 (the first 4 bytes of each block), converted exactly.
        let dh = _mm_cvtph_ps(_mm_set_epi32(
            0,
            0,
            rd_u32(w1, 0) as i32,
            rd_u32(w0, 0) as i32,
        ));
        let (dy0, dy1) = (q8k_d(a0), q8k_d(a1));
        let dd = _mm_mul_ps(dh, _mm_set_ps(dy1, dy1, dy0, dy0));
        // [d0 * sumi0 - dmin0 * summ0, d1 * sumi1 - dmin1 * summ1, ..]
        let t = _mm_hsub_ps(_mm_mul_ps(dd, sums), _mm_setzero_ps());
        acc += _mm_cvtss_f32(t);
        acc += _mm_cvtss_f32(_mm_movehdup_ps(t));
    }
    if nb % 2 == 1 {
        let (wb, ab) = (&w[144 * (nb - 1)..144 * nb], &a[292 * (nb - 1)..292 * nb]);
        let (s, m) = q4_k_sums(wb, ab, &bcast);
        let (sumi, summ) = (hsum_epi32(s), hsum_epi32(m));
        let dy = q8k_d(ab);
        let d = rd_f16(wb, 0) * dy;
        let dmin = rd_f16(wb, 2) * dy;
        acc += d * sumi as f32 - dmin * summ as f32;
    }
    acc
}

/// One Q6_K x Q8_K super-block: i32 lanes whose total is `sum_s sc_s * dot(q - 32, a)`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q6_k_sums(wb: &[u8], ab: &[u8], bcast: &[__m256i; 8]) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let m32 = _mm256_set1_epi8(32);
    let aq = &ab[4..260];
    // The 16 i8 scales widened to i16 once, the even ones in the low 128-bit half and the odd
    // ones in the high half, so that one in-lane shuffle gives scale s (s even) in the low half
    // and s + 1 in the high half.
    let even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(load128(&wb[192..208]), even_odd));
    let scale = |s: usize| _mm256_shuffle_epi8(sc, bcast[s / 2]);
    let mut sumv = _mm256_setzero_si256();
    for n in 0..2 {
        let ql0 = load256(&wb[64 * n..64 * n + 32]);
        let ql1 = load256(&wb[64 * n + 32..64 * n + 64]);
        let qh = load256(&wb[128 + 32 * n..160 + 32 * n]);
        // Bits 2k, 2k + 1 of qh moved to bits 4, 5 of each byte (16-bit shifts: the mask drops
        // what crosses from the neighbouring byte).
        let hbits = |k: i32| -> __m256i {
            let h = match k {
                0 => _mm256_slli_epi16(qh, 4),
                1 => _mm256_slli_epi16(qh, 2),
                2 => qh,
                _ => _mm256_srli_epi16(qh, 2),
            };
            _mm256_and_si256(h, m30)
        };
        let q = [
            _mm256_or_si256(_mm256_and_si256(ql0, m4), hbits(0)),
            _mm256_or_si256(_mm256_and_si256(ql1, m4), hbits(1)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hbits(2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hbits(3)),
        ];
        for (i, qi) in q.into_iter().enumerate() {
            let o = 128 * n + 32 * i;
            // |pair sums| <= 2 * 63 * 128 = 16128 and 2 * 32 * 128: no saturation, and
            // their difference fits i16 too.
            let av = load256(&aq[o..o + 32]);
            let p = _mm256_sub_epi16(_mm256_maddubs_epi16(qi, av), _mm256_maddubs_epi16(m32, av));
            sumv = _mm256_add_epi32(sumv, _mm256_madd_epi16(p, scale(o / 16)));
        }
    }
    sumv
}

/// Q6_K x Q8_K: the 6-bit codes as unsigned 0..63, `pmaddubsw` with the activations minus
/// `pmaddubsw` of 32 with them (the code offset, taken from the codes themselves rather than the
/// Q8_K block sums, as the scalar kernel does), `pmaddwd` by the 16-value sub-block scales; all
/// exact. Super-blocks go in pairs (one horizontal reduction and one set of float multiplies
/// for both); each super-block's `acc += d * sumi` is the scalar kernel's, in its order.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q6_k_q8_k_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    // Byte pairs (2k, 2k + 1) everywhere: broadcast i16 element k of a 128-bit half.
    let bcast: [__m256i; 8] =
        std::array::from_fn(|k| _mm256_set1_epi16((0x0100 + 0x0202 * k) as i16));
    let mut acc = 0.0f32;
    let pairs = nb / 2;
    for (wp, ap) in w
        .chunks_exact(2 * 210)
        .zip(a.chunks_exact(2 * 292))
        .take(pairs)
    {
        let (w0, w1) = (&wp[..210], &wp[210..]);
        let (a0, a1) = (&ap[..292], &ap[292..]);
        let s0 = q6_k_sums(w0, a0, &bcast);
        let s1 = q6_k_sums(w1, a1, &bcast);
        let z = _mm256_setzero_si256();
        // [sumi0, sumi1, 0, 0]
        let sums = _mm_cvtepi32_ps(hsum4_epi32(s0, s1, z, z));
        let dh = _mm_cvtph_ps(_mm_set_epi16(
            0,
            0,
            0,
            0,
            0,
            0,
            rd_u16(w1, 208) as i16,
            rd_u16(w0, 208) as i16,
        ));
        let d = _mm_mul_ps(dh, _mm_set_ps(0.0, 0.0, q8k_d(a1), q8k_d(a0)));
        let t = _mm_mul_ps(d, sums);
        acc += _mm_cvtss_f32(t);
        acc += _mm_cvtss_f32(_mm_movehdup_ps(t));
    }
    if nb % 2 == 1 {
        let (wb, ab) = (&w[210 * (nb - 1)..210 * nb], &a[292 * (nb - 1)..292 * nb]);
        let sumi = hsum_epi32(q6_k_sums(wb, ab, &bcast));
        let d = rd_f16(wb, 208) * q8k_d(ab);
        acc += d * sumi as f32;
    }
    acc
}
