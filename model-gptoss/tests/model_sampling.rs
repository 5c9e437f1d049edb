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

/// The sampler's chain written the slow, obvious way: full sorts for top-k and top-p.
fn reference_choice(logits: &[f32], history: &[u32], cfg: &SamplerConfig, u: f64) -> u32 {
    let mut l: Vec<f32> = logits
        .iter()
        .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
        .collect();
    if cfg.repeat_penalty != 1.0 && cfg.repeat_last_n > 0 {
        let recent = &history[history.len().saturating_sub(cfg.repeat_last_n)..];
        let distinct: std::collections::BTreeSet<u32> = recent.iter().copied().collect();
        for t in distinct {
            let x = &mut l[t as usize];
            *x = if *x > 0.0 {
                *x / cfg.repeat_penalty
            } else {
                *x * cfg.repeat_penalty
            };
        }
    }
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    let mut kept = vec![true; l.len()];
    if cfg.top_k > 0 {
        for &i in order.iter().skip(cfg.top_k) {
            kept[i] = false;
        }
    }
    let max = l[order[0]];
    let inv_t = 1.0 / cfg.temperature;
    let mut w: Vec<f64> = (0..l.len())
        .map(|i| {
            if kept[i] && l[i] != f32::NEG_INFINITY {
                ((l[i] - max) * inv_t).exp() as f64
            } else {
                0.0
            }
        })
        .collect();
    if cfg.top_p < 1.0 {
        let need = cfg.top_p as f64 * w.iter().sum::<f64>();
        let mut acc = 0.0;
        let mut inside = true;
        for &i in &order {
            if !inside {
                w[i] = 0.0;
            } else if w[i] > 0.0 {
                acc += w[i];
                inside = acc < need;
            }
        }
    }
    for x in w.iter_mut() {
        if (*x as f32) < cfg.min_p {
            *x = 0.0;
        }
    }
    let target = u * w.iter().sum::<f64>();
    let mut acc = 0.0;
    for (i, &x) in w.iter().enumerate() {
        acc += x;
        if target < acc {
            return i as u32;
        }
    }
    w.iter().rposition(|&x| x > 0.0).unwrap() as u32
}

#[test]
fn sample_at_matches_full_sorts() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    for case in 0..24 {
        let n = [1, 7, 300, 5000][case % 4];
        // Flat (every token matters), peaked (a few do) and heavy-tailed logits, some of
        // them NaN or -inf, and a few exact ties.
        let spread = [0.5f32, 4.0, 12.0][case % 3];
        let mut logits: Vec<f32> = (0..n)
            .map(|_| spread * (r.random::<f32>() - 0.5) * 2.0)
            .collect();
        if n > 10 {
            logits[r.random_range(0..n)] = f32::NAN;
            logits[r.random_range(0..n)] = f32::NEG_INFINITY;
            let (a, b) = (r.random_range(0..n), r.random_range(0..n));
            logits[a] = logits[b];
        }
        let history: Vec<u32> = (0..r.random_range(0..80))
            .map(|_| r.random_range(0..n as u32))
            .collect();
        let cfg = SamplerConfig {
            temperature: [0.3f32, 0.7, 1.0, 1.9][case % 4],
            top_k: [0, 0, 1, 40, 1000][case % 5],
            top_p: [1.0f32, 0.9, 0.5, 0.999, 0.05][case % 5 * 7 % 5],
            min_p: [0.0f32, 0.0, 0.05, 0.3][case % 4 * 3 % 4],
            repeat_penalty: [1.0f32, 1.3, 0.8][case % 3],
            repeat_last_n: 64,
            seed: 0,
        };
        let mut s = sampler(cfg.clone());
        for k in 0..200 {
            let u = match k {
                0 => 0.0,
                1 => 1.0 - f64::EPSILON,
                _ => r.random::<f64>(),
            };
            let got = s.sample_at(&logits, &history, u).unwrap();
            let want = reference_choice(&logits, &history, &cfg, u);
            assert_eq!(got, want, "case {case} n {n} u {u} {cfg:?}");
        }
    }
}

#[test]
fn softmax_draw_is_the_next_sample() {
    let logits: Vec<f32> = (0..3000)
        .map(|i| ((i * 7919) % 1013) as f32 / 150.0)
        .collect();
    let history: Vec<u32> = (0..70).map(|i| (i * 37) % 3000).collect();
    let cfg = SamplerConfig {
        temperature: 0.8,
        min_p: 0.02,
        repeat_penalty: 1.2,
        seed: 9,
        ..Default::default()
    };
    let (mut a, mut b) = (sampler(cfg.clone()), sampler(cfg.clone()));
    for _ in 0..50 {
        let d = a.softmax_draw(&history).expect("a softmax draw");
        assert_eq!(d.penalized.len(), 64, "the last 64 tokens, all distinct");
        assert_eq!(d.inv_temperature, 1.0 / 0.8);
        assert_eq!(
            a.sample_at(&logits, &history, d.u).unwrap(),
            b.sample(&logits, &history).unwrap()
        );
    }
    // Settings that need sorting are not softmax draws, and do not spend a random number.
    for cfg in [
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            ..Default::default()
        },
        SamplerConfig {
            temperature: 0.8,
            top_p: 0.9,
            ..Default::default()
        },
        SamplerConfig::default(),
    ] {
        assert!(sampler(cfg).softmax_draw(&history).is_none());
    }
}

/// Candidates as a device gathers them: every token whose weight (penalized logit, f32 exp
/// relative to the maximum) is at least `floor` (with `by_top_k` and a top-k cut: every token
/// at or above the k-th largest penalized logit), in shuffled order, and the others' sum.
fn host_candidates(
    logits: &[f32],
    history: &[u32],
    cfg: &SamplerConfig,
    floor: f32,
    by_top_k: bool,
    shuffle: u64,
) -> gptoss_model::sampling::SoftmaxCandidates {
    let mut l: Vec<f32> = logits
        .iter()
        .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
        .collect();
    if cfg.repeat_penalty != 1.0 {
        let recent = &history[history.len().saturating_sub(cfg.repeat_last_n)..];
        let distinct: std::collections::BTreeSet<u32> = recent.iter().copied().collect();
        for t in distinct {
            let x = &mut l[t as usize];
            *x = if *x > 0.0 {
                *x / cfg.repeat_penalty
            } else {
                *x * cfg.repeat_penalty
            };
        }
    }
    let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / cfg.temperature;
    let kth = (by_top_k && cfg.top_k > 0 && cfg.top_k < l.len()).then(|| {
        let mut sorted = l.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        sorted[cfg.top_k - 1]
    });
    let mut tokens = Vec::new();
    let mut rest = 0.0;
    for (i, &x) in l.iter().enumerate() {
        let w = if x == f32::NEG_INFINITY {
            0.0
        } else {
            ((x - max) * inv_t).exp()
        };
        if kth.map_or(w >= floor, |v| x >= v) {
            tokens.push((i as u32, x));
        } else {
            rest += w as f64;
        }
    }
    // Any order: a device appends them as its threads find them.
    let k = tokens.len().max(1);
    tokens.rotate_left((shuffle as usize) % k);
    tokens.reverse();
    gptoss_model::sampling::SoftmaxCandidates {
        tokens,
        rest_weight: rest,
    }
}

#[test]
fn candidates_decide_cut_draws_as_the_whole_row() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut decided, mut draws) = (0, 0);
    for case in 0..30 {
        let n = [50, 3000, 20000][case % 3];
        let spread = [1.0f32, 8.0, 20.0][case % 3 * 2 % 3];
        let mut logits: Vec<f32> = (0..n)
            .map(|_| spread * (r.random::<f32>() - 0.5) * 2.0)
            .collect();
        logits[r.random_range(0..n)] = f32::NAN;
        logits[r.random_range(0..n)] = f32::NEG_INFINITY;
        let history: Vec<u32> = (0..40).map(|_| r.random_range(0..n as u32)).collect();
        let cfg = SamplerConfig {
            temperature: [0.5f32, 0.8, 1.0, 1.5][case % 4],
            top_k: [0, 40, 1, 5000, 200][case % 5],
            top_p: [0.95f32, 1.0, 0.5, 0.9, 0.99][case % 5 * 3 % 5],
            min_p: [0.0f32, 0.05][case % 2],
            repeat_penalty: [1.0f32, 1.2][(case / 2) % 2],
            repeat_last_n: 64,
            seed: 0,
        };
        let mut s = sampler(cfg.clone());
        let floor = 1.0 / 1048576.0;
        let c = host_candidates(&logits, &history, &cfg, floor, false, case as u64);
        // Picked by top-k they always decide a top-k cut.
        let top_k_cut = cfg.top_k > 0 && cfg.top_k < n;
        let ck = host_candidates(&logits, &history, &cfg, floor, true, case as u64);
        for _ in 0..100 {
            let u = r.random::<f64>();
            let want = s.sample_at(&logits, &history, u).unwrap();
            draws += 1;
            if let Some(got) = s.sample_candidates(&c, u) {
                decided += 1;
                assert_eq!(got, want, "case {case} u {u} {cfg:?}");
            }
            match s.sample_candidates(&ck, u) {
                Some(got) => assert_eq!(got, want, "top-k candidates, case {case} u {u} {cfg:?}"),
                None => assert!(
                    !top_k_cut,
                    "top-k candidates undecided, case {case} {cfg:?}"
                ),
            }
        }
    }
    eprintln!("{decided} of {draws} draws decided by the candidates");
    assert!(decided * 2 > draws, "{decided} of {draws}");
}
