//! The i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS): decoding
//! as ggml-quants.c's `dequantize_row_iq*`, and the IQ4_NL / IQ4_XS quantizer.

use crate::tables::*;
use crate::util::{nearest_int, rd_f16, rd_u16, rd_u32, wr_f16};

const IQ1S_DELTA: f32 = 0.125;

#[inline(always)]
fn grid8(g: u64, j: usize) -> f32 {
    ((g >> (8 * j)) & 0xff) as u8 as f32
}

#[inline(always)]
fn grid4(g: u32, j: usize) -> f32 {
    ((g >> (8 * j)) & 0xff) as u8 as f32
}

#[inline(always)]
fn sign(signs: u8, j: usize) -> f32 {
    if signs & (1 << j) != 0 { -1.0 } else { 1.0 }
}

/// IQ2_XXS: `f16 d, u16 qs[32]`; per 32 elements two u32: four grid indices, then four 7-bit
/// sign indices and a 4-bit scale.
pub(crate) fn deq_iq2_xxs(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for ib in 0..8 {
        let aux0 = rd_u32(b, 2 + 8 * ib);
        let aux1 = rd_u32(b, 6 + 8 * ib);
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        for l in 0..4 {
            let g = IQ2XXS_GRID[((aux0 >> (8 * l)) & 0xff) as usize];
            let s = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = db * grid8(g, j) * sign(s, j);
            }
        }
    }
}

/// IQ2_XS: `f16 d, u16 qs[32], u8 scales[8]`; each u16 is a 9-bit grid index and 7 sign bits.
pub(crate) fn deq_iq2_xs(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for ib in 0..8 {
        let sc = b[66 + ib];
        let db = [
            d * (0.5 + (sc & 0x0f) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for l in 0..4 {
            let q = rd_u16(b, 2 + 2 * (4 * ib + l));
            let g = IQ2XS_GRID[(q & 511) as usize];
            let s = KSIGNS_IQ2XS[(q >> 9) as usize];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = db[l / 2] * grid8(g, j) * sign(s, j);
            }
        }
    }
}

/// IQ2_S: `f16 d, u8 qs[32], u8 signs[32], u8 qh[8], u8 scales[8]`.
pub(crate) fn deq_iq2_s(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let qs = &b[2..34];
    let signs = &b[34..66];
    let qh = &b[66..74];
    let scales = &b[74..82];
    for ib in 0..8 {
        let sc = scales[ib];
        let db = [
            d * (0.5 + (sc & 0x0f) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for l in 0..4 {
            let idx = qs[4 * ib + l] as usize | (((qh[ib] as usize) << (8 - 2 * l)) & 0x300);
            let g = IQ2S_GRID[idx];
            let s = signs[4 * ib + l];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = db[l / 2] * grid8(g, j) * sign(s, j);
            }
        }
    }
}

/// IQ3_XXS: `f16 d, u8 qs[64], u32 scales_and_signs[8]`.
pub(crate) fn deq_iq3_xxs(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for ib in 0..8 {
        let qs = &b[2 + 8 * ib..2 + 8 * ib + 8];
        let aux = rd_u32(b, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let s = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let g1 = IQ3XXS_GRID[qs[2 * l] as usize];
            let g2 = IQ3XXS_GRID[qs[2 * l + 1] as usize];
            for j in 0..4 {
                y[32 * ib + 8 * l + j] = db * grid4(g1, j) * sign(s, j);
                y[32 * ib + 8 * l + j + 4] = db * grid4(g2, j) * sign(s, j + 4);
            }
        }
    }
}

/// IQ3_S: `f16 d, u8 qs[64], u8 qh[8], u8 signs[32], u8 scales[4]`.
pub(crate) fn deq_iq3_s(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let qs = &b[2..66];
    let qh = &b[66..74];
    let signs = &b[74..106];
    let scales = &b[106..110];
    for ib in 0..8 {
        let sc = scales[ib / 2];
        let db = d * (1 + 2 * if ib % 2 == 0 { sc & 0x0f } else { sc >> 4 } as i32) as f32;
        let h = qh[ib] as usize;
        for l in 0..4 {
            let i1 = qs[8 * ib + 2 * l] as usize | ((h << (8 - 2 * l)) & 256);
            let i2 = qs[8 * ib + 2 * l + 1] as usize | ((h << (7 - 2 * l)) & 256);
            let (g1, g2) = (IQ3S_GRID[i1], IQ3S_GRID[i2]);
            let s = signs[4 * ib + l];
            for j in 0..4 {
                y[32 * ib + 8 * l + j] = db * grid4(g1, j) * sign(s, j);
                y[32 * ib + 8 * l + j + 4] = db * grid4(g2, j) * sign(s, j + 4);
            }
        }
    }
}

#[inline(always)]
fn grid1(g: u64, j: usize) -> f32 {
    ((g >> (8 * j)) & 0xff) as u8 as i8 as f32
}

/// IQ1_S: `f16 d, u8 qs[32], u16 qh[8]`.
pub(crate) fn deq_iq1_s(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for ib in 0..8 {
        let qh = rd_u16(b, 34 + 2 * ib) as usize;
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1S_DELTA
        } else {
            IQ1S_DELTA
        };
        for l in 0..4 {
            let g = IQ1S_GRID[b[2 + 4 * ib + l] as usize | (((qh >> (3 * l)) & 7) << 8)];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = dl * (grid1(g, j) + delta);
            }
        }
    }
}

/// IQ1_M: `u8 qs[32], u8 qh[16], u8 scales[8]`; the f16 super-scale is spread over the top
/// nibbles of the four u16 scale words.
pub(crate) fn deq_iq1_m(b: &[u8], y: &mut [f32]) {
    let sc = [rd_u16(b, 48), rd_u16(b, 50), rd_u16(b, 52), rd_u16(b, 54)];
    let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    let d = half::f16::from_bits(bits).to_f32();
    for ib in 0..8 {
        let s = sc[ib / 2] as usize;
        let dl1 = d * (2 * ((s >> (6 * (ib % 2))) & 7) + 1) as f32;
        let dl2 = d * (2 * ((s >> (6 * (ib % 2) + 3)) & 7) + 1) as f32;
        let qs = &b[4 * ib..4 * ib + 4];
        let qh = &b[32 + 2 * ib..32 + 2 * ib + 2];
        let idx = [
            qs[0] as usize | ((qh[0] as usize) << 8 & 0x700),
            qs[1] as usize | ((qh[0] as usize) << 4 & 0x700),
            qs[2] as usize | ((qh[1] as usize) << 8 & 0x700),
            qs[3] as usize | ((qh[1] as usize) << 4 & 0x700),
        ];
        let dsign = |m: bool| if m { -IQ1S_DELTA } else { IQ1S_DELTA };
        let delta = [
            dsign(qh[0] & 0x08 != 0),
            dsign(qh[0] & 0x80 != 0),
            dsign(qh[1] & 0x08 != 0),
            dsign(qh[1] & 0x80 != 0),
        ];
        for l in 0..4 {
            let dl = if l < 2 { dl1 } else { dl2 };
            let g = IQ1S_GRID[idx[l]];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = dl * (grid1(g, j) + delta[l]);
            }
        }
    }
}

/// IQ4_NL: `f16 d, u8 qs[16]` with the non-linear level table.
pub(crate) fn deq_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * KVALUES_IQ4NL[(q & 0x0f) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

/// IQ4_XS: `f16 d, u16 scales_h, u8 scales_l[4], u8 qs[128]`; 6-bit scale per 32.
pub(crate) fn deq_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let sh = rd_u16(b, 2) as i32;
    for ib in 0..8 {
        let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0f) as i32 | (((sh >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
        for j in 0..16 {
            y[32 * ib + j] = dl * KVALUES_IQ4NL[(qs[j] & 0x0f) as usize] as f32;
            y[32 * ib + j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
        }
    }
}

/// ggml's `best_index_int8`: the nearest level by bisection, ties to the upper one only when
/// strictly nearer.
#[inline(always)]
fn best_index_int8(values: &[i8; 16], x: f32) -> u8 {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav
        } else {
            ml = mav
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// [`best_index_int8`] of `scale * xb[j]` for the 32 values of a group, with the same result
/// for every input (NaN included), written so the compiler vectorizes it: the bisection's mu
/// (the first level above x) is the number of levels <= x, since the levels strictly increase,
/// and counting them over 32 values at once is branch-free SIMD. The IQ4 quantizers call this
/// 17 times per group, which made them ~160 ns per element with the scalar bisection.
#[inline(always)]
fn best_index_int8_32(values: &[i8; 16], scale: f32, xb: &[f32], out: &mut [u8]) {
    let mut lv = [0.0f32; 16];
    for (l, &v) in lv.iter_mut().zip(values) {
        *l = v as f32;
    }
    let mut x = [0.0f32; 32];
    for (xj, &b) in x.iter_mut().zip(&xb[..32]) {
        *xj = scale * b;
    }
    let mut cnt = [0u8; 32];
    for &l in &lv {
        for (c, &xj) in cnt.iter_mut().zip(&x) {
            *c += (l <= xj) as u8;
        }
    }
    // The choice between the two neighbours is a coin flip for the branch predictor: computed
    // as selects, not branches.
    for ((o, &xj), &c) in out[..32].iter_mut().zip(&x).zip(&cnt) {
        let mu = (c as usize).clamp(1, 15);
        let r = mu as u8 - (xj - lv[mu - 1] < lv[mu] - xj) as u8;
        // c == 0 only for NaN, where the bisection ends on the last level.
        let r = if xj >= lv[15] || c == 0 { 15 } else { r };
        *o = if xj <= lv[0] { 0 } else { r };
    }
}

const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `quantize_row_iq4_nl_impl` without an importance matrix (weights x^2), with `ntry`
/// scale trials, for one super-block of `x.len()` elements in groups of 32. Returns the f16 super
/// scale; fills `l` with level indices, `scales_l`/`scales_h` for more than one group.
fn iq4_impl(x: &[f32], ntry: i32, l: &mut [u8], scales_l: &mut [u8], scales_h: &mut u16) -> f32 {
    let values = &KVALUES_IQ4NL;
    let nblocks = x.len() / 32;
    let mut scales = [0.0f32; 8];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for ib in 0..nblocks {
        let xb = &x[32 * ib..32 * ib + 32];
        let lb = &mut l[32 * ib..32 * ib + 32];
        let mut weight = [0.0f32; 32];
        for j in 0..32 {
            weight[j] = xb[j] * xb[j];
        }
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            // ggml leaves this group's indices unset here; both callers recompute them below.
            lb.fill(0);
            scales[ib] = 0.0;
            continue;
        }
        let v0 = values[0] as f32;
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        best_index_int8_32(values, id, xb, lb);
        for j in 0..32 {
            let li = lb[j];
            let q = values[li as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + values[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            let mut li32 = [0u8; 32];
            best_index_int8_32(values, id, xb, &mut li32);
            for j in 0..32 {
                let li = li32[j];
                let q = values[li as usize] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    if nblocks > 1 {
        *scales_h = 0;
        let d = -max_scale / 32.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nblocks {
            let mut li = nearest_int(id * scales[ib]);
            li = li.clamp(-32, 31);
            let dl = d * li as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[32 * ib..32 * ib + 32];
            best_index_int8_32(values, idl, xb, &mut l[32 * ib..32 * ib + 32]);
            let li = (li + 32) as u8;
            if ib % 2 == 0 {
                scales_l[ib / 2] = li & 0x0f;
            } else {
                scales_l[ib / 2] |= (li & 0x0f) << 4;
            }
            *scales_h |= ((li >> 4) as u16) << (2 * (ib % 8));
        }
        d
    } else {
        if ntry > 0 {
            let id = if scales[0] != 0.0 {
                1.0 / scales[0]
            } else {
                0.0
            };
            for j in 0..x.len() {
                l[j] = best_index_int8(values, id * x[j]);
            }
        }
        scales[0]
    }
}

fn pack_nibbles(l: &[u8], q4: &mut [u8]) {
    for i in 0..l.len() / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

/// IQ4_NL as llama-quantize writes it without an importance matrix (`quantize_iq4_nl` with
/// `quant_weights = NULL`: 7 scale trials each side). Note ggml's `quantize_row_iq4_nl_ref`
/// makes no trials (ntry = -1); llama-quantize never calls it.
pub(crate) fn q_iq4_nl(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; 32];
    let mut unused_h = 0u16;
    let d = iq4_impl(x, 7, &mut l, &mut [], &mut unused_h);
    wr_f16(b, 0, d);
    pack_nibbles(&l, &mut b[2..18]);
}

/// IQ4_XS as `quantize_row_iq4_xs_ref` (= `quantize_iq4_xs` without an importance matrix).
pub(crate) fn q_iq4_xs(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; 256];
    let mut scales_l = [0u8; 4];
    let mut scales_h = 0u16;
    let d = iq4_impl(x, 7, &mut l, &mut scales_l, &mut scales_h);
    wr_f16(b, 0, d);
    b[2..4].copy_from_slice(&scales_h.to_le_bytes());
    b[4..8].copy_from_slice(&scales_l);
    pack_nibbles(&l, &mut b[8..136]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorized_level_search_equals_the_bisection() {
        // Every level, every midpoint (a tie), values just around them, the ends, outside,
        // infinities and NaN, then a sweep.
        let mut xs = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1000.0,
            1000.0,
            0.0,
        ];
        for w in KVALUES_IQ4NL.windows(2) {
            let (a, b) = (w[0] as f32, w[1] as f32);
            let mid = 0.5 * (a + b);
            for v in [a, b, mid] {
                xs.extend([
                    v,
                    f32::from_bits(v.to_bits() + 1),
                    f32::from_bits(v.to_bits() - 1),
                ]);
            }
        }
        xs.extend((0..4000).map(|i| -140.0 + i as f32 * 0.0667));
        let mut xb = vec![0.0f32; xs.len().div_ceil(32) * 32];
        xb[..xs.len()].copy_from_slice(&xs);
        for scale in [1.0f32, 0.5, -1.0] {
            for chunk in xb.chunks_exact(32) {
                let mut got = [0u8; 32];
                best_index_int8_32(&KVALUES_IQ4NL, scale, chunk, &mut got);
                for (j, &v) in chunk.iter().enumerate() {
                    let want = best_index_int8(&KVALUES_IQ4NL, scale * v);
                    assert_eq!(got[j], want, "x = {v} * {scale}");
                }
            }
        }
    }
}
