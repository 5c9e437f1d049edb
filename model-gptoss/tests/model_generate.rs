//! The generation loop on the tiny fixture (CPU backend): greedy continuations equal
//! transformers' `greedy_24`, and every stop condition ends the loop where it should.

use gptoss_backend::CpuBackend;
use gptoss_model::{GenerateOptions, Model, Sampler, SamplerConfig, StopReason, generate};
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/gpt-oss-tiny")
}

fn model() -> Model<CpuBackend> {
    Model::load(
        CpuBackend::new(),
        fixture_dir().join("tiny-gptoss-mxfp4-bf16.gguf"),
    )
    .unwrap()
}

/// (prompt, greedy_24) of the reference's `random40` sequence (its greedy steps are all
/// separated by more than 4e-3, see the reference's greedy_step_logits_top16).
fn random40() -> (Vec<u32>, Vec<u32>) {
    let text = std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let s = &j["sequences"]["random40"];
    (ids(&s["ids"]), ids(&s["greedy_24"]))
}

fn greedy() -> Sampler {
    Sampler::new(SamplerConfig::default()).unwrap()
}

#[test]
fn greedy_generation_reproduces_the_reference() {
    let m = model();
    let (prompt, want) = random40();
    let mut s = m.new_session(Some(128)).unwrap();
    let mut streamed = Vec::new();
    let opts = GenerateOptions {
        max_tokens: 24,
        stop_tokens: vec![],
    };
    let g = generate(&m, &mut s, &prompt, &mut greedy(), &opts, &mut |t| {
        streamed.push(t);
        true
    })
    .unwrap();
    assert_eq!(g.tokens, want);
    assert_eq!(streamed, want);
    assert_eq!(g.stop, StopReason::MaxTokens);
    assert_eq!((g.prompt_tokens, g.decode_steps), (40, 23));
    // The last generated token is not yet in the cache.
    assert_eq!(s.pos(), 40 + 23);
    assert!(g.prefill_tokens_per_second() > 0.0 && g.decode_tokens_per_second() > 0.0);

    // The host sampling path (a tiny temperature with top-k 1) agrees with device argmax.
    let mut s = m.new_session(Some(128)).unwrap();
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: 0.7,
        top_k: 1,
        seed: 9,
        ..Default::default()
    })
    .unwrap();
    assert!(!sampler.is_plain_greedy());
    let g = generate(&m, &mut s, &prompt, &mut sampler, &opts, &mut |_| true).unwrap();
    assert_eq!(g.tokens, want);
}

#[test]
fn generation_stops_on_end_tokens_callback_limit_and_full_context() {
    let m = model();
    let (prompt, want) = random40();
    // Stop on the first occurrence of the 6th greedy token.
    let stop = want[5];
    let first = want.iter().position(|&t| t == stop).unwrap();
    let mut s = m.new_session(None).unwrap();
    let opts = GenerateOptions {
        max_tokens: 24,
        stop_tokens: vec![stop],
    };
    let g = generate(&m, &mut s, &prompt, &mut greedy(), &opts, &mut |_| true).unwrap();
    assert_eq!(g.stop, StopReason::EndOfGeneration(stop));
    assert_eq!(g.tokens, want[..=first]);

    let mut s = m.new_session(None).unwrap();
    let mut n = 0;
    let opts = GenerateOptions {
        max_tokens: 24,
        stop_tokens: vec![],
    };
    let g = generate(&m, &mut s, &prompt, &mut greedy(), &opts, &mut |_| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!((g.stop, g.tokens.len()), (StopReason::Callback, 3));

    // A 45-position session: 40 prompt tokens, then 5 decode inputs at most -> 6 tokens.
    let mut s = m.new_session(Some(45)).unwrap();
    let g = generate(&m, &mut s, &prompt, &mut greedy(), &opts, &mut |_| true).unwrap();
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(g.tokens, want[..6]);

    let mut s = m.new_session(None).unwrap();
    let zero = GenerateOptions {
        max_tokens: 0,
        stop_tokens: vec![],
    };
    let g = generate(&m, &mut s, &prompt, &mut greedy(), &zero, &mut |_| true).unwrap();
    assert!(g.tokens.is_empty());
    assert!(generate(&m, &mut s, &[], &mut greedy(), &opts, &mut |_| true).is_err());
}
