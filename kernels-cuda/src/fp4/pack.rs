//! Host-side packing for the block-scaled MMA: how `fp4_moe.cu` builds each lane's registers
//! from the weights as uploaded (ggml MXFP4 blocks, re-laid by [`relayout_mxfp4`] into all
//! values then all scales, the same bits) and from MXFP8-quantized activations. Every function
//! here is the line-by-line model of a device function of that file (named in its docs), so
//! that the CPU fragment model ([`super::model`]) can check the packing on random data.
//!
//! The weights need no repacking: with A = weights (16 output rows) and K = 32 = one MXFP4
//! block, lane `(g, t)` loads the 32-bit word of bytes `4t..4t+4` of its row's block. Its low
//! nibbles are elements `4t..4t+4` (A register 0/1: columns `4t + i`), its high nibbles
//! elements `16 + 4t..` (register 2/3: columns `16 + 4t + i`): ggml's nibble order is exactly
//! the fragment order, and each register is two shifts and a mask. The block's E8M0 byte is
//! SF_A unchanged.

use super::formats::{f32_to_e4m3, mxfp8_inverse_scale, mxfp8_scale_byte};
use super::model::{self, ModelError, WARP, WarpOperands};

/// Same-bits re-layout of ggml MXFP4 blocks (17 bytes: `e`, `qs[16]`) into `qs` of every block,
/// then every `e`: the layout [`crate::CudaBackend`] uploads and the kernels read.
pub fn relayout_mxfp4(ggml: &[u8]) -> Vec<u8> {
    crate::relayout(gptoss_backend::GgmlType::MXFP4, ggml)
}

/// An MXFP4 matrix in the device layout: `rows` rows of `k` elements (`k % 32 == 0`).
#[derive(Clone, Copy, Debug)]
pub struct Mxfp4Device<'a> {
    /// The re-laid bytes ([`relayout_mxfp4`]).
    pub bytes: &'a [u8],
    /// Rows (output features).
    pub rows: usize,
    /// Elements per row.
    pub k: usize,
}

impl Mxfp4Device<'_> {
    pub(crate) fn nb(&self) -> usize {
        self.rows * self.k / 32
    }
    /// The 16 ggml `qs` bytes of block `kb` of `row`.
    pub(crate) fn block(&self, row: usize, kb: usize) -> [u8; 16] {
        let o = (row * (self.k / 32) + kb) * 16;
        std::array::from_fn(|i| self.bytes[o + i])
    }
    fn word(&self, row: usize, kb: usize, t: usize) -> u32 {
        let o = (row * (self.k / 32) + kb) * 16 + 4 * t;
        u32::from_le_bytes([
            self.bytes[o],
            self.bytes[o + 1],
            self.bytes[o + 2],
            self.bytes[o + 3],
        ])
    }
    pub(crate) fn scale(&self, row: usize, kb: usize) -> u8 {
        self.bytes[self.nb() * 16 + row * (self.k / 32) + kb]
    }
}

/// Low nibbles of a word's four bytes into E2M1 containers (bits 5..2): elements `4t + i`.
#[inline]
pub fn containers_lo(q: u32) -> u32 {
    (q << 2) & 0x3c3c_3c3c
}

/// High nibbles of a word's four bytes into E2M1 containers: elements `16 + 4t + i`.
#[inline]
pub fn containers_hi(q: u32) -> u32 {
    (q >> 2) & 0x3c3c_3c3c
}

/// Lane `lane`'s A registers and scale-a-data for weight rows `row0..row0 + 16`, k-block `kb`
/// (`fp4_load_a` in fp4_moe.cu). Rows at or past `w.rows` are zero with scale 127 (1.0).
/// SF_A is read at selector `{0, 0}`: lane `l` with `l % 4 < 2` supplies row `l / 4 + 8 (l % 2)`;
/// the other lanes load the same row (ignored by the hardware).
pub fn a_fragment(w: &Mxfp4Device, row0: usize, kb: usize, lane: usize) -> ([u32; 4], u32) {
    let (g, t) = (lane >> 2, lane & 3);
    let mut a = [0u32; 4];
    for half in 0..2 {
        let r = row0 + g + 8 * half;
        if r < w.rows {
            let q = w.word(r, kb, t);
            a[half] = containers_lo(q);
            a[half + 2] = containers_hi(q);
        }
    }
    let m = g + 8 * (lane & 1);
    let sfa = if row0 + m < w.rows {
        w.scale(row0 + m, kb)
    } else {
        127
    };
    (a, sfa as u32)
}

/// Activations quantized to MXFP8: E4M3 bytes `[rows, k]` and one UE8M0 per 32 `[rows, k/32]`.
#[derive(Clone, Debug)]
pub struct Mxfp8Rows {
    /// E4M3 values, row-major.
    pub q: Vec<u8>,
    /// Scale bytes, row-major.
    pub s: Vec<u8>,
    /// Elements per row.
    pub k: usize,
}

/// Quantize `x` (rows of `k`, `k % 32 == 0`) to MXFP8 as `fp4_quant_mxfp8` does: per block of
/// 32, E = [`mxfp8_scale_byte`]`(amax)`, each element `cvt.rn.satfinite.e4m3(x * 2^(127 - E))`.
/// The element error is at most `2^-4 |x|` (normal E4M3: 3 mantissa bits, round to nearest) or
/// `2^-10 * 2^(E - 127)` (subnormal E4M3), whichever is larger; nothing saturates.
pub fn quantize_mxfp8(x: &[f32], k: usize) -> Result<Mxfp8Rows, ModelError> {
    if k == 0 || !k.is_multiple_of(32) || !x.len().is_multiple_of(k) {
        return Err(ModelError::Shape(format!(
            "quantize_mxfp8: {} values in rows of {k} (need whole rows, k a multiple of 32)",
            x.len()
        )));
    }
    let mut q = vec![0u8; x.len()];
    let mut s = vec![0u8; x.len() / 32];
    for (b, blk) in x.chunks_exact(32).enumerate() {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = mxfp8_scale_byte(amax);
        let inv = mxfp8_inverse_scale(e);
        s[b] = e;
        for (i, &v) in blk.iter().enumerate() {
            q[b * 32 + i] = f32_to_e4m3(v * inv);
        }
    }
    Ok(Mxfp8Rows { q, s, k })
}

/// Lane `lane`'s B registers and scale-b-data for the 8 activation rows `cols` (`None`: an
/// empty column: zeros, scale 127), k-block `kb` (`fp4_load_b` in fp4_moe.cu). Lane `(g, t)`
/// loads bytes `4t..4t+4` and `16 + 4t..` of its column's block; SF_B at selector `{0, 0}` is
/// read from lane `4n` for column `n`, and every lane loads its own column's scale.
pub fn b_fragment(
    act: &Mxfp8Rows,
    cols: &[Option<usize>; 8],
    kb: usize,
    lane: usize,
) -> ([u32; 2], u32) {
    let (g, t) = (lane >> 2, lane & 3);
    match cols[g] {
        Some(r) => {
            let o = r * act.k + kb * 32 + 4 * t;
            let w =
                |o: usize| u32::from_le_bytes([act.q[o], act.q[o + 1], act.q[o + 2], act.q[o + 3]]);
            ([w(o), w(o + 16)], act.s[r * (act.k / 32) + kb] as u32)
        }
        None => ([0, 0], 127),
    }
}

/// `out[c][r] = sum_k W[r][k] * X[cols[c]][k]` computed the way the kernels do it: tiles of 16
/// weight rows by 8 activation rows, one block-scaled MMA per k-block accumulating into D,
/// every register packed by [`a_fragment`] / [`b_fragment`], every MMA executed by the CPU
/// model. Returns `[cols.len()][w.rows]`.
pub fn gemm_model(
    w: &Mxfp4Device,
    act: &Mxfp8Rows,
    cols: &[usize],
) -> Result<Vec<f32>, ModelError> {
    let k_ok = w.k == act.k && w.k.is_multiple_of(32);
    let w_ok = w.bytes.len() == w.rows * w.k / 32 * 17;
    let x_ok =
        act.q.len() == act.s.len() * 32 && cols.iter().all(|&c| (c + 1) * act.k <= act.q.len());
    if !(k_ok && w_ok && x_ok) {
        return Err(ModelError::Shape(format!(
            "gemm_model: weights {} x {} ({} bytes), activations of {} ({} bytes), columns {cols:?}",
            w.rows,
            w.k,
            w.bytes.len(),
            act.k,
            act.q.len()
        )));
    }
    let mut out = vec![0f32; cols.len() * w.rows];
    for c0 in (0..cols.len()).step_by(8) {
        let tile: [Option<usize>; 8] = std::array::from_fn(|i| cols.get(c0 + i).copied());
        for r0 in (0..w.rows).step_by(16) {
            let mut op = WarpOperands::default();
            for kb in 0..w.k / 32 {
                for lane in 0..WARP {
                    let (a, sfa) = a_fragment(w, r0, kb, lane);
                    let (b, sfb) = b_fragment(act, &tile, kb, lane);
                    op.a[lane] = a;
                    op.sfa[lane] = sfa;
                    op.b[lane] = b;
                    op.sfb[lane] = sfb;
                }
                op.c = model::mma_m16n8k32_e2m1_e4m3(&op)?;
            }
            for lane in 0..WARP {
                for j in 0..4 {
                    let (m, n) = model::c_element(lane, j);
                    if r0 + m < w.rows && c0 + n < cols.len() {
                        out[(c0 + n) * w.rows + r0 + m] = op.c[lane][j];
                    }
                }
            }
        }
    }
    Ok(out)
}
