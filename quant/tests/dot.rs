//! vec_dot: every SIMD dispatch agrees with the scalar path bit for bit, the native kernels equal
//! the dot product of the decoded vectors up to float summation error, and ggml's
//! test-quantize-fns dot-product thresholds hold.

mod common;

use common::*;
use gptoss_quant::{
    Dispatch, GgmlType, QuantError, dequantize, quantize, row_size, vec_dot, vec_dot_type,
    vec_dot_with,
};

const NATIVE: [(GgmlType, GgmlType); 6] = [
    (GgmlType::MXFP4, GgmlType::Q8_0),
    (GgmlType::Q4_0, GgmlType::Q8_0),
    (GgmlType::IQ4_NL, GgmlType::Q8_0),
    (GgmlType::Q8_0, GgmlType::Q8_0),
    (GgmlType::Q4_K, GgmlType::Q8_K),
    (GgmlType::Q6_K, GgmlType::Q8_K),
];

fn decoded(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    dequantize(ty, b, &mut v).unwrap();
    v
}

#[test]
fn simd_and_scalar_agree_exactly_on_random_blocks() {
    let mut r = rng("simd_and_scalar_agree");
    let dispatches: Vec<Dispatch> = Dispatch::ALL
        .into_iter()
        .filter(|d| d.is_available())
        .collect();
    eprintln!("dispatches available: {dispatches:?}");
    for (wty, aty) in NATIVE {
        let bs = wty.block_size().max(aty.block_size());
        for nb in [1usize, 3, 7, 8, 9, 15, 16, 17, 90, 101] {
            let n = nb * bs;
            for _ in 0..5 {
                let w = random_blocks(wty, n / wty.block_size(), &mut r);
                // Raw random codes on both sides, -128 included.
                let a = random_blocks(aty, n / aty.block_size(), &mut r);
                let s = vec_dot_with(Dispatch::Scalar, wty, &w, aty, &a, n).unwrap();
                assert!(s.is_finite());
                for &d in &dispatches {
                    let v = vec_dot_with(d, wty, &w, aty, &a, n).unwrap();
                    assert_eq!(
                        v.to_bits(),
                        s.to_bits(),
                        "{wty} x {aty}, n={n}, {d:?}: {v} vs scalar {s}"
                    );
                }
            }
        }
    }
}

/// The dispatches this build must have found, so that a SIMD kernel cannot go untested
/// unnoticed: on aarch64 plain NEON always exists, and `QUANT_EXPECT_BEST` (set by
/// scripts/test-aarch64: `NeonDotprod` under qemu's default CPU, `Neon` under `-cpu cortex-a53`)
/// names the dispatch that run-time detection must pick.
#[test]
fn detection_finds_the_expected_dispatches() {
    let best = Dispatch::best();
    eprintln!("best dispatch: {best:?}");
    if cfg!(target_arch = "aarch64") {
        assert!(Dispatch::Neon.is_available(), "aarch64 without NEON?");
        assert!(!Dispatch::Avx2.is_available() && !Dispatch::Avx512.is_available());
    } else {
        assert!(!Dispatch::Neon.is_available() && !Dispatch::NeonDotprod.is_available());
    }
    if let Ok(want) = std::env::var("QUANT_EXPECT_BEST") {
        assert_eq!(format!("{best:?}"), want, "QUANT_EXPECT_BEST");
    }
    // A dispatch the CPU lacks (the other architecture's, at least) is replaced by the best one,
    // never run: same bits, no illegal instruction.
    let mut r = rng("unavailable_dispatch");
    let missing: Vec<Dispatch> = Dispatch::ALL
        .into_iter()
        .filter(|d| !d.is_available())
        .collect();
    assert!(!missing.is_empty());
    for (wty, aty) in NATIVE {
        let n = 4 * 256;
        let w = random_blocks(wty, n / wty.block_size(), &mut r);
        let a = random_blocks(aty, n / aty.block_size(), &mut r);
        let want = vec_dot_with(best, wty, &w, aty, &a, n).unwrap();
        for &d in &missing {
            let got = vec_dot_with(d, wty, &w, aty, &a, n).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{wty} {d:?}");
        }
    }
}

#[test]
fn native_kernels_equal_the_decoded_dot_product() {
    let mut r = rng("native_kernels_equal_decoded");
    for (wty, aty) in NATIVE {
        for nb in [1usize, 9, 90] {
            let n = nb * 256;
            let w = random_blocks(wty, n / wty.block_size(), &mut r);
            // Activations made by the quantizer, so Q8_K's block sums are consistent.
            let x = random_f32(n, &mut r);
            let mut a = vec![0u8; row_size(aty, n).unwrap()];
            quantize(aty, &x, &mut a).unwrap();
            let (wf, af) = (decoded(wty, &w, n), decoded(aty, &a, n));
            let exact: f64 = wf.iter().zip(&af).map(|(p, q)| *p as f64 * *q as f64).sum();
            let mag: f64 = wf
                .iter()
                .zip(&af)
                .map(|(p, q)| (*p as f64 * *q as f64).abs())
                .sum();
            let got = vec_dot(wty, &w, aty, &a, n).unwrap() as f64;
            // Only float summation error: a few ulps of the sum of magnitudes.
            assert!(
                (got - exact).abs() <= 1e-5 * mag + 1e-30,
                "{wty} x {aty}, n={n}: got {got}, decoded dot {exact} (magnitude {mag})"
            );
        }
    }
}

#[test]
fn generic_pairs_fall_back_to_the_decoded_dot_product() {
    let mut r = rng("generic_pairs");
    use GgmlType::*;
    for wty in [
        IQ2_XXS, IQ3_S, IQ1_M, IQ4_XS, Q5_K, Q3_K, Q4_1, TQ1_0, NVFP4, F16, BF16, F32,
    ] {
        let aty = vec_dot_type(wty);
        let n = 512;
        let w = random_blocks(wty, n / wty.block_size(), &mut r);
        let x = random_f32(n, &mut r);
        let mut a = vec![0u8; row_size(aty, n).unwrap()];
        quantize(aty, &x, &mut a).unwrap();
        let (wf, af) = (decoded(wty, &w, n), decoded(aty, &a, n));
        let exact: f64 = wf.iter().zip(&af).map(|(p, q)| *p as f64 * *q as f64).sum();
        let mag: f64 = wf
            .iter()
            .zip(&af)
            .map(|(p, q)| (*p as f64 * *q as f64).abs())
            .sum();
        let got = vec_dot(wty, &w, aty, &a, n).unwrap() as f64;
        assert!(
            (got - exact).abs() <= 1e-5 * mag + 1e-30,
            "{wty}: got {got}, want {exact}"
        );
    }
}

/// ggml test-quantize-fns: data 0.1 + 2cos(i) and 0.1 + 2cos(i + 1), 4096 values; the
/// quantized dot product's error against the f32 dot product, divided by n.
#[test]
fn ggml_dot_product_error_thresholds() {
    use GgmlType::*;
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    let y: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32 + 1.0).cos()).collect();
    let reference: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
    let types = [
        F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
        TQ1_0, TQ2_0, MXFP4,
    ];
    for wty in types {
        let aty = vec_dot_type(wty);
        let mut w = vec![0u8; row_size(wty, n).unwrap()];
        let mut a = vec![0u8; row_size(aty, n).unwrap()];
        quantize(wty, &x, &mut w).unwrap();
        quantize(aty, &y, &mut a).unwrap();
        let got = vec_dot(wty, &w, aty, &a, n).unwrap();
        let err = (got as f64 - reference).abs() as f32 / n as f32;
        let max = match wty {
            Q2_K | IQ2_XS | IQ2_XXS | IQ3_XXS | IQ3_S | IQ2_S => 0.04,
            TQ1_0 | TQ2_0 => 0.15,
            _ => 0.02,
        };
        eprintln!("{wty:>7} x {aty:<5} dot error {err:.6} (max {max})");
        assert!(err < max, "{wty}: dot product error {err} >= {max}");
    }
}

#[test]
fn vec_dot_type_is_ggmls_pairing() {
    use GgmlType::*;
    // From ggml-cpu's type_traits_cpu table.
    for (w, a) in [
        (F32, F32),
        (F16, F16),
        (BF16, BF16),
        (Q4_0, Q8_0),
        (Q4_1, Q8_1),
        (Q5_0, Q8_0),
        (Q5_1, Q8_1),
        (Q8_0, Q8_0),
        (MXFP4, Q8_0),
        (NVFP4, Q8_0),
        (IQ4_NL, Q8_0),
        (Q2_K, Q8_K),
        (Q4_K, Q8_K),
        (Q6_K, Q8_K),
        (IQ2_XXS, Q8_K),
        (IQ1_M, Q8_K),
        (IQ4_XS, Q8_K),
        (TQ1_0, Q8_K),
    ] {
        assert_eq!(vec_dot_type(w), a, "{w}");
    }
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let w = vec![0u8; 17 * 4];
    let a = vec![0u8; 34 * 4];
    assert!(matches!(
        vec_dot(GgmlType::MXFP4, &w, GgmlType::Q8_0, &a[..100], 128),
        Err(QuantError::SizeMismatch {
            name: "activations",
            expected: 136,
            found: 100
        })
    ));
    assert!(matches!(
        vec_dot(GgmlType::MXFP4, &w, GgmlType::Q8_0, &a, 100),
        Err(QuantError::NotBlockMultiple { .. })
    ));
    assert!(matches!(
        vec_dot(GgmlType::Q1_0, &[0u8; 18], GgmlType::Q8_0, &[0u8; 136], 128),
        Err(QuantError::Unsupported { .. })
    ));
    let mut out = vec![0.0f32; 32];
    assert!(dequantize(GgmlType::MXFP4, &w, &mut out).is_err());
    assert!(quantize(GgmlType::IQ2_XXS, &[0.5; 256], &mut [0u8; 66]).is_err());
}
