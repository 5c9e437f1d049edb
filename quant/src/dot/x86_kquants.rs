//! Q4_K x Q8_K and Q6_K x Q8_K with hand-written AVX2 (ggml's shape: `pmaddubsw` of the unsigned
//! weight codes with the signed activations, then `pmaddwd` by the sub-block scales). The integer
//! sums of a super-block are exact, and the float work per super-block is the scalar kernels'
//! (`kquants.rs`), so the results are the same bit for bit.

use std::arch::x86_64::*;

use crate::kquants::scale_min_k4;
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

/// Q4_K x Q8_K: per 32-value sub-block j, `sc_j * dot(q, a)` summed exactly, and
/// `m_j * (bsum_2j + bsum_2j+1)` likewise.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q4_k_q8_k_avx2(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(nb) {
        let mut sc = [0i16; 8];
        let mut mins = [0i16; 16];
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &wb[4..16]);
            sc[j] = s as i16;
            mins[2 * j] = m as i16;
            mins[2 * j + 1] = m as i16;
        }
        let aq = &ab[4..260];
        let mut sumv = _mm256_setzero_si256();
        for j in 0..4 {
            let q = load256(&wb[16 + 32 * j..48 + 32 * j]);
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            // |pair sum| <= 2 * 15 * 128: no saturation; times a 6-bit scale fits i32.
            let pl = _mm256_maddubs_epi16(lo, load256(&aq[64 * j..64 * j + 32]));
            let ph = _mm256_maddubs_epi16(hi, load256(&aq[64 * j + 32..64 * j + 64]));
            let pl = _mm256_madd_epi16(pl, _mm256_set1_epi16(sc[2 * j]));
            let ph = _mm256_madd_epi16(ph, _mm256_set1_epi16(sc[2 * j + 1]));
            sumv = _mm256_add_epi32(sumv, _mm256_add_epi32(pl, ph));
        }
        let sumi = hsum_epi32(sumv);
        // SAFETY: `mins` is 16 readable i16; the load is unaligned.
        let mv = unsafe { _mm256_loadu_si256(mins.as_ptr().cast()) };
        let summ = hsum_epi32(_mm256_madd_epi16(bsums(ab), mv));
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
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(nb) {
        let aq = &ab[4..260];
        let sc = &wb[192..208];
        let scale = |s: usize| {
            _mm256_set_m128i(
                _mm_set1_epi16(sc[s + 1] as i8 as i16),
                _mm_set1_epi16(sc[s] as i8 as i16),
            )
        };
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
