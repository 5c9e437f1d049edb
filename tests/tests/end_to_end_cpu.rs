//! End-to-end tests of the GPT-OSS forward pass on the CPU reference backend.
//!
//! - The tiny fixture GGUFs (BF16 and Q8_0 non-expert weights, MXFP4 experts) against
//!   transformers' float32 outputs: logits at every position, per-layer residuals, top-16
//!   rankings (near-ties excepted), greedy continuations with incremental decode, and chunked
//!   prefill through the sliding-window ring cache.
//! - Random GPT-OSS files of other dimensions (head_dim not a power of two, no GQA, other
//!   windows, patterns and weight types), written by gguf-py and computed independently in
//!   float64 numpy (`tests/oracle/gptoss_random.py`, itself checked against transformers'
//!   reference by `oracle_agrees_with_transformers`).

use gptoss_backend::{Backend, CpuBackend};
use gptoss_model::{Model, ModelError, Session};
use gptoss_tests::reference::{RefTensors, check_topk, ranking};
use gptoss_tests::reference::{read_json, sequences, tiny};
use gptoss_tests::{max_abs_diff, nmse, oracle_python, random_oracle_model};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Logit tolerances of the issue: NMSE and max |diff| against the reference.
const NMSE_TOL: f64 = 1e-6;
const MAX_TOL: f64 = 1e-3;

fn load(path: &Path) -> Model<CpuBackend> {
    Model::load(CpuBackend::new(), path)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn host(
    model: &Model<CpuBackend>,
    t: &<CpuBackend as Backend>::Tensor,
) -> (Vec<f32>, usize, usize) {
    model.backend().to_host(t).expect("to_host")
}

/// Compare `[rows, vocab]` logits with the reference rows: NMSE and max |diff| over the block,
/// and each row's top-16 ranking (near-ties within twice that row's own error excepted).
fn check_logits(label: &str, ours: &[f32], reference: &[f32], vocab: usize) {
    assert_eq!(ours.len(), reference.len(), "{label}: logits sizes differ");
    let e = nmse(ours, reference);
    let m = max_abs_diff(ours, reference);
    eprintln!("{label}: nmse {e:.3e}, max |diff| {m:.3e}");
    assert!(e <= NMSE_TOL, "{label}: logits NMSE {e:.3e} > {NMSE_TOL:e}");
    assert!(
        m <= MAX_TOL,
        "{label}: logits max |diff| {m:.3e} > {MAX_TOL:e}"
    );
    for (r, (o, x)) in ours.chunks(vocab).zip(reference.chunks(vocab)).enumerate() {
        let eps = 2.0 * max_abs_diff(o, x) + 1e-7;
        if let Err(msg) = check_topk(o, x, 16, eps) {
            panic!("{label}: position {r}: top-16 disagrees: {msg}");
        }
    }
}

fn check_close(label: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{label}: sizes differ");
    let e = nmse(ours, reference);
    let m = max_abs_diff(ours, reference);
    eprintln!("{label}: nmse {e:.3e}, max |diff| {m:.3e}");
    assert!(
        e <= NMSE_TOL && m <= MAX_TOL,
        "{label}: nmse {e:.3e}, max |diff| {m:.3e}"
    );
}

/// Prefill every reference sequence in one pass; compare all logits and (when the reference
/// has them) the residual stream after every layer.
fn prefill_matches(gguf: &str, reference: &str) {
    let model = load(&tiny(gguf));
    let json = read_json(&tiny(&format!("{reference}.json")));
    let refs = RefTensors::load(&tiny(&format!("{reference}.safetensors")));
    let vocab = model.vocab_size();
    assert_eq!(
        vocab as u64,
        json["vocab"].as_u64().expect("vocab"),
        "vocabulary size"
    );
    for (name, ids, _) in sequences(&json) {
        let mut s = model.new_session(Some(128)).expect("session");
        let mut layers: Vec<Vec<f32>> = Vec::new();
        let logits = model
            .forward_with(&mut s, &ids, true, &mut |il, h| {
                assert_eq!(il, layers.len(), "layers come in order");
                layers.push(model.backend().to_host(h)?.0);
                Ok(())
            })
            .expect("forward");
        let (ours, rows, cols) = host(&model, &logits);
        assert_eq!((rows, cols), (ids.len(), vocab), "{name}: logits shape");
        let (want, shape) = refs.f32(&format!("{name}.logits"));
        assert_eq!(shape, &[ids.len(), vocab], "{name}: reference logits shape");
        check_logits(&format!("{gguf} {name} logits"), &ours, want, vocab);
        assert_eq!(layers.len(), model.config().n_layers);
        for (il, got) in layers.iter().enumerate() {
            let key = format!("{name}.layer{il}.out");
            if refs.has_f32(&key) {
                check_close(&format!("{gguf} {key}"), got, refs.f32(&key).0);
            } else {
                assert!(
                    reference.ends_with("q8_0"),
                    "{key} missing from {reference}"
                );
            }
        }
    }
}

#[test]
fn bf16_prefill_logits_and_layers_match_transformers() {
    prefill_matches("tiny-gptoss-mxfp4-bf16.gguf", "reference");
}

#[test]
fn q8_0_prefill_logits_match_transformers() {
    prefill_matches("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0");
}

/// Greedy decoding: prefill the prompt, then one token per step through the KV cache. Each
/// step's argmax must be the reference's token wherever the top-1/top-2 gap exceeds twice the
/// logit tolerance (the reference's own gap when it ships step logits, else ours). The
/// reference's token is fed back, so a skipped near-tie cannot derail later steps.
fn greedy_matches(gguf: &str, reference: &str) {
    let model = load(&tiny(gguf));
    let json = read_json(&tiny(&format!("{reference}.json")));
    let refs = RefTensors::load(&tiny(&format!("{reference}.safetensors")));
    let margin = 2.0 * MAX_TOL;
    for (name, ids, greedy) in sequences(&json) {
        assert_eq!(greedy.len(), 24, "{name}: greedy_24 length");
        let step_key = format!("{name}.greedy_step_logits_top16");
        let step_ref = refs
            .has_f32(&step_key)
            .then(|| refs.f32(&step_key).0.to_vec());
        let mut s = model
            .new_session(Some(ids.len() + greedy.len()))
            .expect("session");
        let mut logits = model.forward(&mut s, &ids, false).expect("prefill");
        let mut compared = 0;
        for (step, &want) in greedy.iter().enumerate() {
            let (row, rows, _) = host(&model, &logits);
            assert_eq!(rows, 1, "decode returns the last position only");
            let order = ranking(&row);
            let (ours, gap) = match &step_ref {
                Some(r) => {
                    let top = &r[step * 16..step * 16 + 16];
                    // Our 16 largest values must match the reference's at this step.
                    let mine: Vec<f32> = order[..16].iter().map(|&i| row[i]).collect();
                    let m = max_abs_diff(&mine, top);
                    assert!(
                        m <= MAX_TOL,
                        "{gguf} {name} step {step}: top-16 logits differ by {m:.3e}"
                    );
                    (order[0] as u32, (top[0] - top[1]) as f64)
                }
                None => (order[0] as u32, (row[order[0]] - row[order[1]]) as f64),
            };
            if gap > margin {
                assert_eq!(
                    ours, want,
                    "{gguf} {name}: greedy step {step} (gap {gap:.4})"
                );
                compared += 1;
            } else {
                eprintln!("{gguf} {name}: step {step} is a near-tie (gap {gap:.2e}); not compared");
            }
            // The backend's own argmax (what generation uses) must agree with the host ranking.
            assert_eq!(model.backend().argmax(&logits).expect("argmax"), vec![ours]);
            logits = model.forward(&mut s, &[want], false).expect("decode step");
        }
        eprintln!("{gguf} {name}: {compared}/24 greedy steps compared and equal");
        assert!(
            compared >= 20,
            "{gguf} {name}: too few separable steps ({compared})"
        );
        assert_eq!(s.pos(), ids.len() + 24);
    }
}

#[test]
fn bf16_greedy_24_with_incremental_decode() {
    greedy_matches("tiny-gptoss-mxfp4-bf16.gguf", "reference");
}

#[test]
fn q8_0_greedy_24_with_incremental_decode() {
    greedy_matches("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0");
}

/// Feed a sequence in uneven chunks (some longer than the sliding window, some crossing its
/// boundary) and compare each chunk's logits with the reference rows: the ring cache must give
/// exactly what one long prefill gives.
fn chunked_matches(
    model: &Model<CpuBackend>,
    ids: &[u32],
    want: &[f32],
    chunks: &[usize],
    label: &str,
) {
    let vocab = model.vocab_size();
    let mut s: Session<CpuBackend> = model.new_session(Some(ids.len())).expect("session");
    let mut at = 0;
    for &n in chunks.iter().cycle() {
        if at == ids.len() {
            break;
        }
        let n = n.min(ids.len() - at);
        let logits = model
            .forward(&mut s, &ids[at..at + n], true)
            .expect("chunk");
        let (ours, rows, _) = host(model, &logits);
        assert_eq!(rows, n);
        check_logits(
            &format!("{label} chunk {at}..{}", at + n),
            &ours,
            &want[at * vocab..(at + n) * vocab],
            vocab,
        );
        at += n;
    }
    assert_eq!(s.pos(), ids.len());
}

#[test]
fn chunked_prefill_through_the_window_ring_matches() {
    let model = load(&tiny("tiny-gptoss-mxfp4-bf16.gguf"));
    let json = read_json(&tiny("reference.json"));
    let refs = RefTensors::load(&tiny("reference.safetensors"));
    let window = model.config().sliding_window;
    for (name, ids, _) in sequences(&json) {
        let want = refs.f32(&format!("{name}.logits")).0;
        // Window 8 in the fixture: chunks of 3, 1, 11 (> window), 8 (= window), 5.
        chunked_matches(&model, &ids, want, &[3, 1, window + 3, window, 5], &name);
    }
}

#[test]
fn context_limit_is_a_clear_error() {
    let model = load(&tiny("tiny-gptoss-mxfp4-q8_0.gguf"));
    let mut s = model.new_session(Some(10)).expect("session");
    model
        .forward(&mut s, &[1, 2, 3, 4, 5, 6, 7, 8], false)
        .expect("fits");
    let err = model
        .forward(&mut s, &[1, 2, 3], false)
        .expect_err("must not fit");
    assert!(
        matches!(
            err,
            ModelError::ContextFull {
                have: 8,
                adding: 3,
                limit: 10
            }
        ),
        "{err}"
    );
    // The session is still usable for what fits.
    model
        .forward(&mut s, &[9, 10], false)
        .expect("fits exactly");
    assert!(matches!(
        model.forward(&mut s, &[1], false),
        Err(ModelError::ContextFull { .. })
    ));
    let ctx = model.config().context_length;
    assert!(
        model.new_session(Some(ctx + 1)).is_err(),
        "session beyond context_length"
    );
    let vocab = model.vocab_size() as u32;
    let mut s = model.new_session(Some(4)).expect("session");
    assert!(matches!(
        model.forward(&mut s, &[vocab], false),
        Err(ModelError::TokenOutOfRange { .. })
    ));
    assert_eq!(s.pos(), 0);
}

/// Run the numpy oracle: a random GPT-OSS GGUF of the given configuration and its reference.
fn oracle_model(tag: &str, seed: u64, config: &str) -> PathBuf {
    random_oracle_model(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("gptoss-random-{tag}"),
        seed,
        config,
    )
}

fn random_model_matches(tag: &str, seed: u64, config: &str) {
    let dir = oracle_model(tag, seed, config);
    let model = load(&dir.join("model.gguf"));
    let refs = RefTensors::load(&dir.join("reference.safetensors"));
    let ids: Vec<u32> = refs.i32("ids").0.iter().map(|&i| i as u32).collect();
    let (want, shape) = refs.f32("logits");
    let vocab = model.vocab_size();
    assert_eq!(shape, &[ids.len(), vocab]);
    eprintln!("{tag}: {:?}", model.config());

    // One prefill, with per-layer residuals.
    let mut s = model.new_session(None).expect("session");
    let mut layers = Vec::new();
    let logits = model
        .forward_with(&mut s, &ids, true, &mut |_, h| {
            layers.push(model.backend().to_host(h)?.0);
            Ok(())
        })
        .expect("forward");
    check_logits(
        &format!("{tag} prefill"),
        &host(&model, &logits).0,
        want,
        vocab,
    );
    for (il, got) in layers.iter().enumerate() {
        check_close(
            &format!("{tag} layer {il}"),
            got,
            refs.f32(&format!("layer{il}.out")).0,
        );
    }
    // Token by token, and in uneven chunks.
    chunked_matches(&model, &ids, want, &[1], &format!("{tag} decode"));
    let w = model.config().sliding_window;
    chunked_matches(
        &model,
        &ids,
        want,
        &[2, w + 1, 1, w, 4],
        &format!("{tag} chunks"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn random_model_of_other_dimensions_matches_numpy() {
    // hidden 96, 6 query heads of dim 24 over 2 KV heads (head_dim != hidden/heads), 5 experts
    // top-3 of width 64, window 5, YaRN factor 8 over 32 positions (fractional ramp bounds),
    // default betas (absent keys), F16/Q8_0/BF16/F32 matrices.
    random_model_matches("gqa3", 11, "{}");
}

#[test]
fn random_model_without_gqa_and_with_a_pattern_key_matches_numpy() {
    // Multi-head attention (8 KV heads), head_dim 16, every expert used, no YaRN, a per-layer
    // bool pattern (layers 0, 1, 3 windowed), window 3, Q4_0/Q4_1/Q5_0/Q5_1 matrices.
    let cfg = r#"{"layers": 4, "d": 64, "heads": 8, "kv": 8, "head_dim": 16, "experts": 4,
        "topk": 4, "ff": 32, "vocab": 300, "window": 3, "factor": 1.0, "theta": 500000.0,
        "tokens": 17, "write_betas": true, "pattern": [true, true, false, true],
        "types": {"token_embd": "Q4_0", "output": "Q5_1", "attn_q": "Q4_1", "attn_k": "Q5_0",
                  "attn_v": "F32", "attn_output": "Q8_0"}}"#;
    random_model_matches("mha", 12, cfg);
}

#[test]
fn random_model_with_a_period_pattern_matches_numpy() {
    // Period 3 (layers 0, 1 windowed, 2 full, ...), 32 experts of which 4 are used, window 1
    // (each query sees only itself in windowed layers).
    let cfg = r#"{"layers": 3, "d": 32, "heads": 4, "kv": 1, "head_dim": 8, "experts": 32,
        "topk": 4, "ff": 32, "vocab": 64, "window": 1, "tokens": 9, "pattern": 3,
        "types": {"token_embd": "F32", "output": "F16", "attn_q": "F32", "attn_k": "BF16",
                  "attn_v": "F16", "attn_output": "F32"}}"#;
    random_model_matches("period3", 13, cfg);
}

/// The oracle itself must agree with transformers on the fixture (it computes from the same
/// GGUF through gguf-py's dequantizers): otherwise the random-model tests prove nothing.
#[test]
fn oracle_agrees_with_transformers() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle/gptoss_random.py");
    for (gguf, reference) in [
        ("tiny-gptoss-mxfp4-bf16.gguf", "reference.safetensors"),
        ("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0.safetensors"),
    ] {
        let out = Command::new(oracle_python())
            .arg(&script)
            .arg("unused")
            .arg("--check")
            .arg(tiny(gguf))
            .arg(tiny(reference))
            .output()
            .expect("running the oracle");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let worst: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("worst "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no 'worst' line in oracle output:\n{text}"));
        assert!(
            worst < 1e-9,
            "{gguf}: oracle vs transformers NMSE {worst:e}\n{text}"
        );
    }
}
