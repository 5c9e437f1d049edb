//! The FP4 path's packing, checked through the CPU model of the block-scaled MMA
//! (`fp4::model`, the PTX ISA's fragment layout and semantics) on fresh random data:
//!
//! - MXFP4 weights x E4M3 activations: the packed MMAs give the f64 matmul of the dequantized
//!   values up to f32 accumulation only (every product is exact), weights dequantized by the
//!   ggml reference (gptoss-quant), activations decoded by an independent E4M3 decoder here.
//! - The fragment model reads the uploaded weights exactly as ggml dequantizes them, bit for bit
//!   (E8M0 = 0, code 8 included).
//! - f32 activations quantized to MXFP8 on the fly: each element within the E4M3 rounding bound
//!   `|x - q| <= 2^-4 |x| + 2^-10 * 2^(E - 127)`, so each output within the sum of |w| times that.
//! - A negative control: a wrongly packed fragment is caught.

use gptoss_kernels_cuda::fp4::{model, pack};
mod common;

use common::{dequant_ref, e4m3_ref, random_e4m3_rows, random_mxfp4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn packed_mma_equals_the_f64_matmul_of_mxfp4_weights_and_e4m3_activations() {
    let mut rng = StdRng::seed_from_u64(0x00f4_0001);
    for &(rows, k, n_act, cols) in &[
        (16usize, 32usize, 8usize, 8usize),
        (40, 96, 20, 13),
        (33, 64, 5, 17),
    ] {
        let ggml = random_mxfp4(&mut rng, rows, k, 110, 140);
        let dev = pack::relayout_mxfp4(&ggml);
        let w = pack::Mxfp4Device {
            bytes: &dev,
            rows,
            k,
        };
        let wf = dequant_ref(&ggml, rows * k);
        // Activations straight in E4M3 (no NaN codes), scales 2^-9 .. 2^9.
        let act = random_e4m3_rows(&mut rng, n_act, k);
        let (q, s) = (&act.q, &act.s);
        let idx: Vec<usize> = (0..cols).map(|_| rng.random_range(0..n_act)).collect();
        let got = pack::gemm_model(&w, &act, &idx).expect("model");
        let nkb = k / 32;
        let mut max_rel = 0f64;
        for (c, &a) in idx.iter().enumerate() {
            for r in 0..rows {
                let (mut want, mut mag) = (0f64, 0f64);
                for kk in 0..k {
                    let xv = e4m3_ref(q[a * k + kk]) * 2f64.powi(s[a * nkb + kk / 32] as i32 - 127);
                    let p = wf[r * k + kk] as f64 * xv;
                    want += p;
                    mag += p.abs();
                }
                let g = got[c * rows + r] as f64;
                if nkb == 1 {
                    // One MMA: the exact sum, rounded once to f32.
                    assert_eq!(g, want as f32 as f64, "row {r} col {c}");
                } else {
                    // D is f32 between k-blocks: one rounding per block.
                    let bound = nkb as f64 * 2f64.powi(-24) * mag;
                    assert!(
                        (g - want).abs() <= bound,
                        "row {r} col {c}: {g} vs {want} (bound {bound})"
                    );
                    max_rel = max_rel.max((g - want).abs() / mag.max(f64::MIN_POSITIVE));
                }
            }
        }
        eprintln!(
            "{rows}x{k} . {cols} cols: exact up to f32 accumulation (max |err| / sum|terms| {max_rel:.2e})"
        );
    }
}

#[test]
fn fragment_model_reads_uploaded_weights_as_ggml_dequantizes_them() {
    let mut rng = StdRng::seed_from_u64(0x00f4_0002);
    let (rows, k) = (48usize, 128usize);
    // Scale bytes over the whole finite range, the subnormal E = 0 and the codes 0 / 8 (±0).
    let mut ggml = random_mxfp4(&mut rng, rows, k, 0, 254);
    ggml[0] = 0;
    ggml[17] = 254;
    ggml[17 * 5 + 1] = 0x80; // element 0: +0, element 16: code 8 (-0, read as +0 by ggml)
    let dev = pack::relayout_mxfp4(&ggml);
    let w = pack::Mxfp4Device {
        bytes: &dev,
        rows,
        k,
    };
    let want = dequant_ref(&ggml, rows * k);
    for r0 in (0..rows).step_by(16) {
        for kb in 0..k / 32 {
            let mut op = model::WarpOperands::default();
            for lane in 0..model::WARP {
                let (a, sfa) = pack::a_fragment(&w, r0, kb, lane);
                op.a[lane] = a;
                op.sfa[lane] = sfa;
            }
            let a = model::scaled_a(&op).expect("valid containers");
            for m in 0..16 {
                for kk in 0..32 {
                    // The model is exact (f64); rounded to f32 it is ggml's value (±inf where
                    // 6 * 2^127 overflows, +0 and -0 equal).
                    let ggml_v = want[(r0 + m) * k + kb * 32 + kk];
                    assert_eq!(a[m][kk] as f32, ggml_v, "row {} k {}", r0 + m, kb * 32 + kk);
                }
            }
        }
    }
}

#[test]
fn mxfp8_activations_stay_within_the_e4m3_rounding_bound() {
    let mut rng = StdRng::seed_from_u64(0x00f4_0003);
    let (rows, k, n_act) = (32usize, 256usize, 9usize);
    let ggml = random_mxfp4(&mut rng, rows, k, 120, 130);
    let dev = pack::relayout_mxfp4(&ggml);
    let w = pack::Mxfp4Device {
        bytes: &dev,
        rows,
        k,
    };
    let wf = dequant_ref(&ggml, rows * k);
    // Normal-ish values, with blocks of very large and very small magnitude and one of zeros.
    let mut x: Vec<f32> = (0..n_act * k)
        .map(|_| (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0)
        .collect();
    for v in &mut x[64..96] {
        *v *= 1e4;
    }
    for v in &mut x[300..332] {
        *v *= 1e-5;
    }
    for v in &mut x[512..544] {
        *v = 0.0;
    }
    x[700] = 3.0e5; // one outlier in its block
    let act = pack::quantize_mxfp8(&x, k).expect("whole rows");
    let nkb = k / 32;
    // Element bound first.
    for (i, &v) in x.iter().enumerate() {
        let sc = 2f64.powi(act.s[i / 32] as i32 - 127);
        let qv = e4m3_ref(act.q[i]) * sc;
        let bound = 2f64.powi(-4) * (v as f64).abs() + 2f64.powi(-10) * sc;
        assert!(
            ((v as f64) - qv).abs() <= bound,
            "x[{i}] = {v} -> {qv} (bound {bound})"
        );
    }
    let idx: Vec<usize> = (0..n_act).collect();
    let got = pack::gemm_model(&w, &act, &idx).expect("model");
    let (mut num, mut den) = (0f64, 0f64);
    for a in 0..n_act {
        for r in 0..rows {
            let (mut want, mut bound) = (0f64, 0f64);
            for kk in 0..k {
                let wv = wf[r * k + kk] as f64;
                let xv = x[a * k + kk] as f64;
                let sc = 2f64.powi(act.s[a * nkb + kk / 32] as i32 - 127);
                want += wv * xv;
                bound += wv.abs()
                    * (2f64.powi(-4) * xv.abs() * (1.0 + 2f64.powi(-4)) + 2f64.powi(-10) * sc);
            }
            bound += nkb as f64 * 2f64.powi(-23) * bound.max(want.abs());
            let g = got[a * rows + r] as f64;
            assert!(
                (g - want).abs() <= bound,
                "row {r} act {a}: {g} vs {want} (bound {bound})"
            );
            num += (g - want).powi(2);
            den += want.powi(2);
        }
    }
    let nmse = num / den;
    eprintln!("W4A8 vs f64 with the original f32 activations: NMSE {nmse:.2e}");
    assert!(nmse < 5e-3, "NMSE {nmse}");
}

#[test]
fn a_wrongly_packed_fragment_is_caught() {
    // Negative control: swapping the two k-halves of A (registers 0/1 with 2/3) in one lane
    // must change the result, and a nibble outside the container is rejected by the model.
    let mut rng = StdRng::seed_from_u64(0x00f4_0004);
    let ggml = random_mxfp4(&mut rng, 16, 32, 125, 129);
    let dev = pack::relayout_mxfp4(&ggml);
    let w = pack::Mxfp4Device {
        bytes: &dev,
        rows: 16,
        k: 32,
    };
    let x: Vec<f32> = (0..8 * 32).map(|_| rng.random::<f32>() - 0.5).collect();
    let act = pack::quantize_mxfp8(&x, 32).expect("whole rows");
    let cols: [Option<usize>; 8] = std::array::from_fn(Some);
    let mut op = model::WarpOperands::default();
    for lane in 0..model::WARP {
        let (a, sfa) = pack::a_fragment(&w, 0, 0, lane);
        let (b, sfb) = pack::b_fragment(&act, &cols, 0, lane);
        op.a[lane] = a;
        op.sfa[lane] = sfa;
        op.b[lane] = b;
        op.sfb[lane] = sfb;
    }
    let good = model::mma_m16n8k32_e2m1_e4m3(&op).expect("model");
    let mut bad = op.clone();
    let lane = 5;
    bad.a[lane] = [op.a[lane][2], op.a[lane][3], op.a[lane][0], op.a[lane][1]];
    if bad.a[lane] != op.a[lane] {
        assert_ne!(model::mma_m16n8k32_e2m1_e4m3(&bad).expect("model"), good);
    }
    let mut raw = op.clone();
    raw.a[0][0] = 0x0000_00f1; // a packed nibble pair, not a container
    assert!(matches!(
        model::mma_m16n8k32_e2m1_e4m3(&raw),
        Err(model::ModelError::BadContainer { .. })
    ));
}
