//! Q4_K x Q8_K and Q6_K x Q8_K with hand-written AVX2 (ggml's shape: `pmaddubsw` of the unsigned
//! weight codes with the signed activations, then `pmaddwd` by the sub-block scales). The integer
//! sums of a super-block are exact, and the float work per super-block is the scalar kernels'
//! (`kquants.rs`), so the results are the same bit for bit.

use std::arch::x86_64::*;

use crate::util::rd_f16;

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

/// Q4_K's 12 scale bytes as 8 six-bit scales (bytes 0..8) and 8 mins (bytes 8..16), ggml's
/// word-parallel form of `scale_min_k4`.
#[inline(always)]
fn scales_mins_k4(q: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (w(0), w(1), w(2));
    [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ]
}

/// Q4_K x Q8_K: per 32-value sub-block j, `sc_j * dot(q, a)` summed exactly, and
/// `m_j * (bsum_2j + bsum_2j+1)` likewise.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q4_k_q8_k_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    // Byte pairs (2k, 2k + 1) everywhere: broadcast i16 element k of a 128-bit half.
    let bcast: [__m256i; 8] =
        std::array::from_fn(|k| _mm256_set1_epi16((0x0100 + 0x0202 * k) as i16));
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(nb) {
        let sm = scales_mins_k4(&wb[4..16]);
        // SAFETY: `sm` is 16 readable bytes; the load is unaligned.
        let sm = unsafe { _mm_loadu_si128(sm.as_ptr().cast()) };
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
        let sumi = hsum_epi32(sumv);
        // sum_j m_j * (bsum_2j + bsum_2j+1), i16 x i16 into i32 with each min doubled up: exact
        // for any block sums.
        let md = _mm256_set_m128i(
            _mm_unpackhi_epi16(mins, mins),
            _mm_unpacklo_epi16(mins, mins),
        );
        let summ = hsum_epi32(_mm256_madd_epi16(bsums(ab), md));
        let dy = q8k_d(ab);
        let d = rd_f16(wb, 0) * dy;
        let dmin = rd_f16(wb, 2) * dy;
        acc += d * sumi as f32 - dmin * summ as f32;
    }
    acc
}

/// Q6_K x Q8_K: the 6-bit codes as unsigned 0..63, `pmaddubsw` with the activations minus
/// `pmaddubsw` of 32 with them (the code offset, taken from the codes themselves rather than the
/// Q8_K block sums, as the scalar kernel does), `pmaddwd` by the 16-value sub-block scales; all
/// exact.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q6_k_q8_k_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let m3 = _mm256_set1_epi8(3);
    let m32 = _mm256_set1_epi8(32);
    let pick: [__m128i; 8] = std::array::from_fn(|k| {
        _mm_set_epi64x(
            (0x0101_0101_0101_0101u64 * (2 * k as u64 + 1)) as i64,
            (0x0101_0101_0101_0101u64 * (2 * k as u64)) as i64,
        )
    });
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(nb) {
        let aq = &ab[4..260];
        let sc = &wb[192..208];
        // SAFETY: `sc` is exactly 16 readable bytes; the load is unaligned.
        let sc = unsafe { _mm_loadu_si128(sc.as_ptr().cast()) };
        // i16 scales s (low half) and s + 1 (high half): 8 copies of byte s, then of byte s + 1,
        // widened with sign.
        let scale = |s: usize| _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, pick[s / 2]));
        let mut sumv = _mm256_setzero_si256();
        for n in 0..2 {
            let ql0 = load256(&wb[64 * n..64 * n + 32]);
            let ql1 = load256(&wb[64 * n + 32..64 * n + 64]);
            let qh = load256(&wb[128 + 32 * n..160 + 32 * n]);
            let hbits = |shift: i32| -> __m256i {
                let h = match shift {
                    0 => qh,
                    2 => _mm256_srli_epi16(qh, 2),
                    4 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(h, m3), 4)
            };
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), hbits(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), hbits(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hbits(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hbits(6)),
            ];
            for (i, qi) in q.into_iter().enumerate() {
                let o = 128 * n + 32 * i;
                // |pair sums| <= 2 * 63 * 128 = 16128 and 2 * 32 * 128: no saturation, and
                // their difference fits i16 too.
                let av = load256(&aq[o..o + 32]);
                let p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(qi, av), _mm256_maddubs_epi16(m32, av));
                sumv = _mm256_add_epi32(sumv, _mm256_madd_epi16(p, scale(o / 16)));
            }
        }
        let sumi = hsum_epi32(sumv);
        let d = rd_f16(wb, 208) * q8k_d(ab);
        acc += d * sumi as f32;
    }
    acc
}
