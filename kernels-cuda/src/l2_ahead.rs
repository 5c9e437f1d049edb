//! Decode weights fetched into L2 one kernel ahead (`l2_ahead_*` in common.cuh).
//!
//! At batch 1 every matrix-vector kernel pays a fixed ramp and tail (~8 us on an H100,
//! bench/RESULTS.md session 13) and the small kernels between the products (attention, norms,
//! router) read almost nothing: DRAM idles for a large part of a decode step. Here a kernel
//! asks L2 for the weights of a product that comes after it, once its own rows are done, so that
//! DRAM keeps streaming through its tail and the small kernels, and that product reads L2:
//! - the q/k/v kernel fetches the attention output projection ([`AHEAD_WO`]; the model names it
//!   through [`gptoss_backend::Backend::fetch_ahead`] before `qkv_rope`);
//! - the MoE's gate+up kernel fetches the down rows of its own experts ([`AHEAD_DOWN`]);
//! - the MoE's down kernel fetches the next layer's q/k/v ([`AHEAD_QKV`], named before `moe`).
//!
//! Only the one-token kernels of the default decode path take part (the fused q/k/v + RoPE and
//! the dp4a MoE). `GPTOSS_CUDA_L2_AHEAD=<bits>` picks the sites (default all: 7; 0 = none).

use crate::{A, CudaBackend, CudaWeight, Result, dev_err};

/// The q/k/v kernel fetches the weights named before `qkv_rope` (the output projection).
pub(crate) const AHEAD_WO: u8 = 1;
/// The gate+up kernel fetches its experts' down rows.
pub(crate) const AHEAD_DOWN: u8 = 2;
/// The down kernel fetches the weights named before `moe` (the next layer's q/k/v).
pub(crate) const AHEAD_QKV: u8 = 4;
/// Ranges one kernel takes (L2_AHEAD_ARGS).
const RANGES: usize = 3;

/// The sites switched on by default or by `GPTOSS_CUDA_L2_AHEAD`.
pub(crate) fn ahead_default() -> u8 {
    std::env::var("GPTOSS_CUDA_L2_AHEAD")
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .map_or(AHEAD_WO | AHEAD_DOWN | AHEAD_QKV, |v| {
            v & (AHEAD_WO | AHEAD_DOWN | AHEAD_QKV)
        })
}

impl CudaBackend {
    /// [`gptoss_backend::Backend::fetch_ahead`]: remember the weights' byte ranges (the first
    /// [`RANGES`]) for the next `qkv_rope` or `moe`.
    pub(crate) fn fetch_ahead_impl(&self, weights: &[&CudaWeight]) -> Result<()> {
        let mut pending = self
            .ahead
            .lock()
            .map_err(|_| dev_err("fetch-ahead list lock poisoned"))?;
        pending.clear();
        pending.extend(
            weights
                .iter()
                .take(RANGES)
                .map(|w| (self.ptr(&w.buf), w.buf.len() as i64)),
        );
        Ok(())
    }

    /// The pending ranges as the six kernel arguments of L2_AHEAD_ARGS (null ranges where
    /// fewer, all null when `site` is off), clearing them: a hint serves one call.
    pub(crate) fn take_ahead(&self, site: u8) -> Result<Vec<A>> {
        let mut pending = self
            .ahead
            .lock()
            .map_err(|_| dev_err("fetch-ahead list lock poisoned"))?;
        let on = self.l2_ahead & site != 0;
        let mut args = Vec::with_capacity(2 * RANGES);
        for i in 0..RANGES {
            let (p, n) = pending.get(i).copied().filter(|_| on).unwrap_or((0, 0));
            args.extend([A::P(p), A::L(n)]);
        }
        pending.clear();
        Ok(args)
    }

    /// Whether the gate+up kernel fetches its experts' down rows.
    pub(crate) fn ahead_down(&self) -> bool {
        self.l2_ahead & AHEAD_DOWN != 0
    }

    /// Turn the fetch-ahead sites on or off (bits [`AHEAD_WO`], [`AHEAD_DOWN`], [`AHEAD_QKV`]).
    pub fn set_l2_ahead(&mut self, sites: u8) {
        self.l2_ahead = sites & (AHEAD_WO | AHEAD_DOWN | AHEAD_QKV);
    }
}
