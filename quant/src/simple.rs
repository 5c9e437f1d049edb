//! The 32-element legacy blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1), following ggml-quants.c's
//! `dequantize_row_*` and `quantize_row_*_ref` operation by operation, so results are bit-exact.

use crate::util::{rd_f16, rd_u32, round_away, wr_f16};

/// Q4_0: `f16 d, u8 qs[16]`; element j in the low nibble of qs[j], j+16 in the high nibble.
pub(crate) fn deq_q4_0(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: `f16 d, f16 m, u8 qs[16]`; y = q * d + m.
pub(crate) fn deq_q4_1(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let m = rd_f16(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = (q & 0x0f) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0: `f16 d, u32 qh, u8 qs[16]`; the fifth bit of element j is bit j of qh.
pub(crate) fn deq_q5_0(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let qh = rd_u32(b, 2);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((q & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: `f16 d, f16 m, u32 qh, u8 qs[16]`.
pub(crate) fn deq_q5_1(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let m = rd_f16(b, 2);
    let qh = rd_u32(b, 4);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((q & 0x0f) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// Q8_0: `f16 d, i8 qs[32]`.
pub(crate) fn deq_q8_0(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q8_1: `f16 d, f16 s (= d * sum qs), i8 qs[32]`.
pub(crate) fn deq_q8_1(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for j in 0..32 {
        y[j] = (b[4 + j] as i8) as f32 * d;
    }
}

/// Index and value of the element with the largest magnitude (first one on ties), as the
/// Q4_0/Q5_0 reference keeps the sign of the extreme value.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

pub(crate) fn q_q4_0(x: &[f32], b: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 0, d);
    for j in 0..16 {
        // ggml: (int8_t)(x*id + 8.5f), then MIN(15, .); the cast truncates toward zero.
        let x0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let x1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        b[2 + j] = x0 | (x1 << 4);
    }
}

pub(crate) fn q_q4_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 0, d);
    wr_f16(b, 2, min);
    for j in 0..16 {
        let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let x1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        b[4 + j] = x0 | (x1 << 4);
    }
}

pub(crate) fn q_q5_0(x: &[f32], b: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 0, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let x1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        b[6 + j] = (x0 & 0x0f) | ((x1 & 0x0f) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    b[2..6].copy_from_slice(&qh.to_le_bytes());
}

pub(crate) fn q_q5_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 0, d);
    wr_f16(b, 2, min);
    let mut qh = 0u32;
    for j in 0..16 {
        // ggml: plain (uint8_t)(x0 + 0.5f), no clamp (the value cannot exceed 31.5).
        let x0 = ((x[j] - min) * id + 0.5) as u8;
        let x1 = ((x[j + 16] - min) * id + 0.5) as u8;
        b[8 + j] = (x0 & 0x0f) | ((x1 & 0x0f) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    b[4..8].copy_from_slice(&qh.to_le_bytes());
}

#[inline(always)]
fn absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    amax
}

pub(crate) fn q_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = absmax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 0, d);
    for j in 0..32 {
        b[2 + j] = round_away(x[j] * id) as i8 as u8;
    }
}

pub(crate) fn q_q8_1(x: &[f32], b: &mut [u8]) {
    let amax = absmax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 0, d);
    let mut sum = 0i32;
    for j in 0..32 {
        let q = round_away(x[j] * id);
        sum += q;
        b[4 + j] = q as i8 as u8;
    }
    wr_f16(b, 2, sum as f32 * d);
}
