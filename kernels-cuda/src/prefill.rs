//! Tensor-core prefill: the many-row paths of `linear` and `moe` (kernels in
//! `kernels/gemm_tc.cu`, mma.sync m16n8k16 with f32 accumulation, sm_80 and newer).
//!
//! From [`tc_min_rows`] rows on (default 9, the first row count the matrix-vector kernels do
//! not take), `linear` runs a tiled tensor-core GEMM, the MXFP4 MoE groups its (token, slot)
//! pairs by expert on the GPU and runs grouped GEMMs (gate and up with SwiGLU-OAI and biases
//! fused, then down with the bias and routing weight into one f32 row per pair, summed over
//! the slots in slot order: deterministic), and attention runs a flash kernel (f32 scores and
//! softmax). On sm_90a the bf16 MoE GEMMs run on wgmma instead (`kernels/moe_wgmma.cu`: the
//! MXFP4 weights expanded to bf16 in the registers that feed the warpgroup MMA, the token rows
//! staged in shared memory by cp.async; [`CudaBackend::set_moe_wgmma`]), and so do the Q8_0
//! products (`kernels/gemm_wgmma.cu`: q/k/v in one launch, the attention output;
//! [`CudaBackend::set_linear_wgmma`]); both give the same products and k16 sums as the
//! mma.sync kernels (bit-equal outputs on an H100).
//!
//! Precision ([`TcPrecision`], `GPTOSS_CUDA_TC_PRECISION`): by default (`bf16`) each product
//! is one mma.sync of 16-bit roundings (weights as bf16, or f16 for Q8_0 and F16; activations
//! rounded to the same type; f16 attention; the MoE's h in bf16): per-product NMSE ~1e-6.
//! `split` keeps every tensor-core product within ~2^-17 of the f32 product: an f32
//! activation `a = hi + lo` with `hi = bf16(a)`, `lo = bf16(a - hi)` takes two mma.sync
//! (`hi w + lo w`) where the weight is exact in bf16 (MXFP4: E2M1 times a power of two; BF16),
//! three (`+ hi w_lo`) where it is not (Q8_0 as the exact f32 `q d`, F16, F32, each split the
//! same way); the MoE's h stays f32; attention splits Q, this call's K and V and the
//! probabilities into f16 hi + lo (three products each; cached K and V are f16 and exact). A
//! comma list of paths (`linear`, `moe`, `attention`) splits only those. Why: a random
//! GPT-OSS model's router sees near-ties among its experts, so 16-bit rounding of activations
//! flips experts; on the synthetic 20b (H100, bench/RESULTS.md) `split` moves the logits of a
//! 100-token prompt by NMSE 2.3e-4 from the CPU reference (bf16: 1.3e-2) at 12.0k tok/s pp2048
//! (bf16: 18.3k), which is why it is not the default.
//!
//! Small models keep the f32-accurate kernels: the paths above are taken only where the model
//! width (k of a linear, d_model of the MoE, heads x head_dim of attention) is at least
//! [`tc_min_width`] (default 1024). The tiny random test model (width 64) amplifies per-product
//! errors of ~1e-6 about a hundredfold through its 4 layers and would miss the 1e-4 logits
//! limit against transformers with the bf16 kernels; GPT-OSS widths are 2880 and up.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    A, CudaBackend, CudaKvCache, CudaTensor, CudaWeight, DevBuf, MAX_GEMV_ROWS, Result, dev_err,
};
use gptoss_backend::{AttentionConfig, GgmlType, MoeWeights};

/// Rows of the tensor-core tiles (tokens per tile), as `TC_BM` in gemm_tc.cu.
const TC_BM: usize = 128;
/// Outputs per tile of the dense and down GEMMs, as `TC_BN`.
const TC_BN: usize = 128;
/// ff columns per tile of the fused gate/up GEMM (gate and up share one 128-row weight tile).
const TC_FF: usize = 64;

/// The row count from which `linear` and the MoE take the tensor-core kernels:
/// `GPTOSS_CUDA_TC_MIN_ROWS` if set (a large value turns them off, for comparisons), else one
/// more than the matrix-vector kernels' limit.
pub fn tc_min_rows() -> usize {
    static V: OnceLock<usize> = OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("GPTOSS_CUDA_TC_MIN_ROWS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(MAX_GEMV_ROWS + 1)
    })
}

/// Set by [`set_tc_min_width`]; `usize::MAX` = not set (the environment or the default rules).
static MIN_WIDTH_OVERRIDE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The model width from which the tensor-core paths are taken (see the module docs):
/// [`set_tc_min_width`] if called, else `GPTOSS_CUDA_TC_MIN_WIDTH`, else 1024.
pub fn tc_min_width() -> usize {
    let o = MIN_WIDTH_OVERRIDE.load(Ordering::Relaxed);
    if o != usize::MAX {
        return o;
    }
    static V: OnceLock<usize> = OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("GPTOSS_CUDA_TC_MIN_WIDTH")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024)
    })
}

/// Override [`tc_min_width`] for the whole process (tests use 0 to run the tensor-core kernels
/// on small odd shapes too).
pub fn set_tc_min_width(width: usize) {
    MIN_WIDTH_OVERRIDE.store(width, Ordering::Relaxed);
}

/// How the tensor-core kernels round their inputs (see the module docs), for
/// [`CudaBackend::set_tc_precision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcPrecision {
    /// Activations (and weights not exact in bf16) split into two 16-bit parts, two or three
    /// products each: within ~2^-17 of f32, every path.
    Split,
    /// One product of 16-bit roundings, every path: faster, per-product NMSE ~1e-6.
    Bf16,
}

/// `tc_split` bits: which paths use the split kernels.
const TC_LINEAR: u8 = 1;
const TC_MOE: u8 = 2;
const TC_ATTENTION: u8 = 4;

/// The split paths `GPTOSS_CUDA_TC_PRECISION` asks for: none when unset or `bf16`, all for
/// `split`, else those of the comma list among `linear`, `moe`, `attention`.
pub(crate) fn tc_split_from_env() -> u8 {
    let v = std::env::var("GPTOSS_CUDA_TC_PRECISION").unwrap_or_default();
    v.split(',')
        .map(|s| match s.trim().to_ascii_lowercase().as_str() {
            "split" => TC_LINEAR | TC_MOE | TC_ATTENTION,
            "linear" => TC_LINEAR,
            "moe" => TC_MOE,
            "attention" => TC_ATTENTION,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

impl CudaBackend {
    /// Set the tensor-core precision of every path for this backend (the default comes from
    /// `GPTOSS_CUDA_TC_PRECISION`).
    pub fn set_tc_precision(&mut self, p: TcPrecision) {
        self.tc_split = match p {
            TcPrecision::Split => TC_LINEAR | TC_MOE | TC_ATTENTION,
            TcPrecision::Bf16 => 0,
        };
    }

    fn split(&self, path: u8) -> bool {
        self.tc_split & path != 0
    }

    /// The MoE of `t` rows of width `d_model` takes the bf16 tensor-core kernels (the fast
    /// prefill; not the f32 kernels nor split precision, which keep the kernels their accuracy
    /// checks were measured with).
    pub(crate) fn moe_bf16_prefill(&self, t: usize, d_model: usize) -> bool {
        t >= tc_min_rows() && d_model >= tc_min_width() && path_on("moe") && !self.split(TC_MOE)
    }
}

/// Dynamic shared memory of the split kernels (as TCS_SMEM in gemm_tc.cu, FLASH_TCS_SMEM in
/// flash_tc.cu): `nb` weight tiles of 128 x 40 16-bit elements besides two activation tiles,
/// each double-buffered.
fn tcs_smem(nb: usize) -> u32 {
    ((4 + 2 * nb) * TC_BM * 40 * 2) as u32
}

fn flash_tcs_smem(hd: usize) -> u32 {
    (2 * 2 * 64 * (hd + 8) * 2) as u32
}

/// Which tensor-core paths are on: all, unless `GPTOSS_CUDA_TC_OFF` lists some of `linear`,
/// `moe`, `attention` (comma-separated), to measure what each one brings.
fn path_on(name: &str) -> bool {
    static OFF: OnceLock<Vec<String>> = OnceLock::new();
    !OFF.get_or_init(|| {
        std::env::var("GPTOSS_CUDA_TC_OFF")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    })
    .iter()
    .any(|s| s == name)
}

impl CudaBackend {
    /// `y = x W^T + b` on tensor cores when `t` is at least [`tc_min_rows`] and the weight type
    /// and `k` (a multiple of 32) allow it; `None` leaves the product to the other kernels.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_tc(
        &self,
        x: u64,
        t: usize,
        k: usize,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        y: u64,
        n: usize,
    ) -> Option<Result<()>> {
        if t < tc_min_rows()
            || t == 0
            || n == 0
            || k == 0
            || !k.is_multiple_of(32)
            || k < tc_min_width()
            || !path_on("linear")
        {
            return None;
        }
        // (kernel, split kernel, its weight tiles: 1 where the weight is exact in bf16).
        let (kern, kern_split, nb) = match w.dtype {
            GgmlType::Q8_0 => ("gemm_tc_q8_0", "gemm_tcs_q8_0", 2),
            GgmlType::MXFP4 => ("gemm_tc_mxfp4", "gemm_tcs_mxfp4", 1),
            GgmlType::F16 => ("gemm_tc_f16", "gemm_tcs_f16", 2),
            GgmlType::BF16 => ("gemm_tc_bf16", "gemm_tcs_bf16", 1),
            GgmlType::F32 => ("gemm_tc_f32", "gemm_tcs_f32", 2),
            _ => return None,
        };
        if w.dtype == GgmlType::Q8_0 && self.linear_wg_fits(k) {
            return Some(self.linear_wg(x, t, k, &[(w, bias, y, n)]));
        }
        let (kern, smem) = if self.split(TC_LINEAR) {
            (kern_split, tcs_smem(nb))
        } else {
            (kern, 0)
        };
        let mut args = vec![A::P(x), A::I(t as i32), A::I(k as i32)];
        args.extend(self.matrix_args(w, bias, y, n));
        Some(self.launch_dyn(
            kern,
            (n.div_ceil(TC_BN) as u32, t.div_ceil(TC_BM) as u32, 1),
            256,
            smem,
            &args,
        ))
    }

    /// One matrix's arguments of the dense GEMM kernels: the weight and its block count, the
    /// bias (null and type 0 when absent), the output and its width.
    fn matrix_args(&self, w: &CudaWeight, bias: Option<&CudaWeight>, y: u64, n: usize) -> [A; 6] {
        let (bp, bt) = bias.map_or((0, 0), |b| (self.ptr(&b.buf), b.dtype.id() as i32));
        [
            A::P(self.ptr(&w.buf)),
            A::L(w.nb),
            A::P(bp),
            A::I(bt),
            A::P(y),
            A::I(n as i32),
        ]
    }

    /// The Q8_0 products on wgmma apply (gemm_wgmma.cu): bf16 precision on the linear path,
    /// compiled for sm_90a, switched on, and k whole stages of 64.
    fn linear_wg_fits(&self, k: usize) -> bool {
        self.linear_wgmma
            && !self.split(TC_LINEAR)
            && self.arch == "sm_90a"
            && k.is_multiple_of(WG_BK)
    }

    /// `linear_many` of prefill rows: up to three Q8_0 matrices that share x (q, k, v) in one
    /// wgmma launch, where [`CudaBackend::linear_tc`] would take each of them to wgmma anyway.
    /// `None` leaves them to `linear` one by one.
    pub(crate) fn linear_many_wg(
        &self,
        x: &CudaTensor,
        ws: &[(&CudaWeight, Option<&CudaWeight>)],
        dims: &[(usize, usize)],
    ) -> Option<Result<Vec<CudaTensor>>> {
        let (t, k) = (x.rows, x.cols);
        if !(2..=3).contains(&ws.len())
            || t < tc_min_rows()
            || k < tc_min_width()
            || !path_on("linear")
            || !self.linear_wg_fits(k)
            || ws.iter().any(|(w, _)| w.dtype != GgmlType::Q8_0)
            || dims.iter().any(|&(kk, n)| kk != k || n == 0)
        {
            return None;
        }
        let run = || {
            let outs = dims
                .iter()
                .map(|&(_, n)| self.tensor(t, n))
                .collect::<Result<Vec<_>>>()?;
            let mats: Vec<_> = ws
                .iter()
                .zip(&outs)
                .zip(dims)
                .map(|(((w, b), o), &(_, n))| (*w, *b, self.ptr(&o.buf), n))
                .collect();
            self.linear_wg(self.ptr(&x.buf), t, k, &mats)?;
            Ok(outs)
        };
        Some(run())
    }

    /// x `[t, k]` f32 as the 16-bit B rows of a wgmma kernel, in its k order, by `kernel`
    /// (`moe_wg_prep_x`: bf16, `gemm_wg_prep_x`: f16).
    fn wg_prep_x(&self, kernel: &str, x: u64, t: usize, k: usize) -> Result<DevBuf> {
        let xh = self.scratch(t * k * 2)?;
        self.launch(
            kernel,
            ((t * k).div_ceil(512) as u32, 1, 1),
            256,
            &[A::P(x), A::I(t as i32), A::I(k as i32), A::P(xh.ptr)],
        )?;
        Ok(xh)
    }

    /// `y_m = x W_m^T + b_m` for one to three Q8_0 matrices `(W_m, b_m, y_m, n_m)` of one `k`
    /// on wgmma: x to f16 rows in the kernel's k order, then one `gemm_wg_q8_0` launch over
    /// the matrices' 256-row tiles. The caller checked [`CudaBackend::linear_wg_fits`].
    fn linear_wg(
        &self,
        x: u64,
        t: usize,
        k: usize,
        mats: &[(&CudaWeight, Option<&CudaWeight>, u64, usize)],
    ) -> Result<()> {
        let xh = self.wg_prep_x("gemm_wg_prep_x", x, t, k)?;
        let mut args = vec![A::P(xh.ptr), A::I(t as i32), A::I(k as i32)];
        let mut tiles = 0;
        for i in 0..3 {
            match mats.get(i) {
                Some(&(w, b, y, n)) => {
                    args.extend(self.matrix_args(w, b, y, n));
                    tiles += n.div_ceil(WG_LINEAR_ROWS);
                }
                None => args.extend([A::P(0), A::L(0), A::P(0), A::I(0), A::P(0), A::I(0)]),
            }
        }
        self.launch_dyn(
            "gemm_wg_q8_0",
            (tiles as u32, t.div_ceil(TC_BM) as u32, 1),
            512,
            WG_SMEM,
            &args,
        )
    }

    /// The MXFP4 MoE on tensor cores for `t` tokens (at least [`tc_min_rows`]), after the
    /// router has written `ids` and `wts` (`[t, kk]`): group by expert, gate/up, down, sum over
    /// the slots into `y` `[t, d_model]`. `None` when the shapes or types do not fit.
    /// `dropped`: some ids are -1 (picks of another rank's experts, see `moe_localize_ids`),
    /// which the grouping leaves out; their slot rows are zeroed so that the sum skips them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moe_tc(
        &self,
        x: u64,
        t: usize,
        d_model: usize,
        n_ff: usize,
        w: &MoeWeights<CudaWeight>,
        n_exp: usize,
        kk: usize,
        ids: &DevBuf,
        wts: &DevBuf,
        y: u64,
        dropped: bool,
    ) -> Option<Result<()>> {
        let all_mxfp4 = [&w.gate, &w.up, &w.down]
            .iter()
            .all(|m| m.dtype == GgmlType::MXFP4);
        if t < tc_min_rows()
            || t == 0
            || d_model < tc_min_width()
            || !path_on("moe")
            || !all_mxfp4
            || d_model == 0
            || n_ff == 0
            || !d_model.is_multiple_of(32)
            || !n_ff.is_multiple_of(32)
            || n_exp > 256
        {
            return None;
        }
        Some(self.moe_tc_run(x, t, d_model, n_ff, w, n_exp, kk, ids, wts, y, dropped))
    }

    #[allow(clippy::too_many_arguments)]
    fn moe_tc_run(
        &self,
        x: u64,
        t: usize,
        d_model: usize,
        n_ff: usize,
        w: &MoeWeights<CudaWeight>,
        n_exp: usize,
        kk: usize,
        ids: &DevBuf,
        wts: &DevBuf,
        y: u64,
        dropped: bool,
    ) -> Result<()> {
        let pairs = t * kk;
        // Each expert's rows round up to whole tiles: at most pairs / TC_BM + n_exp tiles.
        let max_tiles = pairs.div_ceil(TC_BM) + n_exp;
        let perm = self.scratch(pairs * 4)?;
        let seg_end = self.scratch(n_exp * 4)?;
        let tiles = self.scratch((1 + 2 * max_tiles) * 4)?;
        self.launch(
            "moe_tc_group",
            (1, 1, 1),
            1024,
            &[
                A::P(ids.ptr),
                A::I(pairs as i32),
                A::I(n_exp as i32),
                A::P(perm.ptr),
                A::P(seg_end.ptr),
                A::P(tiles.ptr),
            ],
        )?;
        let g = MoeGroups {
            perm,
            seg_end,
            tiles,
            max_tiles,
        };
        // h: [pairs, n_ff] in sorted order, f32 (split) or bf16.
        let sp = self.split(TC_MOE);
        if self.wgmma_fits(d_model, n_ff) {
            return self.moe_wg_run(x, t, d_model, n_ff, w, kk, wts, y, dropped, &g);
        }
        let (gate_up, down, h_bytes, smem) = if sp {
            ("moe_tcs_gate_up", "moe_tcs_down", 4, tcs_smem(1))
        } else {
            ("moe_tc_gate_up", "moe_tc_down", 2, 0)
        };
        let h = self.scratch(pairs * n_ff * h_bytes)?;
        self.launch_dyn(
            gate_up,
            (n_ff.div_ceil(TC_FF) as u32, max_tiles as u32, 1),
            256,
            smem,
            &self.gate_up_args(x, d_model, w, &g, kk, n_ff, h.ptr),
        )?;
        // One f32 row per (token, slot), summed in slot order below.
        let yp = self.moe_slot_rows(pairs, d_model, dropped)?;
        self.launch_dyn(
            down,
            (d_model.div_ceil(TC_BN) as u32, max_tiles as u32, 1),
            256,
            smem,
            &self.down_args(h.ptr, n_ff, w, &g, wts, d_model, yp.ptr),
        )?;
        self.moe_sum(&yp, t, kk, d_model, y)
    }
}

/// Dynamic shared memory of the wgmma MoE kernels (WG_SMEM in moe_wgmma.cu): four stages of a
/// 128-row x 64-k bf16 tile.
const WG_SMEM: u32 = 4 * 128 * 64 * 2;
/// k per stage of the wgmma kernels (WG_BK): d_model and n_ff (k of a linear) must be multiples
/// of it.
const WG_BK: usize = 64;
/// Weight rows per block of `gemm_wg_q8_0` (WG_LINEAR_ROWS in gemm_wgmma.cu: 4 warpgroups of
/// 64).
const WG_LINEAR_ROWS: usize = 256;

/// What `moe_tc_group` wrote: the (token, slot) pairs sorted by expert, each expert's segment
/// end and the list of 128-row tiles (its length first), for at most `max_tiles` tiles.
struct MoeGroups {
    perm: DevBuf,
    seg_end: DevBuf,
    tiles: DevBuf,
    max_tiles: usize,
}

impl CudaBackend {
    /// The wgmma MoE kernels apply: bf16 precision on the MoE path, compiled for sm_90a,
    /// switched on, and both widths whole stages of 64 k.
    fn wgmma_fits(&self, d_model: usize, n_ff: usize) -> bool {
        self.moe_wgmma != 0
            && !self.split(TC_MOE)
            && self.arch == "sm_90a"
            && d_model.is_multiple_of(WG_BK)
            && n_ff.is_multiple_of(WG_BK)
    }

    /// The arguments of every grouped gate/up kernel: x rows (f32 for mma.sync, the bf16 rows
    /// of `moe_wg_prep_x` for wgmma), the expert matrices and biases, the grouping, h.
    #[allow(clippy::too_many_arguments)]
    fn gate_up_args(
        &self,
        x: u64,
        d_model: usize,
        w: &MoeWeights<CudaWeight>,
        g: &MoeGroups,
        kk: usize,
        n_ff: usize,
        h: u64,
    ) -> Vec<A> {
        vec![
            A::P(x),
            A::I(d_model as i32),
            A::P(self.ptr(&w.gate.buf)),
            A::L(w.gate.nb),
            A::P(self.ptr(&w.up.buf)),
            A::L(w.up.nb),
            A::P(self.ptr(&w.gate_bias.buf)),
            A::I(w.gate_bias.dtype.id() as i32),
            A::P(self.ptr(&w.up_bias.buf)),
            A::I(w.up_bias.dtype.id() as i32),
            A::P(g.perm.ptr),
            A::P(g.seg_end.ptr),
            A::P(g.tiles.ptr),
            A::I(kk as i32),
            A::I(n_ff as i32),
            A::P(h),
        ]
    }

    /// The arguments of every grouped down kernel: h, the down matrices and bias, the
    /// grouping and routing weights, the per-pair rows `yp`.
    #[allow(clippy::too_many_arguments)]
    fn down_args(
        &self,
        h: u64,
        n_ff: usize,
        w: &MoeWeights<CudaWeight>,
        g: &MoeGroups,
        wts: &DevBuf,
        d_model: usize,
        yp: u64,
    ) -> Vec<A> {
        vec![
            A::P(h),
            A::I(n_ff as i32),
            A::P(self.ptr(&w.down.buf)),
            A::L(w.down.nb),
            A::P(self.ptr(&w.down_bias.buf)),
            A::I(w.down_bias.dtype.id() as i32),
            A::P(g.perm.ptr),
            A::P(wts.ptr),
            A::P(g.seg_end.ptr),
            A::P(g.tiles.ptr),
            A::I(d_model as i32),
            A::P(yp),
        ]
    }

    /// The grouped MoE GEMMs on wgmma (moe_wgmma.cu), after `moe_tc_group`: x to bf16 rows in
    /// the kernels' k order, gate/up, down, the slot sum. Same products and k16 sums as the
    /// mma.sync bf16 kernels.
    #[allow(clippy::too_many_arguments)]
    fn moe_wg_run(
        &self,
        x: u64,
        t: usize,
        d_model: usize,
        n_ff: usize,
        w: &MoeWeights<CudaWeight>,
        kk: usize,
        wts: &DevBuf,
        y: u64,
        dropped: bool,
        g: &MoeGroups,
    ) -> Result<()> {
        let pairs = t * kk;
        let xb = self.wg_prep_x("moe_wg_prep_x", x, t, d_model)?;
        let h = self.scratch(pairs * n_ff * 2)?;
        // Warpgroups a block (64 weight rows each): 4 or 2.
        let nwg = self.moe_wgmma;
        let (gate_up, down) = if nwg == 4 {
            ("moe_wg4_gate_up", "moe_wg4_down")
        } else {
            ("moe_wg_gate_up", "moe_wg_down")
        };
        self.launch_dyn(
            gate_up,
            (n_ff.div_ceil(32 * nwg) as u32, g.max_tiles as u32, 1),
            128 * nwg as u32,
            WG_SMEM,
            &self.gate_up_args(xb.ptr, d_model, w, g, kk, n_ff, h.ptr),
        )?;
        let yp = self.moe_slot_rows(pairs, d_model, dropped)?;
        self.launch_dyn(
            down,
            (d_model.div_ceil(64 * nwg) as u32, g.max_tiles as u32, 1),
            128 * nwg as u32,
            WG_SMEM,
            &self.down_args(h.ptr, n_ff, w, g, wts, d_model, yp.ptr),
        )?;
        self.moe_sum(&yp, t, kk, d_model, y)
    }

    /// The f32 row per (token, slot) that the down kernels write (zeroed when some pairs
    /// were dropped, so that the slot sum skips them).
    fn moe_slot_rows(&self, pairs: usize, d_model: usize, dropped: bool) -> Result<DevBuf> {
        let yp = self.scratch(pairs * d_model * 4)?;
        if dropped {
            // SAFETY: `yp` is a live pool allocation of exactly these bytes, on our stream.
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    yp.ptr,
                    0,
                    pairs * d_model * 4,
                    self.stream.cu_stream(),
                )
            }
            .map_err(dev_err)?;
        }
        Ok(yp)
    }

    /// y[r] = the sum over slots, in slot order, of the pair rows.
    fn moe_sum(&self, yp: &DevBuf, t: usize, kk: usize, d_model: usize, y: u64) -> Result<()> {
        self.launch(
            "moe_sum_slots",
            (d_model.div_ceil(256) as u32, t as u32, 1),
            256,
            &[A::P(yp.ptr), A::I(kk as i32), A::I(d_model as i32), A::P(y)],
        )
    }
}

impl CudaBackend {
    /// Attention of `t` new rows (at least [`tc_min_rows`]) by the tensor-core flash kernel for
    /// head dims 32, 64 and 128, then the new keys and values into the ring; `None` leaves the
    /// call to the other kernels. The caller has checked the shapes and the cache state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_tc(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        cache: &mut CudaKvCache,
        pos0: usize,
        sinks: &CudaWeight,
        cfg: &AttentionConfig,
        out: &CudaTensor,
    ) -> Option<Result<()>> {
        let t = q.rows;
        let sp = self.split(TC_ATTENTION);
        let kern = match (cfg.head_dim, sp) {
            (32, false) => "flash_attn_tc_d32",
            (64, false) => "flash_attn_tc_d64",
            (128, false) => "flash_attn_tc_d128",
            (32, true) => "flash_attn_tcs_d32",
            (64, true) => "flash_attn_tcs_d64",
            (128, true) => "flash_attn_tcs_d128",
            _ => return None,
        };
        if t < tc_min_rows()
            || t == 0
            || cfg.n_heads * cfg.head_dim < tc_min_width()
            || !path_on("attention")
        {
            return None;
        }
        Some(self.attention_tc_run(kern, q, k, v, cache, pos0, sinks, cfg, out))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_tc_run(
        &self,
        kern: &str,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        cache: &mut CudaKvCache,
        pos0: usize,
        sinks: &CudaWeight,
        cfg: &AttentionConfig,
        out: &CudaTensor,
    ) -> Result<()> {
        let t = q.rows;
        let (h, kvh, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (kc, vc) = (self.ptr(&cache.k), self.ptr(&cache.v));
        let smem = if self.split(TC_ATTENTION) {
            flash_tcs_smem(hd)
        } else {
            0
        };
        self.launch_dyn(
            kern,
            (t.div_ceil(64) as u32, h as u32, 1),
            128,
            smem,
            &[
                A::P(self.ptr(&q.buf)),
                A::P(self.ptr(&k.buf)),
                A::P(self.ptr(&v.buf)),
                A::P(kc),
                A::P(vc),
                A::I(t as i32),
                A::I(pos0 as i32),
                A::I(h as i32),
                A::I(kvh as i32),
                A::I(cache.cap as i32),
                A::I(cfg.window.unwrap_or(0) as i32),
                A::F(cfg.scale),
                A::P(self.ptr(&sinks.buf)),
                A::I(sinks.dtype.id() as i32),
                A::P(self.ptr(&out.buf)),
            ],
        )?;
        // Only the last `cap` rows survive in a ring.
        let first = t.saturating_sub(cache.cap);
        self.launch(
            "kv_append",
            ((t - first) as u32, kvh as u32, 1),
            hd as u32,
            &[
                A::P(self.ptr(&k.buf)),
                A::P(self.ptr(&v.buf)),
                A::P(kc),
                A::P(vc),
                A::I(first as i32),
                A::I(pos0 as i32),
                A::I(kvh as i32),
                A::I(hd as i32),
                A::I(cache.cap as i32),
            ],
        )?;
        cache.len = pos0 + t;
        Ok(())
    }
}

impl CudaBackend {
    /// `launch` with `smem` bytes of dynamic shared memory; above the default 48 KiB the kernel
    /// is first allowed that much (a per-function attribute of this context; setting it again
    /// is cheap, and a device without that much shared memory per block fails here cleanly).
    fn launch_dyn(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[A],
    ) -> Result<()> {
        if smem > 48 * 1024 {
            let f = self
                .funcs
                .get(name)
                .ok_or_else(|| super::dev_err(format!("kernel {name} not loaded")))?;
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(super::dev_err)?;
        }
        self.launch_smem(name, grid, block, smem, args)
    }
}
