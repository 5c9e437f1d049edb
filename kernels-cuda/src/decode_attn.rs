//! Decode-step launches: attention of one query row on tensor cores with the split-K combine
//! fused into the last block (`attn_dtc_*` in attention.cu), the residual add fused with the
//! next RMSNorm, a register-resident RMSNorm, and RoPE of q and k in one launch (basic.cu).
//! A decode step runs ~290 kernels of which most are this small: each launch saved or made
//! shorter counts.

use super::step_graph::AttnShape;
use super::{A, CudaBackend, CudaKvCache, CudaTensor, CudaWeight, TICKETS_ATTN, shape_err};
use gptoss_backend::{AttentionConfig, Backend, Result, Rope};

/// float4s a thread of `add_rms_norm` holds (RN_R in basic.cu).
const RN_R: usize = 4;
/// Heads per block of `rope_qk` (ROPE_QK_HEADS in basic.cu).
const ROPE_QK_HEADS: usize = 16;

/// Whether the tensor-core decode attention is on by default: yes, unless
/// `GPTOSS_CUDA_TC_OFF` lists `attention` (the switch the prefill paths also read), so that
/// the f32 kernels can be compared with it.
pub(crate) fn tc_default() -> bool {
    !std::env::var("GPTOSS_CUDA_TC_OFF")
        .map(|v| v.split(',').any(|s| s.trim() == "attention"))
        .unwrap_or(false)
}

/// Splits over the cached keys of one decode attention launch (`attn_dtc_*`): >= 256 keys
/// each (one 64-key step for each of a block's 4 warps), at most ~2 blocks per SM of an H100
/// in all (16 blocks of 8 kv heads at depth 4096, 32 at 16384); the last block merges at most
/// DTC_MAX_GS (512) splits x heads of a group.
pub(crate) fn dtc_splits(pos0: usize, window: Option<usize>, h: usize, kvh: usize) -> usize {
    let lo = window.map_or(0, |w| (pos0 + 1).saturating_sub(w));
    (pos0 - lo)
        .div_ceil(256)
        .clamp(1, (264 / kvh).min(512 / (h / kvh)).max(1))
}

impl CudaBackend {
    /// Decode attention (one query row) on tensor cores (on by default): f16 q and softmax
    /// weights against the f16 cache, f32 sums. Off, the per-head f32 kernels run (or the
    /// grouped f32 kernel, see [`CudaBackend::set_grouped_decode_attention`], which takes
    /// precedence when on).
    pub fn set_decode_attention_tc(&mut self, on: bool) {
        self.decode_tc = on;
    }

    /// One decode row of attention, GQA group by group (at most 8 query heads per kv head),
    /// split over the cached keys so that a long context fills the GPU; the last block of
    /// each kv head merges the splits, the new key and the sink; the first block of each kv
    /// head appends the new key/value row to the ring (a slot nobody reads in this step).
    /// One launch. Shapes were checked by the caller.
    ///
    /// The kernel issues its first cache loads before anything else (in a recorded step
    /// before it waits for the previous kernel) and every other load of its prologue before
    /// their first use: tg128 597.6 vs 573.5, @d16384 532.9 vs 512.5 tok/s against the kernel
    /// that loaded q first and the new key, sink and new value row at the end (H100, same
    /// call, bench/RESULTS.md session 19).
    ///
    /// With one split (every sliding-window layer, and full layers up to 256 cached keys) the
    /// block merges in shared memory instead: no partials through global memory, no fence and
    /// ticket (tg128 483.0 vs 458.7 tok/s on an H100 together with the router change of the
    /// same commit, 2026-11-26, bench/RESULTS.md session 15).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_dtc(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        cache: &mut CudaKvCache,
        pos0: usize,
        cfg: &AttentionConfig,
        sink_args: [A; 2],
        out: CudaTensor,
    ) -> Result<CudaTensor> {
        let (h, kvh, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let lo = cfg.window.map_or(0, |w| (pos0 + 1).saturating_sub(w));
        let cached = pos0 - lo;
        let splits = dtc_splits(pos0, cfg.window, h, kvh);
        // A recorded step's kernel computes the same chunk from the slot's position.
        let chunk = (cached.div_ceil(splits).div_ceil(64) * 64).max(64);
        let step = if self.recording() {
            self.note_attention(AttnShape {
                window: cfg.window,
                heads: h,
                kv_heads: kvh,
                splits,
            })?;
            self.step_slot()?
        } else {
            0
        };
        // Partial outputs [h, splits, hd], then (max, sum) [h, splits, 2].
        let part = self.scratch(h * splits * (hd + 2) * 4)?;
        let tickets = self.tickets(TICKETS_ATTN, kvh)?;
        const DTC: [&str; 8] = [
            "attn_dtc_d1",
            "attn_dtc_d2",
            "attn_dtc_d3",
            "attn_dtc_d4",
            "attn_dtc_d5",
            "attn_dtc_d6",
            "attn_dtc_d7",
            "attn_dtc_d8",
        ];
        self.launch(
            DTC[hd / 32 - 1],
            (kvh as u32, splits as u32, 1),
            128,
            &[
                A::P(self.ptr(&q.buf)),
                A::P(self.ptr(&k.buf)),
                A::P(self.ptr(&v.buf)),
                A::P(self.ptr(&cache.k)),
                A::P(self.ptr(&cache.v)),
                A::I(pos0 as i32),
                A::I(h as i32),
                A::I(kvh as i32),
                A::I(cache.cap as i32),
                A::I(cfg.window.unwrap_or(0) as i32),
                A::F(cfg.scale),
                A::I(chunk as i32),
                A::P(self.ptr(&part)),
                A::P(tickets),
                sink_args[0],
                sink_args[1],
                A::P(self.ptr(&out.buf)),
                A::P(step),
            ],
        )?;
        cache.len = pos0 + 1;
        Ok(out)
    }

    /// `out = RMSNorm(x [+= y]) * weight` in one launch of `add_rms_norm` when a row fits its
    /// registers (`cols % 4 == 0`, `cols <= 16384`): returns false (nothing launched)
    /// otherwise. Shapes were checked by the caller; `x.rows > 0`.
    pub(crate) fn norm_rows(
        &self,
        x: &CudaTensor,
        y: Option<&CudaTensor>,
        weight: &CudaWeight,
        eps: f32,
        out: &CudaTensor,
    ) -> Result<bool> {
        let d = x.cols;
        let n4 = d / 4;
        let threads = n4.div_ceil(32).clamp(1, 32) * 32;
        if d == 0 || !d.is_multiple_of(4) || n4 > RN_R * threads {
            return Ok(false);
        }
        let xp = self.ptr(&x.buf);
        self.launch(
            "add_rms_norm",
            (x.rows as u32, 1, 1),
            threads as u32,
            &[
                A::P(xp),
                A::P(y.map_or(xp, |y| self.ptr(&y.buf))),
                A::P(self.ptr(&weight.buf)),
                A::I(weight.dtype.id() as i32),
                A::P(self.ptr(&out.buf)),
                A::I(d as i32),
                A::F(eps),
                A::I(y.is_some() as i32),
            ],
        )?;
        Ok(true)
    }

    /// [`Backend::add_rms_norm`]: one launch where [`CudaBackend::norm_rows`] fits, else
    /// the add and the norm apart.
    pub(crate) fn add_rms_norm_impl(
        &self,
        x: &mut CudaTensor,
        y: &CudaTensor,
        weight: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(shape_err(
                "add_rms_norm",
                format!("[{}, {}] += [{}, {}]", x.rows, x.cols, y.rows, y.cols),
            ));
        }
        if weight.numel() != x.cols || weight.dtype.is_quantized() {
            return Err(shape_err(
                "add_rms_norm",
                format!(
                    "x has {} columns, weight {} is {:?} {}",
                    x.cols,
                    weight.name,
                    weight.shape,
                    weight.dtype.name()
                ),
            ));
        }
        let out = self.tensor(x.rows, x.cols)?;
        if x.rows == 0 {
            return Ok(out);
        }
        if self.norm_rows(x, Some(y), weight, eps, &out)? {
            return Ok(out);
        }
        self.add_assign(x, y)?;
        self.rms_norm(x, weight, eps)
    }

    /// [`Backend::rope_qk`]: both tensors in one launch of `rope_qk` (ROPE_QK_HEADS heads of a
    /// row per block).
    pub(crate) fn rope_qk_impl(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        n_heads: usize,
        n_kv_heads: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<()> {
        let hd = rope.head_dim;
        if q.cols != n_heads * hd
            || k.cols != n_kv_heads * hd
            || q.rows != k.rows
            || !hd.is_multiple_of(2)
            || rope.inv_freq.len() != hd / 2
            || hd > 2048
        {
            return Err(shape_err(
                "rope_qk",
                format!(
                    "q [{}, {}] for {n_heads} heads, k [{}, {}] for {n_kv_heads} heads of {hd}",
                    q.rows, q.cols, k.rows, k.cols
                ),
            ));
        }
        if q.rows == 0 || n_heads + n_kv_heads == 0 {
            return Ok(());
        }
        self.refuse_while_recording("rope_qk with the position as an argument")?;
        let f = self.rope_freqs(rope)?;
        self.launch(
            "rope_qk",
            (
                q.rows as u32,
                (n_heads + n_kv_heads).div_ceil(ROPE_QK_HEADS) as u32,
                1,
            ),
            256,
            &[
                A::P(self.ptr(&q.buf)),
                A::I(n_heads as i32),
                A::P(self.ptr(&k.buf)),
                A::I(n_kv_heads as i32),
                A::I(hd as i32),
                A::I(pos0 as i32),
                A::P(f),
                A::F(rope.attention_factor),
            ],
        )
    }
}
