//! The fast CPU mode (activations quantized per row, quantized dot products) against reference
//! mode and against naive f64, within its stated tolerance: NMSE <= 1e-3 per operation (measured:
//! ~1e-5 for one linear, ~6e-5 for the MoE block, which quantizes twice), max |diff| <= 5 % of the
//! largest reference value.

mod common;

use common::*;
use gptoss_backend::{Backend, CpuBackend, GgmlType, MoeConfig, MoeWeights};
use rand::rngs::StdRng;

/// The fast mode's stated per-operation tolerance against the exact result.
const FAST_NMSE: f64 = 1e-3;

/// Max-abs limit: a fraction of the reference's largest magnitude.
fn abs_limit(r: &[f64]) -> f64 {
    0.05 * r.iter().fold(0f64, |m, v| m.max(v.abs()))
}

fn acts(rng: &mut StdRng, n: usize, a: f64) -> (Vec<f32>, Vec<f64>) {
    let x = f32s(&uniform(rng, n, a));
    let x64 = x.iter().map(|&v| v as f64).collect();
    (x, x64)
}

#[test]
fn fast_linear_is_within_tolerance_and_float_weights_are_exact() {
    let mut rng = rng("fast_linear");
    let (rb, fb) = (CpuBackend::new(), CpuBackend::new_fast());
    for ty in [
        GgmlType::MXFP4,
        GgmlType::Q8_0,
        GgmlType::F32,
        GgmlType::BF16,
        GgmlType::F16,
    ] {
        for (t, k, n) in [(1, 2880, 300), (64, 2880, 64), (5, 96, 67)] {
            let (x, x64) = acts(&mut rng, t * k, 1.0);
            let (w, wv) = weight(&mut rng, "w", ty, &[k, n], 0.1);
            let (b, bv) = weight(&mut rng, "b", GgmlType::F32, &[n], 0.5);
            let (wr, br) = (rb.upload(&w).unwrap(), rb.upload(&b).unwrap());
            let (wf, bf) = (fb.upload(&w).unwrap(), fb.upload(&b).unwrap());
            let r = rb
                .linear(&rb.from_host(&x, t, k).unwrap(), &wr, Some(&br))
                .unwrap();
            let f = fb
                .linear(&fb.from_host(&x, t, k).unwrap(), &wf, Some(&bf))
                .unwrap();
            let want = linear_f64(&x64, t, &wv, k, n, Some(&bv));
            let label = format!("fast linear {ty} t={t} k={k} n={n}");
            if ty.is_quantized() {
                check(
                    &format!("{label} vs f64"),
                    f.data(),
                    &want,
                    FAST_NMSE,
                    abs_limit(&want),
                );
                let r64: Vec<f64> = r.data().iter().map(|&v| v as f64).collect();
                check(
                    &format!("{label} vs reference"),
                    f.data(),
                    &r64,
                    FAST_NMSE,
                    abs_limit(&r64),
                );
            } else {
                // Float weights take the reference path in fast mode too.
                assert_eq!(f.data(), r.data(), "{label}");
            }
        }
    }
}

#[allow(clippy::type_complexity)]
fn moe_case(
    rng: &mut StdRng,
    be: &[&CpuBackend; 2],
    ty: GgmlType,
    d: usize,
    dff: usize,
    ne: usize,
) -> [MoeWeights<gptoss_backend::CpuWeight>; 2] {
    let f = GgmlType::F32;
    let amp = 16.0 / (d as f64).sqrt();
    let specs: [(&str, GgmlType, Vec<usize>, f64); 8] = [
        ("router", f, vec![d, ne], 1.0),
        ("router_b", f, vec![ne], 0.5),
        ("gate", ty, vec![d, dff, ne], amp),
        ("gate_b", f, vec![dff, ne], 1.0),
        ("up", ty, vec![d, dff, ne], amp),
        ("up_b", f, vec![dff, ne], 1.0),
        ("down", ty, vec![dff, d, ne], 1.0 / (dff as f64).sqrt()),
        ("down_b", f, vec![d, ne], 0.5),
    ];
    let ws: Vec<_> = specs
        .iter()
        .map(|(n, t, s, a)| weight(rng, n, *t, s, *a).0)
        .collect();
    be.map(|b| {
        let u = |i: usize| b.upload(&ws[i]).unwrap();
        MoeWeights {
            router: u(0),
            router_bias: u(1),
            gate: u(2),
            gate_bias: u(3),
            up: u(4),
            up_bias: u(5),
            down: u(6),
            down_bias: u(7),
        }
    })
}

#[test]
fn fast_moe_is_within_tolerance_of_reference() {
    let mut rng = rng("fast_moe");
    let (rb, fb) = (CpuBackend::new(), CpuBackend::new_fast());
    for ty in [GgmlType::MXFP4, GgmlType::Q8_0] {
        for (t, d, dff, ne, k) in [
            (1, 2880, 2880, 32, 4),
            (64, 256, 192, 32, 4),
            (7, 64, 96, 8, 4),
        ] {
            let [wr, wf] = moe_case(&mut rng, &[&rb, &fb], ty, d, dff, ne);
            let (x, _) = acts(&mut rng, t * d, 2.0);
            let cfg = MoeConfig {
                n_experts: ne,
                top_k: k,
            };
            let r = rb.moe(&rb.from_host(&x, t, d).unwrap(), &wr, &cfg).unwrap();
            let f = fb.moe(&fb.from_host(&x, t, d).unwrap(), &wf, &cfg).unwrap();
            let r64: Vec<f64> = r.data().iter().map(|&v| v as f64).collect();
            check(
                &format!("fast moe {ty} t={t} d={d} dff={dff} E={ne}"),
                f.data(),
                &r64,
                FAST_NMSE,
                abs_limit(&r64),
            );
        }
    }
}

/// Prefill (t > 1, the tiled kernels) gives exactly what decoding the same rows one at a time
/// (t = 1, the single-pair kernels) gives, for linear and the MoE block.
#[test]
fn fast_prefill_equals_one_token_at_a_time_exactly() {
    let mut rng = rng("fast_prefill_exact");
    let fb = CpuBackend::new_fast();
    for ty in [GgmlType::MXFP4, GgmlType::Q8_0] {
        // k = 96: fewer than 8 blocks (the pair-by-pair fallback); 2880: 11 groups + a tail.
        for (t, k, n) in [(64, 2880, 67), (5, 96, 33), (3, 4096, 10)] {
            let (x, _) = acts(&mut rng, t * k, 1.0);
            let (w, _) = weight(&mut rng, "w", ty, &[k, n], 0.1);
            let (b, _) = weight(&mut rng, "b", GgmlType::F32, &[n], 0.5);
            let (wf, bf) = (fb.upload(&w).unwrap(), fb.upload(&b).unwrap());
            let all = fb
                .linear(&fb.from_host(&x, t, k).unwrap(), &wf, Some(&bf))
                .unwrap();
            for i in 0..t {
                let one = fb
                    .linear(
                        &fb.from_host(&x[i * k..(i + 1) * k], 1, k).unwrap(),
                        &wf,
                        Some(&bf),
                    )
                    .unwrap();
                assert_eq!(
                    one.data(),
                    &all.data()[i * n..(i + 1) * n],
                    "linear {ty} t={t} k={k} n={n} row {i}"
                );
            }
        }
        for (t, d, dff, ne, k) in [(64, 256, 192, 32, 4), (9, 320, 288, 8, 4)] {
            let [_, wf] = moe_case(&mut rng, &[&fb, &fb], ty, d, dff, ne);
            let (x, _) = acts(&mut rng, t * d, 2.0);
            let cfg = MoeConfig {
                n_experts: ne,
                top_k: k,
            };
            let all = fb.moe(&fb.from_host(&x, t, d).unwrap(), &wf, &cfg).unwrap();
            for i in 0..t {
                let one = fb
                    .moe(
                        &fb.from_host(&x[i * d..(i + 1) * d], 1, d).unwrap(),
                        &wf,
                        &cfg,
                    )
                    .unwrap();
                assert_eq!(
                    one.data(),
                    &all.data()[i * d..(i + 1) * d],
                    "moe {ty} t={t} d={d} row {i}"
                );
            }
        }
    }
}
