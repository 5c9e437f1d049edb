//! The residual add and RMSNorm that end one sub-block, fused into the first kernel of the
//! next (decode, one token): the q/k/v products (`gemvf3n_*` in linear.cu) and the MoE router
//! (`moe_router_topk_n` in moe.cu) each compute the normed row into shared memory themselves,
//! every block its own copy, so that a decode step has no separate norm launches (48 fewer on
//! gpt-oss-20b). Block 0 writes the new residual to a fresh tensor, which replaces `h`: the
//! other blocks still read the old one. Opt-in (`GPTOSS_CUDA_FUSE_NORM=1`): on an H100 with
//! programmatic dependent launch it measured slower than the separate norm kernel (tg128 411.6
//! vs 425.9 tok/s, 2026-11-26, bench/RESULTS.md): every block then waits for its own norm,
//! while the separate kernel runs as the products' weight loads are already in flight.

use super::{A, CudaBackend, CudaTensor, CudaWeight, Result, check_linear};
use gptoss_backend::{Backend, GgmlType, MoeConfig, MoeWeights};

/// Largest row whose normed copy fits the kernels' shared memory (48 KiB of f32).
const MAX_NORM_COLS: usize = 12 * 1024;

/// Whether the fused kernels are wanted (`GPTOSS_CUDA_FUSE_NORM=1`; default no).
pub(crate) fn fuse_norm_default() -> bool {
    std::env::var("GPTOSS_CUDA_FUSE_NORM").is_ok_and(|v| v == "1")
}

/// What the fused router needs besides the MoE weights: the residual, the sub-block output to
/// add, the norm, and where the new residual goes.
pub(crate) struct NormIn<'a> {
    pub h: &'a CudaTensor,
    pub y: &'a CudaTensor,
    pub norm: &'a CudaWeight,
    pub eps: f32,
    pub hout: &'a CudaTensor,
}

impl CudaBackend {
    /// Whether one token's `h += y; rms_norm(h) * norm` can run inside the next kernel.
    fn norm_fusable(&self, h: &CudaTensor, y: &CudaTensor, norm: &CudaWeight) -> bool {
        self.fuse_norm
            && h.rows == 1
            && y.rows == 1
            && h.cols == y.cols
            && h.cols.is_multiple_of(4)
            && (4..=MAX_NORM_COLS).contains(&h.cols)
            && norm.numel() == h.cols
            && !norm.dtype.is_quantized()
    }

    /// [`Backend::add_rms_norm_linear_many`]: one `gemvf3n_*` launch for one token and up to
    /// three Q8_0 or MXFP4 matrices (the f32 decode path), else the two steps apart.
    pub(crate) fn add_rms_norm_linear_many_impl(
        &self,
        h: &mut CudaTensor,
        y: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        ws: &[(&CudaWeight, Option<&CudaWeight>)],
    ) -> Result<Vec<CudaTensor>> {
        let fits = self.norm_fusable(h, y, norm)
            && (1..=3).contains(&ws.len())
            && !self.int8_activations
            && matches!(ws[0].0.dtype, GgmlType::Q8_0 | GgmlType::MXFP4)
            && ws.iter().all(|(w, _)| w.dtype == ws[0].0.dtype);
        let dims = if fits {
            ws.iter()
                .map(|(w, b)| check_linear(h, w, *b))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let k = h.cols;
        if !fits
            || dims.iter().any(|&(_, n)| n == 0)
            || dims
                .iter()
                .any(|&(_, n)| self.mma_gemv_fits(ws[0].0.dtype, 1, k, n))
        {
            let x = self.add_rms_norm(h, y, norm, eps)?;
            return self.linear_many(&x, ws);
        }
        let outs = dims
            .iter()
            .map(|&(_, n)| self.tensor(1, n))
            .collect::<Result<Vec<_>>>()?;
        let hout = self.tensor(1, k)?;
        let mut args = vec![
            A::P(self.ptr(&h.buf)),
            A::P(self.ptr(&y.buf)),
            A::P(self.ptr(&norm.buf)),
            A::I(norm.dtype.id() as i32),
            A::F(eps),
            A::P(self.ptr(&hout.buf)),
            A::I(k as i32),
        ];
        let mut blocks = 0usize;
        for i in 0..3 {
            // Unused slots repeat the last matrix with zero blocks (never reached).
            let j = i.min(ws.len() - 1);
            let (w, b) = ws[j];
            let n = dims[j].1;
            let nblk = if i < ws.len() { n.div_ceil(8) } else { 0 };
            blocks += nblk;
            let (bp, bt) = match b {
                Some(b) => (self.ptr(&b.buf), b.dtype.id() as i32),
                None => (0, 0),
            };
            args.extend([
                A::P(self.ptr(&w.buf)),
                A::L(w.nb),
                A::P(bp),
                A::I(bt),
                A::P(self.ptr(&outs[j].buf)),
                A::I(n as i32),
                A::I(nblk as i32),
            ]);
        }
        let kern = if ws[0].0.dtype == GgmlType::Q8_0 {
            "gemvf3n_q8_0"
        } else {
            "gemvf3n_mxfp4"
        };
        self.launch_smem(kern, (blocks as u32, 1, 1), 256, (k * 4) as u32, &args)?;
        *h = hout;
        Ok(outs)
    }

    /// [`Backend::add_rms_norm_moe`]: for one token on the f32 router path, the router kernel
    /// computes the norm (and writes the normed row for the experts); else the steps apart.
    pub(crate) fn add_rms_norm_moe_impl(
        &self,
        h: &mut CudaTensor,
        y: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        w: &MoeWeights<CudaWeight>,
        cfg: &MoeConfig,
    ) -> Result<CudaTensor> {
        let n_ff = w.gate.shape.get(1).copied().unwrap_or(0);
        if !self.norm_fusable(h, y, norm) || self.mma_moe_fits(w, 1, h.cols, n_ff, cfg.top_k) {
            let x = self.add_rms_norm(h, y, norm, eps)?;
            return self.moe(&x, w, cfg);
        }
        let hout = self.tensor(1, h.cols)?;
        let xm = self.tensor(1, h.cols)?;
        let fused = NormIn {
            h,
            y,
            norm,
            eps,
            hout: &hout,
        };
        let out = self.moe_range(&xm, w, cfg, 0..cfg.n_experts, Some(&fused))?;
        *h = hout;
        Ok(out)
    }
}
