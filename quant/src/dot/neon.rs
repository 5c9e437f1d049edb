//! NEON kernels (aarch64): plain Advanced SIMD (`smull` + `sadalp`), and the same bodies with
//! the Armv8.2 dot-product instruction `sdot` where the CPU has it. Each computes the exact
//! integer sum of every block pair and then the same float operations, in the same order, as the
//! scalar kernels (`scalar.rs`, `kquants.rs`): per-block terms `(d_w * d_a) * sum` go into the
//! same eight lanes (four at a time in a `float32x4_t`, no fused multiply-add), so the results are
//! identical bit for bit. Integer sums are exact whatever order the lanes add in.
//!
//! `sdot`'s intrinsic (`vdotq_s32`) is not stable Rust yet, so it is written as inline assembly
//! in [`sdot`], compiled only into functions that enable the `dotprod` feature.

use std::arch::aarch64::*;

use super::scalar::{MXFP4_LANE, mxfp4_q8_0_block, nib4_q8_0_block, q8_0_q8_0_block, reduce8};
use crate::kquants::scale_min_k4;
use crate::mxfp4::{E2M1_DOUBLED_I8, E8M0_HALF};
use crate::util::rd_f16;

/// Loads 16 bytes as signed lanes.
#[inline]
#[target_feature(enable = "neon")]
fn ld(s: &[u8]) -> int8x16_t {
    let s = &s[..16];
    // SAFETY: `s` is exactly 16 readable bytes; NEON loads have no alignment requirement.
    unsafe { vld1q_s8(s.as_ptr().cast()) }
}

/// Loads 16 bytes as unsigned lanes.
#[inline]
#[target_feature(enable = "neon")]
fn ldu(s: &[u8]) -> uint8x16_t {
    vreinterpretq_u8_s8(ld(s))
}

/// Four f32 as a vector.
#[inline]
#[target_feature(enable = "neon")]
fn f32x4(v: [f32; 4]) -> float32x4_t {
    // SAFETY: `v` is 4 readable f32 on the stack.
    unsafe { vld1q_f32(v.as_ptr()) }
}

/// `acc + dot4(a, b)` with `sdot`: each i32 lane gains the sum of four i8 x i8 products.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` only reads and writes the named vector registers; this function is compiled
    // (and, through `target_feature`, callable) only where the CPU has the dot-product extension.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc` plus the sixteen i8 x i8 products of `a` and `b`, with base NEON: widening multiplies
/// into i16 (|product| <= 2^14, exact) and pairwise accumulation into i32. The lanes get other
/// products than [`sdot`]'s, but the lanes' total is the same exact integer.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn smull_dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Totals of four vectors: lane k is the sum of the lanes of `p[k]`.
#[inline]
#[target_feature(enable = "neon")]
fn hsum4(p0: int32x4_t, p1: int32x4_t, p2: int32x4_t, p3: int32x4_t) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3))
}

/// `acc + (dw * da) * sums` lane by lane: the scalar kernels' per-block term and addition.
#[inline]
#[target_feature(enable = "neon")]
fn add_terms(acc: float32x4_t, dw: [f32; 4], da: [f32; 4], sums: int32x4_t) -> float32x4_t {
    let d = vmulq_f32(f32x4(dw), f32x4(da));
    vaddq_f32(acc, vmulq_f32(d, vcvtq_f32_s32(sums)))
}

/// The eight lanes of two accumulators (lanes 0..4, 4..8).
#[inline]
#[target_feature(enable = "neon")]
fn lanes(lo: float32x4_t, hi: float32x4_t) -> [f32; 8] {
    let mut l = [0.0f32; 8];
    // SAFETY: `l` is 8 writable f32; each store writes 4 of them.
    unsafe {
        vst1q_f32(l.as_mut_ptr(), lo);
        vst1q_f32(l.as_mut_ptr().add(4), hi);
    }
    l
}

/// Q8_0 block scale at byte `off`.
#[inline]
#[target_feature(enable = "neon")]
fn f16_at(b: &[u8], off: usize) -> f32 {
    rd_f16(b, off)
}

#[inline]
#[target_feature(enable = "neon")]
fn q8k_d(a: &[u8]) -> f32 {
    f32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

/// The kernels, written once; `$dot` is [`sdot`] or [`smull_dot`] and `$feat` the features the
/// generated functions are compiled for.
macro_rules! kernels {
    ($m:ident, $feat:literal, $dot:path) => {
        /// Kernels compiled for the features in this module's `target_feature`s.
        pub(crate) mod $m {
            use super::*;

            /// Exact integer dot of a 16-entry-table 4-bit block (codes at `q`, element j in the
            /// low nibble of byte j, j + 16 in the high one) with a Q8_0 block's codes `a`.
            #[inline]
            #[target_feature(enable = $feat)]
            fn nib4_sum(table: int8x16_t, m4: uint8x16_t, q: &[u8], a: &[u8]) -> int32x4_t {
                let q = ldu(q);
                let lo = vqtbl1q_s8(table, vandq_u8(q, m4));
                let hi = vqtbl1q_s8(table, vshrq_n_u8::<4>(q));
                let z = vdupq_n_s32(0);
                $dot($dot(z, lo, ld(&a[0..16])), hi, ld(&a[16..32]))
            }

            /// 4-bit table codes (`WB`-byte blocks: `WB - 16` scale bytes, then 16 code bytes)
            /// x Q8_0 in the MXFP4 lane order: even blocks of a group in lanes 0..4, odd ones in
            /// 4..8. `scale` gives a weight block's scale.
            #[inline]
            #[target_feature(enable = $feat)]
            fn nib4_kernel<const WB: usize>(
                table: &[i8; 16],
                w: &[u8],
                a: &[u8],
                nb: usize,
                scale: impl Fn(&[u8]) -> f32,
                block: impl Fn(&[u8], &[u8]) -> f32,
            ) -> f32 {
                let t = ld(&table.map(|v| v as u8));
                let m4 = vdupq_n_u8(0x0f);
                let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                let groups = nb / 8;
                for (wg, ag) in w
                    .chunks_exact(8 * WB)
                    .zip(a.chunks_exact(8 * 34))
                    .take(groups)
                {
                    let p: [int32x4_t; 8] = std::array::from_fn(|b| {
                        let wb = &wg[WB * b..WB * b + WB];
                        nib4_sum(t, m4, &wb[WB - 16..], &ag[34 * b + 2..34 * b + 34])
                    });
                    let even = hsum4(p[0], p[2], p[4], p[6]);
                    let odd = hsum4(p[1], p[3], p[5], p[7]);
                    let dw = |b: usize| scale(&wg[WB * b..]);
                    let da = |b: usize| f16_at(ag, 34 * b);
                    lo = add_terms(
                        lo,
                        [dw(0), dw(2), dw(4), dw(6)],
                        [da(0), da(2), da(4), da(6)],
                        even,
                    );
                    hi = add_terms(
                        hi,
                        [dw(1), dw(3), dw(5), dw(7)],
                        [da(1), da(3), da(5), da(7)],
                        odd,
                    );
                }
                let mut l = lanes(lo, hi);
                for b in groups * 8..nb {
                    l[MXFP4_LANE[b % 8]] += block(&w[b * WB..b * WB + WB], &a[b * 34..b * 34 + 34]);
                }
                reduce8(l)
            }

            /// MXFP4 x Q8_0 (doubled E2M1 values, |w| <= 12, times the signed activations).
            #[target_feature(enable = $feat)]
            pub(crate) fn mxfp4_q8_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
                nib4_kernel::<17>(
                    &E2M1_DOUBLED_I8,
                    w,
                    a,
                    nb,
                    |b| E8M0_HALF[b[0] as usize],
                    mxfp4_q8_0_block,
                )
            }

            /// Q4_0 or IQ4_NL (18-byte blocks: f16 scale, 16 code bytes) x Q8_0 with level
            /// table `table`, in the MXFP4 lane order like the scalar kernel.
            #[target_feature(enable = $feat)]
            pub(crate) fn nib4_q8_0(table: &[i8; 16], w: &[u8], a: &[u8], nb: usize) -> f32 {
                nib4_kernel::<18>(
                    table,
                    w,
                    a,
                    nb,
                    |b| f16_at(b, 0),
                    |wb, ab| nib4_q8_0_block(table, wb, ab),
                )
            }

            /// Q8_0 x Q8_0: block b of a group in lane b.
            #[target_feature(enable = $feat)]
            pub(crate) fn q8_0_q8_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
                let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                let groups = nb / 8;
                for (wg, ag) in w
                    .chunks_exact(8 * 34)
                    .zip(a.chunks_exact(8 * 34))
                    .take(groups)
                {
                    let p: [int32x4_t; 8] = std::array::from_fn(|b| {
                        let (wb, ab) = (&wg[34 * b..34 * b + 34], &ag[34 * b..34 * b + 34]);
                        let z = vdupq_n_s32(0);
                        $dot(
                            $dot(z, ld(&wb[2..18]), ld(&ab[2..18])),
                            ld(&wb[18..34]),
                            ld(&ab[18..34]),
                        )
                    });
                    let dw = |b: usize| f16_at(wg, 34 * b);
                    let da = |b: usize| f16_at(ag, 34 * b);
                    let s0 = hsum4(p[0], p[1], p[2], p[3]);
                    let s1 = hsum4(p[4], p[5], p[6], p[7]);
                    lo = add_terms(
                        lo,
                        [dw(0), dw(1), dw(2), dw(3)],
                        [da(0), da(1), da(2), da(3)],
                        s0,
                    );
                    hi = add_terms(
                        hi,
                        [dw(4), dw(5), dw(6), dw(7)],
                        [da(4), da(5), da(6), da(7)],
                        s1,
                    );
                }
                let mut l = lanes(lo, hi);
                for b in groups * 8..nb {
                    l[b % 8] += q8_0_q8_0_block(&w[b * 34..b * 34 + 34], &a[b * 34..b * 34 + 34]);
                }
                reduce8(l)
            }

            /// Q4_K x Q8_K: per 32-value sub-block j, `sc_j * dot(q, a)` and
            /// `m_j * (bsum_2j + bsum_2j+1)`, exact in i32 (wrapping, like the scalar kernel's
            /// release build; no realistic block gets near it).
            #[target_feature(enable = $feat)]
            pub(crate) fn q4_k_q8_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
                let m4 = vdupq_n_u8(0x0f);
                let mut acc = 0.0f32;
                for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(nb) {
                    let aq = &ab[4..260];
                    let mut sc = [0i32; 8];
                    let mut mn = [0i32; 8];
                    for j in 0..8 {
                        let (s, m) = scale_min_k4(j, &wb[4..16]);
                        sc[j] = s as i32;
                        mn[j] = m as i32;
                    }
                    let mut sumv = vdupq_n_s32(0);
                    for j in 0..4 {
                        let qs = &wb[16 + 32 * j..48 + 32 * j];
                        let (q0, q1) = (ldu(&qs[..16]), ldu(&qs[16..]));
                        let a0 = &aq[64 * j..64 * j + 64];
                        let z = vdupq_n_s32(0);
                        let lo0 = vreinterpretq_s8_u8(vandq_u8(q0, m4));
                        let lo1 = vreinterpretq_s8_u8(vandq_u8(q1, m4));
                        let hi0 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q0));
                        let hi1 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q1));
                        let pl = $dot($dot(z, lo0, ld(&a0[0..16])), lo1, ld(&a0[16..32]));
                        let ph = $dot($dot(z, hi0, ld(&a0[32..48])), hi1, ld(&a0[48..64]));
                        sumv = vmlaq_n_s32(sumv, pl, sc[2 * j]);
                        sumv = vmlaq_n_s32(sumv, ph, sc[2 * j + 1]);
                    }
                    let sumi = vaddvq_s32(sumv);
                    // Block sums pairwise (widened: the pair sums of arbitrary i16 need 17 bits)
                    // times the mins.
                    let bs = &ab[260..292];
                    let b0 = vpaddlq_s16(vreinterpretq_s16_s8(ld(&bs[..16])));
                    let b1 = vpaddlq_s16(vreinterpretq_s16_s8(ld(&bs[16..])));
                    // SAFETY: `mn` is 8 readable i32; each load reads 4 of them.
                    let (m0, m1) =
                        unsafe { (vld1q_s32(mn.as_ptr()), vld1q_s32(mn.as_ptr().add(4))) };
                    let summ = vaddvq_s32(vmlaq_s32(vmulq_s32(b0, m0), b1, m1));
                    let dy = q8k_d(ab);
                    let d = rd_f16(wb, 0) * dy;
                    let dmin = rd_f16(wb, 2) * dy;
                    acc += d * sumi as f32 - dmin * summ as f32;
                }
                acc
            }

            /// Q6_K x Q8_K: the 6-bit codes minus 32 as i8, one 16-value sub-block per vector,
            /// each sub-block's dot times its i8 scale, all exact in i32.
            #[target_feature(enable = $feat)]
            pub(crate) fn q6_k_q8_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
                let m4 = vdupq_n_u8(0x0f);
                let m3 = vdupq_n_u8(3);
                let m32 = vdupq_n_s8(32);
                let mut acc = 0.0f32;
                for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(nb) {
                    let aq = &ab[4..260];
                    let sc = &wb[192..208];
                    let mut sumv = vdupq_n_s32(0);
                    for n in 0..2 {
                        let ql = &wb[64 * n..64 * n + 64];
                        let qh = &wb[128 + 32 * n..160 + 32 * n];
                        for c in 0..2 {
                            let qa = ldu(&ql[16 * c..16 * c + 16]);
                            let qb = ldu(&ql[32 + 16 * c..48 + 16 * c]);
                            let h = ldu(&qh[16 * c..16 * c + 16]);
                            let hb = |shift: u8| -> uint8x16_t {
                                let v = match shift {
                                    0 => h,
                                    2 => vshrq_n_u8::<2>(h),
                                    4 => vshrq_n_u8::<4>(h),
                                    _ => vshrq_n_u8::<6>(h),
                                };
                                vshlq_n_u8::<4>(vandq_u8(v, m3))
                            };
                            let q = [
                                vorrq_u8(vandq_u8(qa, m4), hb(0)),
                                vorrq_u8(vandq_u8(qb, m4), hb(2)),
                                vorrq_u8(vshrq_n_u8::<4>(qa), hb(4)),
                                vorrq_u8(vshrq_n_u8::<4>(qb), hb(6)),
                            ];
                            for (k, qk) in q.into_iter().enumerate() {
                                let s = (128 * n + 32 * k + 16 * c) / 16;
                                let qk = vsubq_s8(vreinterpretq_s8_u8(qk), m32);
                                let p = $dot(vdupq_n_s32(0), qk, ld(&aq[16 * s..16 * s + 16]));
                                sumv = vmlaq_n_s32(sumv, p, sc[s] as i8 as i32);
                            }
                        }
                    }
                    let sumi = vaddvq_s32(sumv);
                    let d = rd_f16(wb, 208) * q8k_d(ab);
                    acc += d * sumi as f32;
                }
                acc
            }
        }
    };
}

kernels!(plain, "neon", smull_dot);
kernels!(dotprod, "neon,dotprod", sdot);
