//! The host sampler on one gpt-oss vocabulary row (201088 logits): what a sampled decode step
//! costs on the CPU when the logits come back (no device draw), for chat-like settings on a flat
//! row (random logits, like the synthetic model's) and a peaked one (a few tokens far ahead, as
//! a trained model's).
//!
//! `cargo bench -p gptoss-model --bench sampling`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gptoss_model::{Sampler, SamplerConfig};
use rand::{Rng, SeedableRng};

const VOCAB: usize = 201088;

fn rows() -> [(&'static str, Vec<f32>); 2] {
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    let flat: Vec<f32> = (0..VOCAB).map(|_| r.random_range(-4.0..4.0)).collect();
    // A trained model's row: most logits around 0, a few dozen 10 to 20 above them.
    let mut peaked: Vec<f32> = (0..VOCAB).map(|_| r.random_range(-3.0..3.0)).collect();
    for i in 0..40 {
        peaked[r.random_range(0..VOCAB)] = 20.0 - i as f32 * 0.25;
    }
    [("flat", flat), ("peaked", peaked)]
}

fn bench(c: &mut Criterion) {
    let settings = [
        ("T0.7", 0.7, 0, 1.0),
        ("T0.8 k40 p0.95", 0.8, 40, 0.95),
        ("T0.8 p0.9", 0.8, 0, 0.9),
    ];
    let mut g = c.benchmark_group("sample 201088 logits");
    g.sample_size(20);
    for (row_name, row) in rows() {
        for (name, temperature, top_k, top_p) in settings {
            let mut s = Sampler::new(SamplerConfig {
                temperature,
                top_k,
                top_p,
                seed: 7,
                ..Default::default()
            })
            .expect("valid settings");
            g.bench_function(format!("{row_name} {name}"), |b| {
                b.iter(|| s.sample(black_box(&row), &[]).expect("a token"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
