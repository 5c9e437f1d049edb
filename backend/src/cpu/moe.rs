//! The GPT-OSS mixture-of-experts block: router top-k, SwiGLU experts, weighted sum.
//!
//! Tokens are grouped by expert so that each chosen expert's rows are read (and decoded) once per
//! call, however many tokens chose it.

use rayon::prelude::*;

use super::linear::{
    Acts, QuantActs, Scratch, fast_applies, linear_ref, rows_dot, rows_per_task, transpose,
};
use super::weight::CpuWeight;
use crate::{BackendError, MoeConfig, MoeWeights, Result};

/// GPT-OSS's SwiGLU with clamps: `g = min(gate, 7)`, `u = clamp(up, -7, 7)`,
/// `g * sigmoid(1.702 g) * (u + 1)`. A comparison rather than `f32::min`, so that a NaN
/// propagates as in torch.
#[inline]
pub(crate) fn swiglu(gate: f32, up: f32) -> f32 {
    const LIMIT: f32 = 7.0;
    let g = if gate > LIMIT { LIMIT } else { gate };
    let u = up.clamp(-LIMIT, LIMIT);
    let glu = g * (1.0 / (1.0 + (-(g * 1.702)).exp()));
    (u + 1.0) * glu
}

/// The top `k` of `logits` (ties: lower index first) and the softmax over them.
pub(crate) fn route(logits: &[f32], k: usize, out: &mut [(usize, f32)]) {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // Descending by logit; a stable sort keeps lower ids first among equals. total_cmp keeps NaN
    // from panicking (a NaN logit sorts above everything, like torch.topk).
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let m = logits[idx[0]];
    let mut sum = 0f32;
    for (o, &e) in out.iter_mut().zip(&idx[..k]) {
        let p = (logits[e] - m).exp();
        sum += p;
        *o = (e, p);
    }
    for o in out.iter_mut() {
        o.1 /= sum;
    }
}

/// Shapes of one MoE block, checked against each other.
struct Dims {
    d: usize,
    dff: usize,
    n_exp: usize,
    k: usize,
}

fn check(x_cols: usize, w: &MoeWeights<CpuWeight>, cfg: &MoeConfig) -> Result<Dims> {
    let (d, n_exp, k) = (x_cols, cfg.n_experts, cfg.top_k);
    if n_exp == 0 || k == 0 || k > n_exp {
        return Err(BackendError::Shape {
            op: "moe",
            detail: format!("top-{k} of {n_exp} experts"),
        });
    }
    let gs = w.gate.shape();
    let dff = if gs.len() >= 2 { gs[1] } else { 0 };
    w.router.expect_shape("moe", &[d, n_exp])?;
    w.router_bias.expect_shape("moe", &[n_exp])?;
    w.gate.expect_shape("moe", &[d, dff, n_exp])?;
    w.up.expect_shape("moe", &[d, dff, n_exp])?;
    w.gate_bias.expect_shape("moe", &[dff, n_exp])?;
    w.up_bias.expect_shape("moe", &[dff, n_exp])?;
    w.down.expect_shape("moe", &[dff, d, n_exp])?;
    w.down_bias.expect_shape("moe", &[d, n_exp])?;
    Ok(Dims { d, dff, n_exp, k })
}

/// The MoE block on `x` `[t, d]`. In fast mode the expert products quantize their activations
/// (x once per call, h once per expert and token); the router always runs in f32.
pub(crate) fn moe(
    x: &[f32],
    t: usize,
    d: usize,
    w: &MoeWeights<CpuWeight>,
    cfg: &MoeConfig,
    fast: bool,
) -> Result<Vec<f32>> {
    let Dims { d, dff, n_exp, k } = check(d, w, cfg)?;
    let mut out = vec![0f32; t * d];
    if t == 0 {
        return Ok(out);
    }
    // Router, always in f32 so that every mode picks the same experts.
    let logits = linear_ref(x, t, &w.router, Some(w.router_bias.dense()?))?;
    let mut sel = vec![(0usize, 0f32); t * k];
    for (tok, s) in sel.chunks_exact_mut(k).enumerate() {
        route(&logits[tok * n_exp..(tok + 1) * n_exp], k, s);
    }

    // Group: members[e] = tokens routed to e (ascending), slot_pos[tok*k+s] = index in its group.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_exp];
    let mut slot_pos = vec![0usize; t * k];
    for (i, &(e, _)) in sel.iter().enumerate() {
        slot_pos[i] = members[e].len();
        members[e].push(i / k);
    }
    let used: Vec<usize> = (0..n_exp).filter(|&e| !members[e].is_empty()).collect();
    let mut off = vec![0usize; n_exp];
    let mut total = 0usize;
    for &e in &used {
        off[e] = total;
        total += members[e].len();
    }

    let (gb, ub, db) = (
        w.gate_bias.dense()?,
        w.up_bias.dense()?,
        w.down_bias.dense()?,
    );
    // Activations for gate and up: f32, or quantized once for all experts.
    let qx_gate = match fast && fast_applies(w.gate.dtype()) {
        true => Some(QuantActs::new(x, t, d, w.gate.dtype())?),
        false => None,
    };
    let qx_up = match fast && fast_applies(w.up.dtype()) && w.up.dtype() != w.gate.dtype() {
        true => Some(QuantActs::new(x, t, d, w.up.dtype())?),
        false => None,
    };
    let acts_gate = qx_gate
        .as_ref()
        .map_or(Acts::F32 { data: x, k: d }, |q| q.acts());
    let acts_up = match (&qx_up, &qx_gate) {
        (Some(q), _) => q.acts(),
        (None, Some(q)) if fast_applies(w.up.dtype()) => q.acts(),
        _ => Acts::F32 { data: x, k: d },
    };

    // Phase 1: h = swiglu(gate, up), per expert laid out [dff, n_e].
    let mut h_t = vec![0f32; total * dff];
    {
        let per = rows_per_task(dff * used.len(), d * (total / used.len().max(1)).max(1) * 2);
        let mut tasks = Vec::new();
        let mut rest = h_t.as_mut_slice();
        for &e in &used {
            let n_e = members[e].len();
            let (region, tail) = rest.split_at_mut(dff * n_e);
            rest = tail;
            for (ci, chunk) in region.chunks_mut(per * n_e).enumerate() {
                tasks.push((e, ci * per, chunk));
            }
        }
        tasks.into_par_iter().try_for_each_init(
            || (Scratch::default(), Vec::<f32>::new()),
            |(scratch, up), (e, r0, chunk)| -> Result<()> {
                let toks = &members[e];
                let b0 = e * dff + r0;
                rows_dot(
                    &w.gate,
                    b0,
                    &acts_gate,
                    toks,
                    Some(&gb[b0..]),
                    chunk,
                    scratch,
                )?;
                up.resize(chunk.len(), 0.0);
                rows_dot(&w.up, b0, &acts_up, toks, Some(&ub[b0..]), up, scratch)?;
                for (g, &u) in chunk.iter_mut().zip(up.iter()) {
                    *g = swiglu(*g, u);
                }
                Ok(())
            },
        )?;
    }
    // Tokens-major h for the down projection: per expert [n_e, dff].
    let mut h = vec![0f32; total * dff];
    for &e in &used {
        let n_e = members[e].len();
        let r = off[e] * dff..(off[e] + n_e) * dff;
        h[r.clone()].copy_from_slice(&transpose(&h_t[r], dff, n_e));
    }
    drop(h_t);
    let qh = match fast && fast_applies(w.down.dtype()) {
        true => Some(QuantActs::new(&h, total, dff, w.down.dtype())?),
        false => None,
    };

    // Phase 2: y = W_down h + b_down, per expert laid out [d, n_e].
    let mut y_t = vec![0f32; total * d];
    {
        let iota: Vec<usize> = (0..t).collect();
        let per = rows_per_task(d * used.len(), dff * (total / used.len().max(1)).max(1));
        let mut tasks = Vec::new();
        let mut rest = y_t.as_mut_slice();
        for &e in &used {
            let n_e = members[e].len();
            let (region, tail) = rest.split_at_mut(d * n_e);
            rest = tail;
            for (ci, chunk) in region.chunks_mut(per * n_e).enumerate() {
                tasks.push((e, ci * per, chunk));
            }
        }
        let (h, qh, iota) = (&h, &qh, &iota);
        tasks.into_par_iter().try_for_each_init(
            Scratch::default,
            |scratch, (e, r0, chunk)| -> Result<()> {
                let n_e = members[e].len();
                let acts = match qh {
                    Some(q) => q.rows(off[e], n_e),
                    None => Acts::F32 {
                        data: &h[off[e] * dff..(off[e] + n_e) * dff],
                        k: dff,
                    },
                };
                let b0 = e * d + r0;
                rows_dot(
                    &w.down,
                    b0,
                    &acts,
                    &iota[..n_e],
                    Some(&db[b0..]),
                    chunk,
                    scratch,
                )
            },
        )?;
    }

    // Phase 3: the routing-weighted sum, in rank order.
    out.par_chunks_mut(d).enumerate().for_each(|(tok, o)| {
        for s in 0..k {
            let (e, wt) = sel[tok * k + s];
            let n_e = members[e].len();
            let base = off[e] * d + slot_pos[tok * k + s];
            for (c, y) in o.iter_mut().enumerate() {
                *y += wt * y_t[base + c * n_e];
            }
        }
    });
    Ok(out)
}
