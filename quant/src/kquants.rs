//! The k-quant super-blocks (256 elements): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K, following
//! ggml-quants.c's `dequantize_row_*` and `quantize_row_*_ref` (the reference quantizers, without
//! an importance matrix) operation by operation.

use crate::util::rd_f16;

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q2_K: `u8 scales[16], u8 qs[64], f16 d, f16 dmin`.
pub(crate) fn deq_q2_k(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 80);
    let min = rd_f16(b, 82);
    let mut is = 0;
    let mut o = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let sc = b[is];
                is += 1;
                let dl = d * (sc & 0x0f) as f32;
                let ml = min * (sc >> 4) as f32;
                for l in 0..16 {
                    y[o] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                    o += 1;
                }
            }
        }
    }
}

/// The sixteen 6-bit Q3_K scales (before subtracting 32), unpacked as ggml does.
pub(crate) fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for j in 0..16 {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (lo | (hi << 4)) as i8;
    }
    out
}

/// Q3_K: `u8 hmask[32], u8 qs[64], u8 scales[12], f16 d`.
pub(crate) fn deq_q3_k(b: &[u8], y: &mut [f32]) {
    let d_all = rd_f16(b, 108);
    let hm = &b[0..32];
    let scales = q3_k_scales(&b[96..108]);
    let mut is = 0;
    let mut o = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &b[32 + 32 * n..32 + 32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in 0..16 {
                    let k = l + 16 * half;
                    let v = ((q[k] >> shift) & 3) as i32 - if hm[k] & m != 0 { 0 } else { 4 };
                    y[o] = dl * v as f32;
                    o += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// Q4_K: `f16 d, f16 dmin, u8 scales[12], u8 qs[128]`.
pub(crate) fn deq_q4_k(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let min = rd_f16(b, 2);
    let sc = &b[4..16];
    for j in 0..4 {
        let q = &b[16 + 32 * j..16 + 32 * j + 32];
        let (s1, m1) = scale_min_k4(2 * j, sc);
        let (s2, m2) = scale_min_k4(2 * j + 1, sc);
        let (d1, m1) = (d * s1 as f32, min * m1 as f32);
        let (d2, m2) = (d * s2 as f32, min * m2 as f32);
        for l in 0..32 {
            y[64 * j + l] = d1 * (q[l] & 0x0f) as f32 - m1;
            y[64 * j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: `f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]`.
pub(crate) fn deq_q5_k(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let min = rd_f16(b, 2);
    let sc = &b[4..16];
    let qh = &b[16..48];
    for j in 0..4 {
        let ql = &b[48 + 32 * j..48 + 32 * j + 32];
        let (s1, m1) = scale_min_k4(2 * j, sc);
        let (s2, m2) = scale_min_k4(2 * j + 1, sc);
        let (d1, m1) = (d * s1 as f32, min * m1 as f32);
        let (d2, m2) = (d * s2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * j + l] = d1 * ((q_lo(ql[l]) + h1) as f32) - m1;
            y[64 * j + 32 + l] = d2 * (((ql[l] >> 4) as i32 + h2) as f32) - m2;
        }
    }
}

#[inline(always)]
fn q_lo(x: u8) -> i32 {
    (x & 0x0f) as i32
}

/// Q6_K: `u8 ql[128], u8 qh[64], i8 scales[16], f16 d`.
pub(crate) fn deq_q6_k(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let o = 128 * n;
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[o + l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[o + l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[o + l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[o + l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Q8_K: `f32 d, i8 qs[256], i16 bsums[16]`.
pub(crate) fn deq_q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..256 {
        y[j] = d * (b[4 + j] as i8) as f32;
    }
}
