//! Q4_K x Q8_K and Q6_K x Q8_K. The weight codes of a super-block are unpacked into an i8
//! array, and the integer sums (per 32- or 16-element sub-block, times the sub-block scale) are
//! computed exactly; the float work per super-block is the same few operations in every
//! dispatch. These portable bodies are the scalar dispatch; on x86-64 the AVX2 and AVX-512
//! dispatches run the hand-written kernels of `x86_kquants.rs`, on aarch64 the NEON ones of
//! `neon.rs`; all give the same results.

use super::Dispatch;
use crate::kquants::scale_min_k4;
use crate::util::rd_f16;

#[inline(always)]
fn q8k_d(a: &[u8]) -> f32 {
    f32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

#[inline(always)]
fn q8k_bsum(a: &[u8], i: usize) -> i32 {
    i16::from_le_bytes([a[260 + 2 * i], a[261 + 2 * i]]) as i32
}

/// Exact i8 x i8 dot product. Each product fits i16 (the weight codes are at most 6 bits), and
/// the i16-times-i16-summed-to-i32 shape is what LLVM turns into `pmaddwd`.
#[inline(always)]
fn dot_i8(x: &[i8], y: &[u8]) -> i32 {
    x.iter()
        .zip(y)
        .map(|(&p, &q)| (p as i16 as i32) * (q as i8 as i16 as i32))
        .sum()
}

#[inline(always)]
fn q4_k_body(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(nb) {
        let mut q = [0i8; 256];
        for j in 0..4 {
            let qs = &wb[16 + 32 * j..16 + 32 * j + 32];
            for l in 0..32 {
                q[64 * j + l] = (qs[l] & 0x0f) as i8;
                q[64 * j + 32 + l] = (qs[l] >> 4) as i8;
            }
        }
        let aq = &ab[4..260];
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &wb[4..16]);
            sumi += sc as i32 * dot_i8(&q[32 * j..32 * j + 32], &aq[32 * j..32 * j + 32]);
            summ += m as i32 * (q8k_bsum(ab, 2 * j) + q8k_bsum(ab, 2 * j + 1));
        }
        let dy = q8k_d(ab);
        let d = rd_f16(wb, 0) * dy;
        let dmin = rd_f16(wb, 2) * dy;
        acc += d * sumi as f32 - dmin * summ as f32;
    }
    acc
}

#[inline(always)]
fn q6_k_body(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(nb) {
        let mut q = [0i8; 256];
        for n in 0..2 {
            let ql = &wb[64 * n..64 * n + 64];
            let qh = &wb[128 + 32 * n..128 + 32 * n + 32];
            let o = 128 * n;
            for l in 0..32 {
                q[o + l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                q[o + l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                q[o + l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                q[o + l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        let aq = &ab[4..260];
        let sc = &wb[192..208];
        let mut sumi = 0i32;
        for s in 0..16 {
            sumi +=
                (sc[s] as i8) as i32 * dot_i8(&q[16 * s..16 * s + 16], &aq[16 * s..16 * s + 16]);
        }
        let d = rd_f16(wb, 208) * q8k_d(ab);
        acc += d * sumi as f32;
    }
    acc
}

pub(crate) fn q4_k_q8_k(dispatch: Dispatch, w: &[u8], a: &[u8], nb: usize) -> f32 {
    match dispatch {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked `dispatch.is_available()` (AVX-512 implies AVX2 + F16C).
        Dispatch::Avx512 | Dispatch::Avx2 => unsafe {
            super::x86_kquants::q4_k_q8_k_avx2(w, a, nb)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller checked `dispatch.is_available()` (NEON and the dot product).
        Dispatch::NeonDotprod => unsafe { super::neon::dotprod::q4_k_q8_k(w, a, nb) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller checked `dispatch.is_available()` (NEON).
        Dispatch::Neon => unsafe { super::neon::plain::q4_k_q8_k(w, a, nb) },
        _ => q4_k_body(w, a, nb),
    }
}

pub(crate) fn q6_k_q8_k(dispatch: Dispatch, w: &[u8], a: &[u8], nb: usize) -> f32 {
    match dispatch {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked `dispatch.is_available()` (AVX-512 implies AVX2 + F16C).
        Dispatch::Avx512 | Dispatch::Avx2 => unsafe {
            super::x86_kquants::q6_k_q8_k_avx2(w, a, nb)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller checked `dispatch.is_available()` (NEON and the dot product).
        Dispatch::NeonDotprod => unsafe { super::neon::dotprod::q6_k_q8_k(w, a, nb) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller checked `dispatch.is_available()` (NEON).
        Dispatch::Neon => unsafe { super::neon::plain::q6_k_q8_k(w, a, nb) },
        _ => q6_k_body(w, a, nb),
    }
}
