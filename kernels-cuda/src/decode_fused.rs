//! One-token steps fused into fewer launches (the decode step of one token, t = 1):
//! - q, k, v products with RoPE applied as q and k are written (`gemvf3_*_r1_rope`);
//! - the attention output projection with the residual add and the MoE's norm run by its last
//!   block (`gemvf_*_r1_add_norm`);
//! - the dp4a MoE's down projection with the residual add and the next layer's norm run by its
//!   last block (`moe_down_planes_r2_add_norm`).
//!
//! Three launches fewer per layer than the separate `rope_qk` and `add_rms_norm` kernels. The
//! arithmetic is that of the separate kernels (the norm sums its squares in another order).
//! Anything else (several rows, other weight types, the opt-in int8 paths) takes the separate
//! kernels. `GPTOSS_CUDA_DECODE_FUSE` picks the fused forms (`0`, `all`, or a list of `rope`,
//! `o`, `down`; [`CudaBackend::set_decode_fuse`] turns all on or off), for A/B measurements.

use crate::{
    A, CudaBackend, CudaTensor, CudaWeight, Result, TICKETS_NORM, check_linear, dev_err, shape_err,
};
use cudarc::driver::CudaSlice;
use gptoss_backend::{Backend, GgmlType, MoeConfig, MoeWeights, Rope};

/// What a fused residual add + norm epilogue needs: the residual h [d] (updated in place), the
/// norm weight, eps, the output [d] and the ticket that elects the last block.
pub(crate) struct AddNorm {
    h: u64,
    w: u64,
    wt: i32,
    eps: f32,
    out: u64,
    counter: u64,
}

impl AddNorm {
    /// The epilogue's kernel arguments, in the order the `*_add_norm` kernels take them.
    pub(crate) fn args(&self) -> [A; 6] {
        [
            A::P(self.h),
            A::P(self.w),
            A::I(self.wt),
            A::F(self.eps),
            A::P(self.out),
            A::P(self.counter),
        ]
    }
}

/// q/k/v with RoPE in one launch.
pub(crate) const FUSE_ROPE: u8 = 1;
/// The output projection's last block runs the residual add + norm.
pub(crate) const FUSE_O: u8 = 2;
/// The dp4a MoE down kernel's last block runs the residual add + norm.
pub(crate) const FUSE_DOWN: u8 = 4;
/// Every fused form.
pub(crate) const FUSE_ALL: u8 = FUSE_ROPE | FUSE_O | FUSE_DOWN;

/// The fused forms on by default: `GPTOSS_CUDA_DECODE_FUSE` = `0` (none), `all`, or a comma
/// list of `rope`, `o`, `down`.
pub(crate) fn fuse_default() -> u8 {
    match std::env::var("GPTOSS_CUDA_DECODE_FUSE") {
        Err(_) => FUSE_ALL,
        Ok(v) if v == "all" || v == "1" => FUSE_ALL,
        Ok(v) => v
            .split(',')
            .map(|p| match p.trim() {
                "rope" => FUSE_ROPE,
                "o" => FUSE_O,
                "down" => FUSE_DOWN,
                _ => 0,
            })
            .fold(0, |a, b| a | b),
    }
}

/// The cos/sin table of one position for one [`Rope`] (see `rope_cs` in basic.cu).
pub(crate) struct RopeCs {
    /// The frequencies' and the attention factor's bits.
    key: Vec<u32>,
    pos: usize,
    buf: CudaSlice<f32>,
}

impl CudaBackend {
    /// The epilogue for `h += y; out = RMSNorm(h) * weight` with y of width `d`, when the fused
    /// forms are on and the shapes are those of one token; `None` sends the caller to the
    /// separate kernels (which also report any shape error).
    fn add_norm_spec(
        &self,
        which: u8,
        h: &CudaTensor,
        weight: &CudaWeight,
        eps: f32,
        d: usize,
    ) -> Result<Option<(AddNorm, CudaTensor)>> {
        if self.decode_fuse & which == 0
            || h.rows != 1
            || h.cols != d
            || d == 0
            || weight.numel() != d
            || weight.dtype.is_quantized()
        {
            return Ok(None);
        }
        let out = self.tensor(1, d)?;
        let spec = AddNorm {
            h: self.ptr(&h.buf),
            w: self.ptr(&weight.buf),
            wt: weight.dtype.id() as i32,
            eps,
            out: self.ptr(&out.buf),
            counter: self.tickets(TICKETS_NORM, 1)?,
        };
        Ok(Some((spec, out)))
    }

    /// The device address of the cos/sin table of `pos` for `rope`: made by one `rope_cs`
    /// launch when the position changes (once per decode step: every layer shares it).
    fn rope_cs(&self, rope: &Rope, pos: usize) -> Result<u64> {
        let mut key: Vec<u32> = rope.inv_freq.iter().map(|f| f.to_bits()).collect();
        key.push(rope.attention_factor.to_bits());
        let mut cache = self
            .rope_cs
            .lock()
            .map_err(|_| shape_err("rope_cs", "table lock poisoned".into()))?;
        if let Some(c) = cache.as_ref()
            && c.key == key
            && c.pos == pos
        {
            return Ok(self.ptr(&c.buf));
        }
        let half = rope.inv_freq.len();
        let buf = match cache.take() {
            Some(c) if c.key == key => c.buf,
            _ => self.stream.alloc_zeros::<f32>(2 * half).map_err(dev_err)?,
        };
        // The kernel overwrites the table only after every earlier kernel, which may still
        // read the previous position's values, has finished (stream order; GRID_DEP_ENTRY).
        self.launch(
            "rope_cs",
            (1, 1, 1),
            (half.div_ceil(32) * 32).min(1024) as u32,
            &[
                A::P(self.rope_freqs(rope)?),
                A::I(half as i32),
                A::I(pos as i32),
                A::F(rope.attention_factor),
                A::P(self.ptr(&buf)),
            ],
        )?;
        let p = self.ptr(&buf);
        *cache = Some(RopeCs { key, pos, buf });
        Ok(p)
    }

    /// [`gptoss_backend::Backend::qkv_rope`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn qkv_rope_impl(
        &self,
        x: &CudaTensor,
        q: (&CudaWeight, Option<&CudaWeight>),
        k: (&CudaWeight, Option<&CudaWeight>),
        v: (&CudaWeight, Option<&CudaWeight>),
        n_heads: usize,
        n_kv_heads: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<[CudaTensor; 3]> {
        let mats = [q, k, v];
        let dims = mats
            .iter()
            .map(|(w, b)| check_linear(x, w, *b))
            .collect::<Result<Vec<_>>>()?;
        let hd = rope.head_dim;
        let dtype = q.0.dtype;
        let fused = self.decode_fuse & FUSE_ROPE != 0
            && x.rows == 1
            && !self.int8_activations
            && matches!(dtype, GgmlType::Q8_0 | GgmlType::MXFP4)
            && mats.iter().all(|(w, _)| w.dtype == dtype)
            // linear_many's int8 tensor-core products (opt-in) take all three or none.
            && !dims.iter().all(|&(kk, n)| self.mma_gemv_fits(dtype, 1, kk, n))
            && hd > 0
            && hd.is_multiple_of(8)
            && rope.inv_freq.len() == hd / 2
            && n_heads > 0
            && n_kv_heads > 0
            && dims[0].1 == n_heads * hd
            && dims[1].1 == n_kv_heads * hd
            && dims[2].1 > 0
            && pos0 <= i32::MAX as usize;
        if !fused {
            let outs: [CudaTensor; 3] = self
                .linear_many(x, &mats)?
                .try_into()
                .map_err(|_| shape_err("qkv_rope", "linear_many lost an output".into()))?;
            let [mut qt, mut kt, vt] = outs;
            self.rope_qk_impl(&mut qt, &mut kt, n_heads, n_kv_heads, pos0, rope)?;
            return Ok([qt, kt, vt]);
        }
        let kdim = dims[0].0;
        let outs = [
            self.tensor(1, dims[0].1)?,
            self.tensor(1, dims[1].1)?,
            self.tensor(1, dims[2].1)?,
        ];
        let mut args = vec![A::P(self.ptr(&x.buf)), A::I(kdim as i32)];
        let mut blocks = 0usize;
        for ((w, b), (&(_, n), o)) in mats.iter().zip(dims.iter().zip(&outs)) {
            let nblk = n.div_ceil(8);
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
                A::P(self.ptr(&o.buf)),
                A::I(n as i32),
                A::I(nblk as i32),
            ]);
        }
        args.extend([A::I(hd as i32), A::P(self.rope_cs(rope, pos0)?)]);
        let kern = if dtype == GgmlType::Q8_0 {
            "gemvf3_q8_0_r1_rope"
        } else {
            "gemvf3_mxfp4_r1_rope"
        };
        self.launch(kern, (blocks as u32, 1, 1), 256, &args)?;
        Ok(outs)
    }

    /// [`gptoss_backend::Backend::linear_add_rms_norm`].
    pub(crate) fn linear_add_rms_norm_impl(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        h: &mut CudaTensor,
        weight: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        let (k, n) = check_linear(x, w, bias)?;
        let simple = x.rows == 1
            && !self.int8_activations
            && matches!(w.dtype, GgmlType::Q8_0 | GgmlType::MXFP4)
            && !self.mma_gemv_fits(w.dtype, 1, k, n);
        if simple && let Some((post, out)) = self.add_norm_spec(FUSE_O, h, weight, eps, n)? {
            let y = self.scratch(n * 4)?;
            let (bp, bt) = match bias {
                Some(b) => (self.ptr(&b.buf), b.dtype.id() as i32),
                None => (0, 0),
            };
            let mut args = vec![
                A::P(self.ptr(&x.buf)),
                A::I(k as i32),
                A::P(self.ptr(&w.buf)),
                A::L(w.nb),
                A::P(bp),
                A::I(bt),
                A::P(y.ptr),
                A::I(n as i32),
            ];
            args.extend(post.args());
            let kern = if w.dtype == GgmlType::Q8_0 {
                "gemvf_q8_0_r1_add_norm"
            } else {
                "gemvf_mxfp4_r1_add_norm"
            };
            self.launch(kern, (n.div_ceil(8) as u32, 1, 1), 256, &args)?;
            return Ok(out);
        }
        let y = self.linear(x, w, bias)?;
        self.add_rms_norm_impl(h, &y, weight, eps)
    }

    /// [`gptoss_backend::Backend::moe_add_rms_norm`]: the dp4a MoE's down kernel runs the
    /// epilogue when it takes this token; any other MoE path is followed by add_rms_norm.
    pub(crate) fn moe_add_rms_norm_impl(
        &self,
        x: &CudaTensor,
        w: &MoeWeights<CudaWeight>,
        cfg: &MoeConfig,
        h: &mut CudaTensor,
        weight: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        let spec = if x.rows == 1 {
            self.add_norm_spec(FUSE_DOWN, h, weight, eps, x.cols)?
        } else {
            None
        };
        let (y, fused) =
            self.moe_range(x, w, cfg, 0..cfg.n_experts, spec.as_ref().map(|(p, _)| p))?;
        match spec {
            Some((_, out)) if fused => Ok(out),
            _ => self.add_rms_norm_impl(h, &y, weight, eps),
        }
    }
}
