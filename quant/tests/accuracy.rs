//! Round-trip accuracy: ggml test-quantize-fns' RMSE thresholds on its synthetic data, and a
//! proptest that quantize -> dequantize stays within each type's error bound on arbitrary input.

mod common;

use gptoss_quant::{GgmlType, dequantize, quantize, row_size};
use proptest::prelude::*;

const QUANTIZABLE: [GgmlType; 20] = {
    use GgmlType::*;
    [
        F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL,
        IQ4_XS, TQ1_0, TQ2_0, MXFP4, F32,
    ]
};

fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; row_size(ty, x.len()).unwrap()];
    quantize(ty, x, &mut q).unwrap();
    let mut y = vec![0.0f32; x.len()];
    dequantize(ty, &q, &mut y).unwrap();
    y
}

#[test]
fn ggml_total_quantization_error_thresholds() {
    use GgmlType::*;
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    for ty in QUANTIZABLE {
        let y = round_trip(ty, &x);
        let sum: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let rmse = sum.sqrt() as f32 / n as f32;
        let max = match ty {
            TQ1_0 | TQ2_0 => 0.01,
            Q2_K | IQ2_S => 0.0075,
            Q3_K | IQ3_S => 0.004,
            IQ3_XXS => 0.005,
            _ => 0.002,
        };
        eprintln!("{ty:>7} rmse/n {rmse:.6} (max {max})");
        assert!(rmse < max, "{ty}: total quantization error {rmse} >= {max}");
    }
}

/// Per-block error bound as a fraction of the block's largest magnitude (derived from each
/// format's step size, with headroom for the f16 rounding of the scales).
fn bound(ty: GgmlType) -> f32 {
    use GgmlType::*;
    match ty {
        F32 => 0.0,
        F16 => 1.0 / 1024.0,
        BF16 => 1.0 / 128.0,
        Q8_0 | Q8_1 | Q8_K => 0.01,
        Q6_K => 0.1,
        Q5_0 | Q5_1 => 0.08,
        Q4_0 | Q4_1 => 0.15,
        Q5_K => 0.2,
        Q4_K | IQ4_NL | IQ4_XS => 0.35,
        MXFP4 | TQ1_0 | TQ2_0 => 0.55,
        _ => 1.0,
    }
}

fn values() -> impl Strategy<Value = f32> {
    // Zero, or a magnitude in [1e-3, 1e4] (keeps every f16 scale normal), either sign.
    prop_oneof![
        1 => Just(0.0f32),
        8 => (-3.0f32..4.0, any::<bool>()).prop_map(|(e, s)| if s { -(10f32.powf(e)) } else { 10f32.powf(e) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn round_trip_stays_within_the_type_bound(x in prop::collection::vec(values(), 512)) {
        for ty in QUANTIZABLE {
            let y = round_trip(ty, &x);
            let bs = ty.block_size().max(32);
            for (xb, yb) in x.chunks(bs).zip(y.chunks(bs)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!(b.is_finite(), "{}: non-finite output for {}", ty, a);
                    prop_assert!((a - b).abs() <= bound(ty) * amax * 1.0001, "{}: {} -> {} (block amax {})", ty, a, b, amax);
                }
            }
        }
    }

    #[test]
    fn simd_equals_scalar_on_arbitrary_blocks(seed in any::<u64>(), nb in 1usize..40) {
        use rand::SeedableRng;
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        use GgmlType::*;
        for (wty, aty) in [(MXFP4, Q8_0), (Q8_0, Q8_0), (Q4_0, Q8_0), (IQ4_NL, Q8_0), (Q4_K, Q8_K), (Q6_K, Q8_K)] {
            // 32-value blocks: nb of them; 256-value super-blocks: nb / 4 + 1.
            let n = if aty == Q8_K { 256 * (nb / 4 + 1) } else { 32 * nb };
            let w = common::random_blocks(wty, n / wty.block_size(), &mut r);
            let a = common::random_blocks(aty, n / aty.block_size(), &mut r);
            let s = gptoss_quant::vec_dot_with(gptoss_quant::Dispatch::Scalar, wty, &w, aty, &a, n).unwrap();
            for d in gptoss_quant::Dispatch::ALL.into_iter().filter(|d| d.is_available()) {
                let v = gptoss_quant::vec_dot_with(d, wty, &w, aty, &a, n).unwrap();
                prop_assert_eq!(v.to_bits(), s.to_bits(), "{} x {} {:?}", wty, aty, d);
            }
        }
    }
}
