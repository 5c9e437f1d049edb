//! Portable dot-product kernels. They define the exact floating-point evaluation order that the
//! SIMD kernels reproduce: integer block sums are exact, and the per-block float terms go into
//! eight lanes (block b into lane b % 8) that [`reduce8`] adds up in a fixed tree.

use crate::mxfp4::{E2M1_DOUBLED_I8, e8m0_to_f32_half};
use crate::util::rd_f16;

/// The fixed reduction of the eight lanes; equal to a 256 -> 128 -> 64 -> 32 bit halving tree.
#[inline(always)]
pub(crate) fn reduce8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Integer dot of one MXFP4 block (17 bytes) with one Q8_0 block (34 bytes), doubled values.
#[inline(always)]
pub(crate) fn mxfp4_q8_0_block_sum(w: &[u8], a: &[u8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        let q = w[1 + j];
        s += E2M1_DOUBLED_I8[(q & 0x0f) as usize] as i32 * (a[2 + j] as i8) as i32;
        s += E2M1_DOUBLED_I8[(q >> 4) as usize] as i32 * (a[18 + j] as i8) as i32;
    }
    s
}

/// The float term of one block pair: (weight scale * activation scale) * integer sum.
#[inline(always)]
pub(crate) fn mxfp4_q8_0_block(w: &[u8], a: &[u8]) -> f32 {
    let d = e8m0_to_f32_half(w[0]) * rd_f16(a, 0);
    d * mxfp4_q8_0_block_sum(w, a) as f32
}

/// Lane of block `b % 8` in the MXFP4 kernels: the SIMD kernels handle blocks in pairs (one per
/// 128-bit half), which leaves even blocks in lanes 0..4 and odd blocks in lanes 4..8.
pub(crate) const MXFP4_LANE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

pub(crate) fn mxfp4_q8_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut acc = [0.0f32; 8];
    for (b, (wb, ab)) in w
        .chunks_exact(17)
        .zip(a.chunks_exact(34))
        .take(nb)
        .enumerate()
    {
        acc[MXFP4_LANE[b % 8]] += mxfp4_q8_0_block(wb, ab);
    }
    reduce8(acc)
}

#[inline(always)]
pub(crate) fn q8_0_q8_0_block(w: &[u8], a: &[u8]) -> f32 {
    let mut s = 0i32;
    for j in 0..32 {
        s += (w[2 + j] as i8) as i32 * (a[2 + j] as i8) as i32;
    }
    let d = rd_f16(w, 0) * rd_f16(a, 0);
    d * s as f32
}

pub(crate) fn q8_0_q8_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut acc = [0.0f32; 8];
    for (b, (wb, ab)) in w
        .chunks_exact(34)
        .zip(a.chunks_exact(34))
        .take(nb)
        .enumerate()
    {
        acc[b % 8] += q8_0_q8_0_block(wb, ab);
    }
    reduce8(acc)
}

/// Q4_0 as a level table (code - 8), for the shared 4-bit kernels.
pub(crate) const Q4_0_LEVELS: [i8; 16] = [-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7];

/// One 18-byte 4-bit block (f16 scale, codes j / j + 16 in the low / high nibble of byte j)
/// with levels `table`, dotted with one Q8_0 block.
#[inline(always)]
pub(crate) fn nib4_q8_0_block(table: &[i8; 16], w: &[u8], a: &[u8]) -> f32 {
    let mut s = 0i32;
    for j in 0..16 {
        let q = w[2 + j];
        s += table[(q & 0x0f) as usize] as i32 * (a[2 + j] as i8) as i32;
        s += table[(q >> 4) as usize] as i32 * (a[18 + j] as i8) as i32;
    }
    let d = rd_f16(w, 0) * rd_f16(a, 0);
    d * s as f32
}

/// Q4_0 / IQ4_NL x Q8_0, in the MXFP4 kernels' lane order.
pub(crate) fn nib4_q8_0(table: &[i8; 16], w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut acc = [0.0f32; 8];
    for (b, (wb, ab)) in w
        .chunks_exact(18)
        .zip(a.chunks_exact(34))
        .take(nb)
        .enumerate()
    {
        acc[MXFP4_LANE[b % 8]] += nib4_q8_0_block(table, wb, ab);
    }
    reduce8(acc)
}
