//! The wgpu backend end to end on the tiny fixture GGUFs (BF16 and Q8_0 non-expert weights,
//! MXFP4 experts) against transformers' float32 outputs: logits at every position (NMSE
//! <= 1e-4), greedy continuations identical to `greedy_24` at every step where the top-1/top-2
//! gap exceeds 1e-2, and chunked prefill through the sliding-window ring. The operation-by-
//! operation comparison against the CPU backend lives in `kernels-wgpu/tests/conformance.rs`.
//! Without an adapter every test prints why and skips.

use gptoss_backend::Backend;
use gptoss_kernels_wgpu::{WgpuBackend, WgpuOptions};
use gptoss_model::Model;
use gptoss_tests::reference::{RefTensors, ranking};
use gptoss_tests::reference::{read_json, sequences, tiny};
use gptoss_tests::{max_abs_diff, nmse};

const LOGITS_NMSE: f64 = 1e-4;
const GAP: f64 = 1e-2;

/// The model on the wgpu backend, or `None` (with the reason printed) without an adapter.
/// `plain`: with shader-f16 and subgroups turned off (f32 KV cache, workgroup-memory
/// reductions), the path of adapters that lack them.
fn load(gguf: &str, plain: bool) -> Option<Model<WgpuBackend>> {
    let mut opts = WgpuOptions::from_env();
    if plain {
        opts.no_f16 = true;
        opts.no_subgroups = true;
    }
    let backend = match WgpuBackend::with_options(&opts) {
        Ok(b) => b,
        Err(e) => {
            println!("no wgpu adapter: {e}; skipped");
            return None;
        }
    };
    println!("wgpu adapter: {}", backend.adapter_info());
    let path = tiny(gguf);
    Some(Model::load(backend, &path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

fn host(
    model: &Model<WgpuBackend>,
    t: &<WgpuBackend as Backend>::Tensor,
) -> (Vec<f32>, usize, usize) {
    model.backend().to_host(t).expect("to_host")
}

fn check_logits(label: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{label}: logits sizes differ");
    let e = nmse(ours, reference);
    let m = max_abs_diff(ours, reference);
    println!("{label}: nmse {e:.3e}, max |diff| {m:.3e}");
    assert!(
        e <= LOGITS_NMSE,
        "{label}: logits NMSE {e:.3e} > {LOGITS_NMSE:e} (max |diff| {m:.3e})"
    );
}

fn prefill_matches(gguf: &str, reference: &str, plain: bool) {
    let Some(model) = load(gguf, plain) else {
        return;
    };
    let json = read_json(&tiny(&format!("{reference}.json")));
    let refs = RefTensors::load(&tiny(&format!("{reference}.safetensors")));
    let vocab = model.vocab_size();
    for (name, ids, _) in sequences(&json) {
        let mut s = model.new_session(Some(128)).expect("session");
        let logits = model.forward(&mut s, &ids, true).expect("forward");
        let (ours, rows, cols) = host(&model, &logits);
        assert_eq!((rows, cols), (ids.len(), vocab), "{name}: logits shape");
        let (want, shape) = refs.f32(&format!("{name}.logits"));
        assert_eq!(shape, &[ids.len(), vocab]);
        check_logits(&format!("wgpu {gguf} {name} logits"), &ours, want);
    }
}

#[test]
fn wgpu_bf16_prefill_logits_match_transformers() {
    prefill_matches("tiny-gptoss-mxfp4-bf16.gguf", "reference", false);
}

/// The same without shader-f16 and subgroups.
#[test]
fn wgpu_bf16_prefill_logits_match_transformers_plain() {
    prefill_matches("tiny-gptoss-mxfp4-bf16.gguf", "reference", true);
}

#[test]
fn wgpu_q8_0_prefill_logits_match_transformers() {
    prefill_matches("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0", false);
}

/// The same without shader-f16 and subgroups.
#[test]
fn wgpu_q8_0_prefill_logits_match_transformers_plain() {
    prefill_matches("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0", true);
}

/// Greedy decoding on the device: at every step where the top-1/top-2 gap (the reference's
/// own when it ships step logits, else ours) exceeds 1e-2, our argmax must be the reference's
/// `greedy_24` token. The reference's token is fed back, so a near-tie that is not compared
/// cannot derail the later steps.
fn greedy_matches(gguf: &str, reference: &str, plain: bool) {
    let Some(model) = load(gguf, plain) else {
        return;
    };
    let json = read_json(&tiny(&format!("{reference}.json")));
    let refs = RefTensors::load(&tiny(&format!("{reference}.safetensors")));
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
            let ours = model.backend().argmax(&logits).expect("argmax");
            assert_eq!(ours.len(), 1, "decode returns the last position only");
            let gap = match &step_ref {
                Some(r) => (r[step * 16] - r[step * 16 + 1]) as f64,
                None => {
                    let (row, _, _) = host(&model, &logits);
                    let o = ranking(&row);
                    (row[o[0]] - row[o[1]]) as f64
                }
            };
            if gap > GAP {
                assert_eq!(
                    ours[0], want,
                    "{gguf} {name}: greedy step {step} (gap {gap:.4})"
                );
                compared += 1;
            } else {
                println!("{gguf} {name}: step {step} is a near-tie (gap {gap:.2e}); not compared");
            }
            logits = model.forward(&mut s, &[want], false).expect("decode step");
        }
        println!("wgpu {gguf} {name}: {compared}/24 greedy steps compared and identical");
        assert!(
            compared >= 16,
            "{gguf} {name}: too few separable steps ({compared})"
        );
    }
}

#[test]
fn wgpu_bf16_greedy_24() {
    greedy_matches("tiny-gptoss-mxfp4-bf16.gguf", "reference", false);
}

/// The same without shader-f16 and subgroups.
#[test]
fn wgpu_bf16_greedy_24_plain() {
    greedy_matches("tiny-gptoss-mxfp4-bf16.gguf", "reference", true);
}

#[test]
fn wgpu_q8_0_greedy_24() {
    greedy_matches("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0", false);
}

/// The same without shader-f16 and subgroups.
#[test]
fn wgpu_q8_0_greedy_24_plain() {
    greedy_matches("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0", true);
}

/// Uneven chunks, some longer than the sliding window: the ring cache must give what one
/// long prefill gives.
#[test]
fn wgpu_chunked_prefill_through_the_window_ring() {
    let Some(model) = load("tiny-gptoss-mxfp4-bf16.gguf", false) else {
        return;
    };
    let json = read_json(&tiny("reference.json"));
    let refs = RefTensors::load(&tiny("reference.safetensors"));
    let window = model.config().sliding_window;
    let vocab = model.vocab_size();
    for (name, ids, _) in sequences(&json) {
        let want = refs.f32(&format!("{name}.logits")).0;
        let mut s = model.new_session(Some(ids.len())).expect("session");
        let mut at = 0;
        for &n in [3, 1, window + 3, window, 5].iter().cycle() {
            if at == ids.len() {
                break;
            }
            let n = n.min(ids.len() - at);
            let logits = model
                .forward(&mut s, &ids[at..at + n], true)
                .expect("chunk");
            let (ours, rows, _) = host(&model, &logits);
            assert_eq!(rows, n);
            check_logits(
                &format!("wgpu {name} chunk {at}..{}", at + n),
                &ours,
                &want[at * vocab..(at + n) * vocab],
            );
            at += n;
        }
    }
}
