//! Decode-path launches on int8 planes of the activations. The MoE (default): the router writes
//! x as planes, gate+up writes h as planes, and dp4a kernels in the f32 kernels' shape read
//! three of them (`moe_*_planes_*` in moe.cu: ~1e-7 of the row maximum, half the instructions
//! of the f32 decode). Opt-in instead, the int8 tensor-core products (kernels in linear.cu and
//! moe.cu):
//! activations split into four int8 planes with one scale per row, weights fed to
//! `mma.sync m16n8k32 s8` as they lie in memory (Q8_0 bytes, MXFP4 nibbles through a byte
//! table), so that a weight byte costs a few instructions and the products stay f32-grade.
//! Used, when [`CudaBackend::set_decode_mma`] turns them on, for the MXFP4 MoE at t <= 8 (every
//! (token, slot) pair is its own product) and for the Q8_0 matrix-vector products at t <= 2 of
//! matrices up to [`MMA_GEMV_MAX_ROWS`] rows. Exact to f32 rounding, but on an H100 slower than
//! the f32 kernels (2026-11-26, bench/RESULTS.md): they are not compute-bound there; the GEMV
//! loses most to quantizing x in every block (two passes over x, each a chain of L2 loads).

use crate::{A, CudaBackend, CudaTensor, CudaWeight, DevBuf, Result};
use gptoss_backend::{GgmlType, MoeConfig, MoeWeights};

/// The residual add and RMSNorm that [`CudaBackend::moe_range`] leaves to the router
/// (`moe_router_topk_q_add` in moe.cu): `x += y`, then `RMSNorm(x) * weight`.
pub(crate) struct PreNorm<'a> {
    pub(crate) y: &'a CudaTensor,
    pub(crate) weight: &'a CudaWeight,
    pub(crate) eps: f32,
}

/// Widest row `moe_router_topk_q_add` holds (ROUTER_ADD_MAX_D in moe.cu: four float4 per
/// thread of 256, and its shared row).
const ROUTER_ADD_MAX_D: usize = 4096;

/// Taller Q8_0 matrices (the output projection) keep the f32 kernel, which reads x once per
/// warp instead of quantizing it in every block.
pub(crate) const MMA_GEMV_MAX_ROWS: usize = 32768;
/// Most tokens the decode MoE kernels take (more go to the other paths).
pub(crate) const MMA_MOE_MAX_ROWS: usize = 8;
/// Static shared memory of gemv3_q8_0_mma beside its planes (red, xscale, part), rounded up.
const GEMV_STATIC_SMEM: usize = 1200;

impl CudaBackend {
    /// Whether the int8 tensor-core Q8_0 product takes `t` rows of `k` into `n` outputs.
    pub(crate) fn mma_gemv_fits(&self, dtype: GgmlType, t: usize, k: usize, n: usize) -> bool {
        self.decode_mma
            && !self.int8_activations
            && dtype == GgmlType::Q8_0
            && (1..=2).contains(&t)
            && k.is_multiple_of(32)
            && k > 0
            && n <= MMA_GEMV_MAX_ROWS
            && t * 4 * (k + 32) + GEMV_STATIC_SMEM <= 48 * 1024
    }

    /// Up to three Q8_0 products of the same x (t <= 2 rows of k): `mats` holds (weight, bias
    /// pointer and type, output pointer, rows). The caller checked [`Self::mma_gemv_fits`].
    pub(crate) fn mma_gemv(
        &self,
        x: u64,
        t: usize,
        k: usize,
        mats: &[(&CudaWeight, u64, i32, u64, usize)],
    ) -> Result<()> {
        let mut args = vec![A::P(x), A::I(t as i32), A::I(k as i32)];
        let mut blocks = 0usize;
        for i in 0..3 {
            // Unused slots repeat the last matrix with zero blocks (never reached).
            let j = i.min(mats.len() - 1);
            let (w, bp, bt, y, n) = mats[j];
            let nblk = if i < mats.len() { n.div_ceil(16) } else { 0 };
            blocks += nblk;
            args.extend([
                A::P(self.ptr(&w.buf)),
                A::L(w.nb),
                A::P(bp),
                A::I(bt),
                A::P(y),
                A::I(n as i32),
                A::I(nblk as i32),
            ]);
        }
        if blocks == 0 {
            return Ok(());
        }
        let smem = t * 4 * (k + 32);
        self.launch_smem(
            "gemv3_q8_0_mma",
            (blocks as u32, 1, 1),
            256,
            smem as u32,
            &args,
        )
    }

    /// Whether the decode MoE kernels take this block at `t` rows.
    pub(crate) fn mma_moe_fits(
        &self,
        w: &MoeWeights<CudaWeight>,
        t: usize,
        d_model: usize,
        n_ff: usize,
        k: usize,
    ) -> bool {
        (self.decode_mma || (self.decode_dp4a && 8 % k == 0))
            && !self.int8_activations
            && t <= MMA_MOE_MAX_ROWS
            && k <= 16
            && d_model.is_multiple_of(32)
            && n_ff.is_multiple_of(32)
            && [&w.gate, &w.up, &w.down]
                .iter()
                .all(|m| m.dtype == GgmlType::MXFP4)
            && w.router.dtype == GgmlType::F32
    }

    /// Whether the router can take the residual add and norm before the MoE
    /// ([`PreNorm`]): the planes router runs (decode, `mma_moe_fits`), the row fits the fused
    /// kernel, and the norm weight is F32 of the row's width.
    pub(crate) fn router_add_fits(
        &self,
        x: &CudaTensor,
        y: &CudaTensor,
        norm: &CudaWeight,
        w: &MoeWeights<CudaWeight>,
        cfg: &MoeConfig,
    ) -> bool {
        let d = x.cols;
        let gs = &w.gate.shape;
        self.router_norm
            && x.rows > 0
            && (x.rows, x.cols) == (y.rows, y.cols)
            && norm.dtype == GgmlType::F32
            && norm.numel() == d
            && d <= ROUTER_ADD_MAX_D
            && w.router.numel() == d * cfg.n_experts
            && w.router_bias.numel() == cfg.n_experts
            && gs.len() == 3
            && gs[0] == d
            && gs[2] == cfg.n_experts
            && (1..=16).contains(&cfg.top_k)
            && cfg.top_k <= cfg.n_experts
            && cfg.n_experts <= 256
            && self.mma_moe_fits(w, x.rows, d, gs[1], cfg.top_k)
    }

    /// Plane buffers for the router launch: x's planes [t, 4, d_model] and scales [t].
    pub(crate) fn mma_moe_planes(&self, t: usize, d_model: usize) -> Result<(DevBuf, DevBuf)> {
        Ok((self.scratch(t * 4 * d_model)?, self.scratch(t * 4)?))
    }

    /// Gate+up and down of the MXFP4 experts for t <= 8 rows, after moe_router_topk_q wrote
    /// ids, weights and x's planes. y [t, d_model] gets every row written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mma_moe_experts(
        &self,
        planes: &(DevBuf, DevBuf),
        t: usize,
        k: usize,
        d_model: usize,
        n_ff: usize,
        w: &MoeWeights<CudaWeight>,
        ids: u64,
        wts: u64,
        y: u64,
    ) -> Result<()> {
        let pairs = t * k;
        let hq = self.scratch(pairs * 4 * n_ff)?;
        // The dp4a kernels (moe.cu, `*_planes_*`) read the same planes with the same arguments,
        // one row per warp (gate+up) and two per warp with the k slots of a block (down).
        let (gu_name, gu_grid, down_name, down_grid) = if self.decode_mma {
            let gu = (n_ff.div_ceil(16) as u32, pairs as u32, 1);
            (
                "moe_gate_up_mma",
                gu,
                "moe_down_mma",
                (d_model.div_ceil(16) as u32, t as u32, 1),
            )
        } else {
            let gu = (n_ff.div_ceil(8) as u32, pairs as u32, 1);
            let down = (d_model.div_ceil(2 * (8 / k)) as u32, t as u32, 1);
            ("moe_gate_up_planes_r1", gu, "moe_down_planes_r2", down)
        };
        let bp = |b: &CudaWeight| (A::P(self.ptr(&b.buf)), A::I(b.dtype.id() as i32));
        let (gb, gbt) = bp(&w.gate_bias);
        let (ub, ubt) = bp(&w.up_bias);
        let (db, dbt) = bp(&w.down_bias);
        self.launch(
            gu_name,
            gu_grid,
            256,
            &[
                A::P(planes.0.ptr),
                A::P(planes.1.ptr),
                A::I(d_model as i32),
                A::P(self.ptr(&w.gate.buf)),
                A::L(w.gate.nb),
                A::P(self.ptr(&w.up.buf)),
                A::L(w.up.nb),
                gb,
                gbt,
                ub,
                ubt,
                A::P(ids),
                A::I(k as i32),
                A::I(n_ff as i32),
                A::P(hq.ptr),
            ],
        )?;
        self.launch(
            down_name,
            down_grid,
            256,
            &[
                A::P(hq.ptr),
                A::I(n_ff as i32),
                A::P(self.ptr(&w.down.buf)),
                A::L(w.down.nb),
                db,
                dbt,
                A::P(ids),
                A::P(wts),
                A::I(k as i32),
                A::I(d_model as i32),
                A::P(y),
            ],
        )
    }
}
