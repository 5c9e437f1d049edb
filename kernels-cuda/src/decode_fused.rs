//! The decode step's q/k/v products with RoPE applied as q and k are written
//! (`gemvf3_*_r1_rope` in linear.cu): one launch per layer instead of the products then
//! `rope_qk`. The rotation's cos/sin come from a table of the step's position, made once per
//! token by `rope_cs` (all layers share it); the arithmetic is that of `rope_qk`, so the two
//! forms agree bit for bit. Several rows, other weight types and the opt-in int8 paths take the
//! separate kernels. `GPTOSS_CUDA_DECODE_FUSE=0` (or [`CudaBackend::set_decode_fuse`]) turns it
//! off, for A/B measurements.
//!
//! Measured and removed (2026-11-26, bench/RESULTS.md, H100):
//! - the residual add + norm run by the last block of the attention output projection or of the
//!   MoE's down kernel (a ticket elects the block) instead of the separate one-block
//!   `add_rms_norm`: tg128 fell from 457 to 426 and 413 tok/s;
//! - the residual add + norm before the MoE folded into the router (each router block makes
//!   v = h + y, the sum of squares and its logit in one pass; block 0 writes the new residual and
//!   the normed row): 455.2 against 459.1 tok/s with RoPE fused alone (commit 4edf33f's tree).
//! - (session 15, bench/RESULTS.md) the next product's weights fetched into L2 by the kernel
//!   before it (`prefetch.global.L2` after a block's own rows; commit 03a21f0): 413-447 against
//!   430-450 tok/s off, no site faster; a 2880-wide row's loads in one round (FU 12 instead of 4
//!   steps; commit 19785dc): slower at every site (395 against 479 with all four); the
//!   epilogue's biases and routing weight loaded before the products (commit bb7c728): the
//!   GEMVs unchanged, the 64-register MoE gate+up 2.7 % slower.

use crate::{A, CudaBackend, CudaTensor, CudaWeight, Result, check_linear, dev_err, shape_err};
use cudarc::driver::CudaSlice;
use gptoss_backend::{Backend, GgmlType, Rope};

/// Whether the fused form is on by default (`GPTOSS_CUDA_DECODE_FUSE=0` turns it off).
pub(crate) fn fuse_default() -> bool {
    std::env::var("GPTOSS_CUDA_DECODE_FUSE").map_or(true, |v| v != "0")
}

/// The cos/sin table of one position for one [`Rope`] (see `rope_cs` in basic.cu).
pub(crate) struct RopeCs {
    inv_freq: Vec<f32>,
    attention_factor: f32,
    pos: usize,
    buf: CudaSlice<f32>,
}

impl RopeCs {
    /// Whether the table was made for `rope` (compared bit for bit, without allocating: this
    /// runs in every layer of every decode step).
    fn is_for(&self, rope: &Rope) -> bool {
        self.attention_factor.to_bits() == rope.attention_factor.to_bits()
            && self.inv_freq.len() == rope.inv_freq.len()
            && self
                .inv_freq
                .iter()
                .zip(&rope.inv_freq)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl CudaBackend {
    /// The device address of the cos/sin table of `pos` for `rope`: made by one `rope_cs`
    /// launch when the position changes (once per decode step: every layer shares it).
    fn rope_cs(&self, rope: &Rope, pos: usize) -> Result<u64> {
        if self.recording() {
            return self.recorded_rope_cs(rope);
        }
        let mut cache = self
            .rope_cs
            .lock()
            .map_err(|_| dev_err("rope cos/sin table lock poisoned"))?;
        if let Some(c) = cache.as_ref()
            && c.pos == pos
            && c.is_for(rope)
        {
            return Ok(self.ptr(&c.buf));
        }
        let half = rope.inv_freq.len();
        let buf = match cache.take() {
            Some(c) if c.is_for(rope) => c.buf,
            _ => self.stream.alloc_zeros::<f32>(2 * half).map_err(dev_err)?,
        };
        // The kernel overwrites the table only after every earlier kernel, which may still
        // read the previous position's values, has finished (stream order; GRID_DEP_ENTRY).
        self.launch_rope_cs(rope, pos, self.ptr(&buf), 0)?;
        let p = self.ptr(&buf);
        *cache = Some(RopeCs {
            inv_freq: rope.inv_freq.clone(),
            attention_factor: rope.attention_factor,
            pos,
            buf,
        });
        Ok(p)
    }

    /// One `rope_cs` launch: the cos/sin table of `pos` (or of the position in the step slot
    /// `step`, when not 0) into `table`.
    pub(crate) fn launch_rope_cs(
        &self,
        rope: &Rope,
        pos: usize,
        table: u64,
        step: u64,
    ) -> Result<()> {
        let half = rope.inv_freq.len();
        self.launch(
            "rope_cs",
            (1, 1, 1),
            (half.div_ceil(32) * 32).min(1024) as u32,
            &[
                A::P(self.rope_freqs(rope)?),
                A::I(half as i32),
                A::I(pos as i32),
                A::F(rope.attention_factor),
                A::P(table),
                A::P(step),
            ],
        )
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
        let fused = self.decode_fuse
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
}
