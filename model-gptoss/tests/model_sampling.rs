//! The sampler: each filter against distributions computed by hand, and reproducibility.

use gptoss_model::{Sampler, SamplerConfig};

fn sampler(cfg: SamplerConfig) -> Sampler {
    Sampler::new(cfg).unwrap()
}

/// Empirical frequencies of `n` draws.
fn frequencies(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..n {
        counts[s.sample(logits, &[]).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn ln(p: &[f64]) -> Vec<f32> {
    p.iter().map(|x| x.ln() as f32).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "id {i}: {g} vs {w} (all: {got:?} vs {want:?})"
        );
    }
}

#[test]
fn greedy_is_argmax_with_first_index_on_ties() {
    let mut s = sampler(SamplerConfig::default());
    assert!(s.is_plain_greedy());
    assert_eq!(s.sample(&[0.1, 2.0, -3.0, 2.0], &[]).unwrap(), 1);
    assert_eq!(s.sample(&[f32::NAN, -1.0, -2.0], &[]).unwrap(), 1);
    assert!(s.sample(&[f32::NAN, f32::NEG_INFINITY], &[]).is_err());
    assert!(s.sample(&[], &[]).is_err());
}

#[test]
fn temperature_one_samples_the_softmax() {
    let p = [0.5, 0.3, 0.15, 0.05];
    let mut s = sampler(SamplerConfig {
        temperature: 1.0,
        seed: 1,
        ..Default::default()
    });
    assert_close(&frequencies(&mut s, &ln(&p), 40_000), &p, 0.01);
}

#[test]
fn temperature_two_flattens() {
    // softmax(ln p / 2) is proportional to sqrt(p).
    let p = [0.64, 0.16, 0.16, 0.04];
    let q: Vec<f64> = p.iter().map(|x: &f64| x.sqrt()).collect();
    let z: f64 = q.iter().sum();
    let want: Vec<f64> = q.iter().map(|x| x / z).collect();
    let mut s = sampler(SamplerConfig {
        temperature: 2.0,
        seed: 2,
        ..Default::default()
    });
    assert_close(&frequencies(&mut s, &ln(&p), 40_000), &want, 0.01);
}

#[test]
fn top_k_top_p_and_min_p_truncate_then_renormalize() {
    let p = [0.05, 0.5, 0.3, 0.15];
    let logits = ln(&p);
    // top-k 2 keeps ids 1 and 2: 0.5/0.8, 0.3/0.8.
    let mut s = sampler(SamplerConfig {
        temperature: 1.0,
        top_k: 2,
        seed: 3,
        ..Default::default()
    });
    assert_close(
        &frequencies(&mut s, &logits, 40_000),
        &[0.0, 0.625, 0.375, 0.0],
        0.01,
    );
    // top-p 0.85 keeps 0.5 + 0.3 + 0.15 (0.8 < 0.85): ids 1, 2, 3.
    let mut s = sampler(SamplerConfig {
        temperature: 1.0,
        top_p: 0.85,
        seed: 4,
        ..Default::default()
    });
    assert_close(
        &frequencies(&mut s, &logits, 40_000),
        &[0.0, 0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95],
        0.01,
    );
    // min-p 0.5 keeps p >= 0.25: ids 1 and 2.
    let mut s = sampler(SamplerConfig {
        temperature: 1.0,
        min_p: 0.5,
        seed: 5,
        ..Default::default()
    });
    assert_close(
        &frequencies(&mut s, &logits, 40_000),
        &[0.0, 0.625, 0.375, 0.0],
        0.01,
    );
    // top-k 1 is greedy at any temperature.
    let mut s = sampler(SamplerConfig {
        temperature: 5.0,
        top_k: 1,
        seed: 6,
        ..Default::default()
    });
    assert!((0..200).all(|_| s.sample(&logits, &[]).unwrap() == 1));
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let mut s = sampler(SamplerConfig {
        repeat_penalty: 2.0,
        ..Default::default()
    });
    assert!(!s.is_plain_greedy());
    // 2.0 -> 1.0 once seen, below 1.9.
    assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[0]).unwrap(), 1);
    assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[2]).unwrap(), 0);
    // -1.0 -> -2.0 once seen, below -1.5.
    assert_eq!(s.sample(&[-1.0, -1.5], &[0, 0, 0]).unwrap(), 1);
    // Only the last `repeat_last_n` tokens count.
    let mut s = sampler(SamplerConfig {
        repeat_penalty: 2.0,
        repeat_last_n: 2,
        ..Default::default()
    });
    assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[0, 2, 2]).unwrap(), 0);
    assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[2, 0, 2]).unwrap(), 1);
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let logits: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1013) as f32 / 100.0)
        .collect();
    let cfg = SamplerConfig {
        temperature: 0.8,
        top_k: 50,
        top_p: 0.95,
        min_p: 0.01,
        repeat_penalty: 1.1,
        seed: 42,
        ..Default::default()
    };
    let run = |cfg: SamplerConfig| {
        let mut s = sampler(cfg);
        let mut hist = Vec::new();
        for _ in 0..200 {
            let t = s.sample(&logits, &hist).unwrap();
            hist.push(t);
        }
        hist
    };
    let a = run(cfg.clone());
    assert_eq!(a, run(cfg.clone()));
    assert_ne!(a, run(SamplerConfig { seed: 43, ..cfg }));
    // Many distinct tokens were drawn: it is sampling, not argmax.
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert!(distinct.len() > 10, "{distinct:?}");
}

#[test]
fn bad_settings_are_rejected() {
    for cfg in [
        SamplerConfig {
            top_p: 0.0,
            ..Default::default()
        },
        SamplerConfig {
            top_p: 1.5,
            ..Default::default()
        },
        SamplerConfig {
            min_p: -0.1,
            ..Default::default()
        },
        SamplerConfig {
            repeat_penalty: 0.0,
            ..Default::default()
        },
        SamplerConfig {
            temperature: f32::NAN,
            ..Default::default()
        },
    ] {
        assert!(Sampler::new(cfg.clone()).is_err(), "{cfg:?}");
    }
}
