//! TQ1_0 and TQ2_0 (ternary, BitNet-style) and NVFP4 (E2M1 codes with UE4M3 scales per 16),
//! following ggml-quants.c.

use crate::mxfp4::E2M1_DOUBLED_I8;
use crate::util::{rd_f16, round_away, wr_f16};

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// One base-3 digit out of a byte holding a fixed-point fraction, as ggml extracts it.
#[inline(always)]
fn trit(byte: u8, n: usize) -> i32 {
    let q = byte.wrapping_mul(POW3[n]);
    ((q as u16 * 3) >> 8) as i32 - 1
}

/// TQ1_0: `u8 qs[48], u8 qh[4], f16 d`; five trits per byte in qs, four in qh.
pub(crate) fn deq_tq1_0(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 52);
    let mut o = 0;
    for n in 0..5 {
        for m in 0..32 {
            y[o] = trit(b[m], n) as f32 * d;
            o += 1;
        }
    }
    for n in 0..5 {
        for m in 0..16 {
            y[o] = trit(b[32 + m], n) as f32 * d;
            o += 1;
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            y[o] = trit(b[48 + j], n) as f32 * d;
            o += 1;
        }
    }
}

/// TQ2_0: `u8 qs[64], f16 d`; four 2-bit codes (0, 1, 2 -> -1, 0, 1) per byte.
pub(crate) fn deq_tq2_0(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 64);
    let mut o = 0;
    for j in (0..64).step_by(32) {
        for l in 0..4 {
            for m in 0..32 {
                y[o] = (((b[j + m] >> (2 * l)) & 3) as i32 - 1) as f32 * d;
                o += 1;
            }
        }
    }
}

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |a, v| a.max(v.abs()))
}

/// `lroundf(x * id) + 1` as ggml computes the ternary digit.
#[inline(always)]
fn tern(x: f32, id: f32) -> u8 {
    (round_away(x * id) + 1) as u8
}

/// Packs base-3 digits into a byte as a fixed-point fraction (ceiling division by 243).
#[inline(always)]
fn pack(q: u8) -> u8 {
    (q as u16 * 256).div_ceil(243) as u8
}

pub(crate) fn q_tq1_0(x: &[f32], b: &mut [u8]) {
    let d = absmax(x);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 52, d);
    for m in 0..32 {
        let mut q = 0u8;
        for n in 0..5 {
            q = q * 3 + tern(x[m + 32 * n], id);
        }
        b[m] = pack(q);
    }
    for m in 0..16 {
        let mut q = 0u8;
        for n in 0..5 {
            q = q * 3 + tern(x[160 + m + 16 * n], id);
        }
        b[32 + m] = pack(q);
    }
    for j in 0..4 {
        let mut q = 0u8;
        for m in 0..4 {
            q = q * 3 + tern(x[240 + j + 4 * m], id);
        }
        b[48 + j] = pack(q * 3);
    }
}

pub(crate) fn q_tq2_0(x: &[f32], b: &mut [u8]) {
    let d = absmax(x);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    wr_f16(b, 64, d);
    for j in (0..64).step_by(32) {
        for m in 0..32 {
            let mut q = 0u8;
            for n in 0..4 {
                q += (tern(x[4 * j + m + 32 * n], id) & 3) << (2 * n);
            }
            b[j + m] = q;
        }
    }
}

/// ggml's `ggml_ue4m3_to_fp32`: unsigned E4M3 (bias 7), 0x7F read as 0, times 0.5 to pair with
/// the doubled E2M1 table.
pub(crate) fn ue4m3_to_f32_half(x: u8) -> f32 {
    if x == 0 || x == 0x7f {
        return 0.0;
    }
    let exp = ((x >> 3) & 0x0f) as i32;
    let man = (x & 7) as i32;
    let raw = if exp == 0 {
        man as f32 * 2f32.powi(-9)
    } else {
        (1.0 + man as f32 / 8.0) * 2f32.powi(exp - 7)
    };
    raw * 0.5
}

/// NVFP4: `u8 d[4]` (UE4M3 scale per 16), `u8 qs[32]`; in each 16-element group byte j holds
/// element j (low nibble) and j + 8 (high nibble).
pub(crate) fn deq_nvfp4(b: &[u8], y: &mut [f32]) {
    for s in 0..4 {
        let d = ue4m3_to_f32_half(b[s]);
        for j in 0..8 {
            let q = b[4 + 8 * s + j];
            y[16 * s + j] = E2M1_DOUBLED_I8[(q & 0x0f) as usize] as f32 * d;
            y[16 * s + j + 8] = E2M1_DOUBLED_I8[(q >> 4) as usize] as f32 * d;
        }
    }
}
