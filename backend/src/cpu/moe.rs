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

/// Expert parallelism's one rule, shared with the CUDA kernels (`moe_localize_ids`): a rank
/// holding experts `lo..hi` maps each routed pick to its index in the local stacks, `id - lo`,
/// or to -1 when another rank holds the expert; a pick with a negative id contributes nothing.
pub(crate) fn localize(id: usize, experts: &std::ops::Range<usize>) -> i64 {
    if experts.contains(&id) {
        (id - experts.start) as i64
    } else {
        -1
    }
}

/// Shapes of one MoE block, checked against each other.
struct Dims {
    d: usize,
    dff: usize,
    n_exp: usize,
    k: usize,
}

/// `n_exp` of the result is the number of experts held (the length of `experts`); the router
/// has all `cfg.n_experts`.
fn check(
    x_cols: usize,
    w: &MoeWeights<CpuWeight>,
    cfg: &MoeConfig,
    experts: &std::ops::Range<usize>,
) -> Result<Dims> {
    let (d, n_all, k) = (x_cols, cfg.n_experts, cfg.top_k);
    if n_all == 0 || k == 0 || k > n_all {
        return Err(BackendError::Shape {
            op: "moe",
            detail: format!("top-{k} of {n_all} experts"),
        });
    }
    if experts.start >= experts.end || experts.end > n_all {
        return Err(BackendError::Shape {
            op: "moe",
            detail: format!("expert range {experts:?} of {n_all} experts"),
        });
    }
    let n_exp = experts.len();
    let gs = w.gate.shape();
    let dff = if gs.len() >= 2 { gs[1] } else { 0 };
    w.router.expect_shape("moe", &[d, n_all])?;
    w.router_bias.expect_shape("moe", &[n_all])?;
    w.gate.expect_shape("moe", &[d, dff, n_exp])?;
    w.up.expect_shape("moe", &[d, dff, n_exp])?;
    w.gate_bias.expect_shape("moe", &[dff, n_exp])?;
    w.up_bias.expect_shape("moe", &[dff, n_exp])?;
    w.down.expect_shape("moe", &[dff, d, n_exp])?;
    w.down_bias.expect_shape("moe", &[d, n_exp])?;
    Ok(Dims { d, dff, n_exp, k })
}

/// The MoE block on `x` `[t, d]` with the experts `experts` of `cfg.n_experts` held in `w`'s
/// stacks (all of them for the plain block). In fast mode the expert products quantize their
/// activations (x once per call, h once per expert and token); the router always runs in f32.
pub(crate) fn moe(
    x: &[f32],
    t: usize,
    d: usize,
    w: &MoeWeights<CpuWeight>,
    cfg: &MoeConfig,
    experts: std::ops::Range<usize>,
    fast: bool,
) -> Result<Vec<f32>> {
    let n_all = cfg.n_experts;
    let k = cfg.top_k;
    check(d, w, cfg, &experts)?;
    if t == 0 {
        return Ok(Vec::new());
    }
    // Router, always in f32 so that every mode picks the same experts; top-k over all experts.
    let logits = linear_ref(x, t, &w.router, Some(w.router_bias.dense()?))?;
    let mut sel = vec![(0usize, 0f32); t * k];
    for (tok, s) in sel.chunks_exact_mut(k).enumerate() {
        route(&logits[tok * n_all..(tok + 1) * n_all], k, s);
    }
    let picks: Vec<(i64, f32)> = sel
        .iter()
        .map(|&(e, wt)| (localize(e, &experts), wt))
        .collect();
    moe_picks(x, t, d, w, cfg, experts, &picks, fast)
}

/// The experts part of the MoE block for given picks `[t * top_k]` of (local expert id, routing
/// weight): each pick with a non-negative id adds its weighted expert output to its token's
/// row; a negative id (another rank's expert) adds nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn moe_picks(
    x: &[f32],
    t: usize,
    d: usize,
    w: &MoeWeights<CpuWeight>,
    cfg: &MoeConfig,
    experts: std::ops::Range<usize>,
    picks: &[(i64, f32)],
    fast: bool,
) -> Result<Vec<f32>> {
    let Dims { d, dff, n_exp, k } = check(d, w, cfg, &experts)?;
    if x.len() != t * d || picks.len() != t * k {
        return Err(BackendError::Shape {
            op: "moe",
            detail: format!(
                "{} activations and {} picks for {t} rows of {d}, top-{k}",
                x.len(),
                picks.len()
            ),
        });
    }
    if let Some(&(e, _)) = picks.iter().find(|p| p.0 >= n_exp as i64) {
        return Err(BackendError::Shape {
            op: "moe",
            detail: format!("pick of local expert {e}, but only {n_exp} are held"),
        });
    }
    let mut out = vec![0f32; t * d];
    if t == 0 {
        return Ok(out);
    }
    // Group: members[e] = tokens routed to e (ascending), slot_pos[tok*k+s] = index in its group.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_exp];
    let mut slot_pos = vec![0usize; t * k];
    for (i, &(e, _)) in picks.iter().enumerate() {
        let Ok(e) = usize::try_from(e) else { continue };
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
            let (e, wt) = picks[tok * k + s];
            // Another rank's expert: nothing here.
            let Ok(e) = usize::try_from(e) else { continue };
            let n_e = members[e].len();
            let base = off[e] * d + slot_pos[tok * k + s];
            for (c, y) in o.iter_mut().enumerate() {
                *y += wt * y_t[base + c * n_e];
            }
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GgmlType, HostBytes, WeightData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn f32_weight(name: &str, shape: &[usize], rng: &mut StdRng) -> (CpuWeight, Vec<f32>) {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        let w = WeightData {
            name: name.into(),
            dtype: GgmlType::F32,
            shape: shape.to_vec(),
            bytes: HostBytes::from_vec(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        (CpuWeight::new(&w).unwrap(), vals)
    }

    /// A pick with id -1 adds nothing: the block with some picks set to -1 equals a plain-loop
    /// (f64) evaluation over the remaining picks only, on random weights and inputs.
    #[test]
    fn negative_picks_contribute_nothing() {
        let mut rng = StdRng::seed_from_u64(0x5eed_00e9);
        let (d, dff, n_exp, k, t) = (16usize, 8usize, 4usize, 2usize, 5usize);
        let (router, _) = f32_weight("r", &[d, n_exp], &mut rng);
        let (router_bias, _) = f32_weight("rb", &[n_exp], &mut rng);
        let (gate, gv) = f32_weight("g", &[d, dff, n_exp], &mut rng);
        let (gate_bias, gbv) = f32_weight("gb", &[dff, n_exp], &mut rng);
        let (up, uv) = f32_weight("u", &[d, dff, n_exp], &mut rng);
        let (up_bias, ubv) = f32_weight("ub", &[dff, n_exp], &mut rng);
        let (down, dv) = f32_weight("d", &[dff, d, n_exp], &mut rng);
        let (down_bias, dbv) = f32_weight("db", &[d, n_exp], &mut rng);
        let w = MoeWeights {
            router,
            router_bias,
            gate,
            gate_bias,
            up,
            up_bias,
            down,
            down_bias,
        };
        let cfg = MoeConfig {
            n_experts: n_exp,
            top_k: k,
        };
        let x: Vec<f32> = (0..t * d).map(|_| rng.random_range(-1f32..1.0)).collect();
        // Random picks, about a third of them -1; token 1 has only -1 picks.
        let picks: Vec<(i64, f32)> = (0..t * k)
            .map(|i| {
                let id = if i / k == 1 || rng.random_range(0..3) == 0 {
                    -1
                } else {
                    rng.random_range(0..n_exp as i64)
                };
                (id, rng.random_range(0.1f32..1.0))
            })
            .collect();
        assert!(picks.iter().any(|p| p.0 >= 0) && picks.iter().any(|p| p.0 < 0));
        for fast in [false, true] {
            let got = moe_picks(&x, t, d, &w, &cfg, 0..n_exp, &picks, fast).unwrap();
            let mut want = vec![0f64; t * d];
            for (i, &(e, wt)) in picks.iter().enumerate() {
                let Ok(e) = usize::try_from(e) else { continue };
                let tok = i / k;
                let xr = &x[tok * d..(tok + 1) * d];
                let h: Vec<f64> = (0..dff)
                    .map(|f| {
                        let row = (e * dff + f) * d;
                        let dot = |v: &[f32]| -> f64 {
                            (0..d).map(|c| v[row + c] as f64 * xr[c] as f64).sum()
                        };
                        let g = (dot(&gv) + gbv[e * dff + f] as f64).min(7.0);
                        let u = (dot(&uv) + ubv[e * dff + f] as f64).clamp(-7.0, 7.0);
                        g / (1.0 + (-1.702 * g).exp()) * (u + 1.0)
                    })
                    .collect();
                for c in 0..d {
                    let row = (e * d + c) * dff;
                    let y: f64 = (0..dff).map(|f| dv[row + f] as f64 * h[f]).sum::<f64>()
                        + dbv[e * d + c] as f64;
                    want[tok * d + c] += wt as f64 * y;
                }
            }
            assert!(got[d..2 * d].iter().all(|&v| v == 0.0), "token 1: all -1");
            let err: f64 = got
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).powi(2))
                .sum();
            let norm: f64 = want.iter().map(|b| b * b).sum();
            let max = got
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            // f32 products: ~1e-12 exact mode; fast mode quantizes activations to 8 bits.
            let (tol, tol_max) = if fast { (1e-3, 5e-2) } else { (1e-10, 1e-5) };
            assert!(
                err / norm < tol && max < tol_max,
                "fast {fast}: nmse {} max {max}",
                err / norm
            );
        }
    }

    #[test]
    fn localize_maps_into_the_range_or_to_minus_one() {
        assert_eq!(localize(5, &(4..8)), 1);
        assert_eq!(localize(4, &(4..8)), 0);
        assert_eq!(localize(8, &(4..8)), -1);
        assert_eq!(localize(0, &(4..8)), -1);
    }

    #[test]
    fn picks_past_the_local_stack_are_an_error() {
        let mut rng = StdRng::seed_from_u64(1);
        let (d, dff) = (8, 4);
        let mk = |rng: &mut StdRng, n: &str, s: &[usize]| f32_weight(n, s, rng).0;
        let w = MoeWeights {
            router: mk(&mut rng, "r", &[d, 4]),
            router_bias: mk(&mut rng, "rb", &[4]),
            gate: mk(&mut rng, "g", &[d, dff, 2]),
            gate_bias: mk(&mut rng, "gb", &[dff, 2]),
            up: mk(&mut rng, "u", &[d, dff, 2]),
            up_bias: mk(&mut rng, "ub", &[dff, 2]),
            down: mk(&mut rng, "d", &[dff, d, 2]),
            down_bias: mk(&mut rng, "db", &[d, 2]),
        };
        let cfg = MoeConfig {
            n_experts: 4,
            top_k: 1,
        };
        let x = vec![0.5f32; d];
        let e = moe_picks(&x, 1, d, &w, &cfg, 2..4, &[(2, 1.0)], false).unwrap_err();
        assert!(e.to_string().contains("local expert 2"), "{e}");
        assert!(moe_picks(&x, 1, d, &w, &cfg, 1..4, &[(0, 1.0)], false).is_err());
        assert!(moe_picks(&x, 1, d, &w, &cfg, 2..4, &[(1, 1.0)], false).is_ok());
    }
}
