//! Test helpers: seeded random inputs, weights in every test type with their exact values
//! (decoded here by simple loops, independently of the backend), error metrics.
#![allow(dead_code)]

use gptoss_backend::{GgmlType, HostBytes, WeightData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A generator seeded from `GPTOSS_TEST_SEED` or the clock; the seed is printed so a failure can
/// be replayed.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("GPTOSS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {seed} (replay with GPTOSS_TEST_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// Uniform values in `[-a, a]`.
pub fn uniform(rng: &mut StdRng, n: usize, a: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-a..=a)).collect()
}

/// `v` as f32.
pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Normalized mean squared error of `a` against the reference `r` (NaN-safe: NaN fails limits).
pub fn nmse(a: &[f32], r: &[f64]) -> f64 {
    assert_eq!(a.len(), r.len(), "nmse: lengths differ");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(r) {
        num += (x as f64 - y) * (x as f64 - y);
        den += y * y;
    }
    if num.is_nan() || den.is_nan() {
        return f64::NAN;
    }
    num / den.max(f64::MIN_POSITIVE)
}

/// Largest absolute difference (NaN if any).
pub fn max_abs(a: &[f32], r: &[f64]) -> f64 {
    assert_eq!(a.len(), r.len(), "max_abs: lengths differ");
    let mut m = 0f64;
    for (&x, &y) in a.iter().zip(r) {
        let d = (x as f64 - y).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        m = m.max(d);
    }
    m
}

/// Assert NMSE and max-abs limits, printing both.
#[track_caller]
pub fn check(what: &str, got: &[f32], want: &[f64], nmse_max: f64, abs_max: f64) {
    let (e, m) = (nmse(got, want), max_abs(got, want));
    println!("{what}: nmse {e:.3e}, max|diff| {m:.3e}");
    assert!(
        e <= nmse_max && m <= abs_max,
        "{what}: nmse {e:.3e} (limit {nmse_max:.0e}), max|diff| {m:.3e} (limit {abs_max:.0e})"
    );
    let energy: f64 = want.iter().map(|x| x * x).sum();
    assert!(
        energy > 0.0,
        "{what}: the reference is all zeros; the test would prove nothing"
    );
}

/// A max-abs limit of `rel` times the reference's largest magnitude.
pub fn rel_abs(want: &[f64], rel: f64) -> f64 {
    rel * want.iter().fold(0f64, |m, v| m.max(v.abs()))
}

/// The E2M1 values of MXFP4 codes (OCP spec).
const E2M1: [f64; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Random weight of type `ty` and ggml shape `shape` (numel values around `amp`): the bytes, and
/// the exact values they encode (decoded here by simple loops).
pub fn weight(
    rng: &mut StdRng,
    name: &str,
    ty: GgmlType,
    shape: &[usize],
    amp: f64,
) -> (WeightData, Vec<f64>) {
    let n: usize = shape.iter().product();
    let mut bytes = Vec::new();
    let mut vals = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => {
            for x in uniform(rng, n, amp) {
                let f = x as f32;
                bytes.extend_from_slice(&f.to_le_bytes());
                vals.push(f as f64);
            }
        }
        GgmlType::F16 => {
            for x in uniform(rng, n, amp) {
                let h = half::f16::from_f64(x);
                bytes.extend_from_slice(&h.to_le_bytes());
                vals.push(h.to_f64());
            }
        }
        GgmlType::BF16 => {
            for x in uniform(rng, n, amp) {
                let h = half::bf16::from_f64(x);
                bytes.extend_from_slice(&h.to_le_bytes());
                vals.push(h.to_f64());
            }
        }
        GgmlType::Q8_0 => {
            assert_eq!(n % 32, 0);
            for _ in 0..n / 32 {
                // A random scale per block and random codes: every byte pattern of the codes.
                let d = half::f16::from_f64(amp * rng.random_range(0.5..1.0) / 127.0);
                bytes.extend_from_slice(&d.to_le_bytes());
                for _ in 0..32 {
                    let q: i8 = rng.random();
                    bytes.push(q as u8);
                    vals.push(q as f64 * d.to_f64());
                }
            }
        }
        GgmlType::MXFP4 => {
            assert_eq!(n % 32, 0);
            // Scales near amp/6 (6 is the largest E2M1 magnitude), a spread of +-2 octaves.
            let e0 = (amp / 4.0).log2().round() as i32 + 127;
            for _ in 0..n / 32 {
                let e = (e0 + rng.random_range(-2..=1)).clamp(1, 254) as u8;
                let scale = 2f64.powi(e as i32 - 127);
                bytes.push(e);
                let qs: [u8; 16] = rng.random();
                bytes.extend_from_slice(&qs);
                let mut block = [0f64; 32];
                for j in 0..16 {
                    block[j] = E2M1[(qs[j] & 15) as usize] * scale;
                    block[j + 16] = E2M1[(qs[j] >> 4) as usize] * scale;
                }
                vals.extend_from_slice(&block);
            }
        }
        other => panic!("no test encoder for {other}"),
    }
    let w = WeightData {
        name: name.to_string(),
        dtype: ty,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes),
    };
    (w, vals)
}

/// Naive `x @ W^T + b` in f64: `x` `[t, k]`, `w` `n` rows of `k`.
pub fn linear_f64(
    x: &[f64],
    t: usize,
    w: &[f64],
    k: usize,
    n: usize,
    bias: Option<&[f64]>,
) -> Vec<f64> {
    let mut y = vec![0f64; t * n];
    for i in 0..t {
        for j in 0..n {
            let mut s = bias.map_or(0.0, |b| b[j]);
            for c in 0..k {
                s += x[i * k + c] * w[j * k + c];
            }
            y[i * n + j] = s;
        }
    }
    y
}
