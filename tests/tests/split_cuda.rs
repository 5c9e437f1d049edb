//! Tensor and expert parallelism on GPUs: the tiny fixture models split over two CUDA ranks
//! (two GPUs through NCCL when the machine has two, else two ranks on one GPU with the host
//! collective) against transformers' float32 logits and against one unsplit CUDA backend, with
//! the MoE split by experts (the default) and by width; and the expert-parallel MoE operation
//! (`moe_local`) of every kernel path against the whole MoE on one GPU.
//!
//! Needs an NVIDIA GPU and driver; elsewhere every test prints why it skips and passes.

use gptoss_backend::{
    Backend, BackendError, GgmlType, HostBytes, MoeConfig, MoeWeights, WeightData,
};
use gptoss_kernels_cuda::CudaBackend;
use gptoss_kernels_cuda::nccl::NcclCollective;
use gptoss_model::Model;
use gptoss_parallel::{HostCollective, MoeSplit, SplitBackend, shard};
use gptoss_tests::reference::{RefTensors, read_json, sequences, tiny};
use gptoss_tests::{max_abs_diff, nmse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NMSE_TOL: f64 = 1e-4;
/// Expert parallel against one GPU, where no activation is rounded to 16 or 8 bits (the tiny
/// model's width keeps the f32 kernels; the MoE operation's sum is in f32): the same products
/// by the same kernels on the same rows, only the f32 sums over a token's k picks (and, in the
/// model, over heads) in another order: ~1e-13 expected, a lost or doubled pick >= 1e-3.
const EP_NMSE: f64 = 1e-10;
/// Decode steps through the KV cache: the cache holds K and V in f16, so an f32-level difference
/// in a new row can become one f16 step (2^-11 relative) in a cached element; measured on two
/// H100s up to 2.2e-10 over 6 steps of the bf16 tiny model (a lost or doubled pick is >= 1e-3).
const EP_DECODE_NMSE: f64 = 1e-8;
/// Greedy steps are compared where transformers' top-1/top-2 gap exceeds this.
const GAP: f32 = 1e-2;

fn gpu(i: usize) -> Option<CudaBackend> {
    match CudaBackend::new(i) {
        Ok(b) => Some(b),
        Err(BackendError::Unavailable { reason, .. }) => {
            eprintln!("no CUDA device {i}: {reason}");
            None
        }
        Err(e) => panic!("CUDA backend {i} failed to start: {e}"),
    }
}

fn logits<B: Backend>(m: &Model<B>, ids: &[u32]) -> Vec<f32> {
    let mut s = m.new_session(Some(ids.len())).expect("session");
    let t = m.forward(&mut s, ids, true).expect("forward");
    m.backend().to_host(&t).expect("to_host").0
}

fn greedy<B: Backend>(m: &Model<B>, ids: &[u32], steps: usize) -> Vec<u32> {
    let mut s = m.new_session(Some(ids.len() + steps)).expect("session");
    let mut t = m.forward(&mut s, ids, false).expect("prefill");
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = m.backend().argmax(&t).expect("argmax")[0];
        out.push(next);
        t = m.forward(&mut s, &[next], false).expect("decode");
    }
    out
}

fn run<B: Backend>(split: Model<B>, gguf: &str, reference: &str) {
    eprintln!("{}", split.backend().name());
    let one = Model::load(gpu(0).expect("GPU 0"), tiny(gguf)).expect("unsplit load");
    let json = read_json(&tiny(&format!("{reference}.json")));
    let refs = RefTensors::load(&tiny(&format!("{reference}.safetensors")));
    for (name, ids, want_greedy) in sequences(&json) {
        let got = logits(&split, &ids);
        let (want, _) = refs.f32(&format!("{name}.logits"));
        for (what, other) in [
            ("transformers", want.to_vec()),
            ("1 GPU", logits(&one, &ids)),
        ] {
            let (e, m) = (nmse(&got, &other), max_abs_diff(&got, &other));
            eprintln!("{gguf} {name} split vs {what}: nmse {e:.3e} max_abs {m:.3e}");
            assert!(e <= NMSE_TOL, "{gguf} {name} vs {what}: NMSE {e:.3e}");
        }
        let ours = greedy(&split, &ids, want_greedy.len());
        let step_key = format!("{name}.greedy_step_logits_top16");
        let mut compared = 0;
        for (step, (&a, &b)) in ours.iter().zip(&want_greedy).enumerate() {
            if refs.has_f32(&step_key) {
                let top = &refs.f32(&step_key).0[step * 16..step * 16 + 2];
                if top[0] - top[1] <= GAP {
                    break; // a near-tie: the continuations may part from here
                }
            }
            assert_eq!(a, b, "{gguf} {name}: greedy step {step}");
            compared += 1;
        }
        eprintln!("{gguf} {name}: {compared} greedy steps equal to transformers");
    }
}

/// Two ranks with the MoE split `how`: two GPUs through NCCL, or two ranks on GPU 0.
fn two_ranks(how: MoeSplit, path: &std::path::Path) -> Logits {
    let g0 = gpu(0).expect("GPU 0");
    match gpu(1) {
        Some(g1) => {
            let ranks = vec![g0, g1];
            let coll = NcclCollective::new(&ranks).expect("NCCL over GPUs 0 and 1");
            let b = SplitBackend::new(ranks, coll)
                .expect("split")
                .with_moe_split(how);
            Logits::of(Model::load(b, path).expect("split load"))
        }
        None => {
            let b = SplitBackend::new(vec![g0, gpu(0).expect("GPU 0")], HostCollective)
                .expect("split")
                .with_moe_split(how);
            Logits::of(Model::load(b, path).expect("split load"))
        }
    }
}

/// Prefill logits of a prompt.
type PrefillFn = Box<dyn Fn(&[u32]) -> Vec<f32>>;
/// Last-row logits after a prompt and after each of n greedy steps.
type DecodeFn = Box<dyn Fn(&[u32], usize) -> Vec<Vec<f32>>>;

/// A loaded model reduced to what the comparisons need: its backend's name and a logits
/// function (the model types differ with the collective).
struct Logits {
    name: String,
    run: PrefillFn,
    decode: DecodeFn,
}

impl Logits {
    fn of<B: Backend + 'static>(m: Model<B>) -> Logits {
        let m = std::rc::Rc::new(m);
        let m2 = m.clone();
        Logits {
            name: m.backend().name(),
            run: Box::new(move |ids| logits(&m, ids)),
            decode: Box::new(move |ids, steps| decode_logits(&m2, ids, steps)),
        }
    }
}

/// The last-row logits after the prompt and after each of `steps` greedy decode steps.
fn decode_logits<B: Backend>(m: &Model<B>, ids: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut s = m.new_session(Some(ids.len() + steps)).expect("session");
    let mut t = m.forward(&mut s, ids, false).expect("prefill");
    let mut out = Vec::new();
    out.push(m.backend().to_host(&t).expect("to_host").0);
    for _ in 0..steps {
        let next = m.backend().argmax(&t).expect("argmax")[0];
        t = m.forward(&mut s, &[next], false).expect("decode");
        out.push(m.backend().to_host(&t).expect("to_host").0);
    }
    out
}

/// The tiny models (8 experts, top-4) with the experts split over two ranks: prefill logits
/// within [`EP_NMSE`] and 8 decode steps within [`EP_DECODE_NMSE`] of one GPU; the split by width for comparison.
#[test]
fn tiny_expert_parallel_matches_one_gpu() {
    if gpu(0).is_none() {
        eprintln!("SKIPPED: no CUDA device");
        return;
    }
    for gguf in ["tiny-gptoss-mxfp4-bf16.gguf", "tiny-gptoss-mxfp4-q8_0.gguf"] {
        let path = tiny(gguf);
        let one = Logits::of(Model::load(gpu(0).expect("GPU 0"), &path).expect("unsplit load"));
        let ids: Vec<u32> = (0..23).map(|i| (i * 389 + 11) % 8192).collect();
        let base = (one.run)(&ids);
        let base_dec = (one.decode)(&ids[..7], 8);
        for (how, tol, dec_tol) in [
            (MoeSplit::Experts, EP_NMSE, EP_DECODE_NMSE),
            (MoeSplit::Ffn, NMSE_TOL, NMSE_TOL),
        ] {
            let split = two_ranks(how, &path);
            eprintln!("{}", split.name);
            let want = match how {
                MoeSplit::Experts => "MoE by experts",
                MoeSplit::Ffn => "MoE by expert width",
            };
            assert!(split.name.contains(want), "{}", split.name);
            let got = (split.run)(&ids);
            let (e, m) = (nmse(&got, &base), max_abs_diff(&got, &base));
            eprintln!("{gguf} {how:?} prefill vs 1 GPU: nmse {e:.3e} max_abs {m:.3e}");
            assert!(e <= tol, "{gguf} {how:?} prefill: NMSE {e:.3e}");
            for (step, (g, b)) in (split.decode)(&ids[..7], 8)
                .iter()
                .zip(&base_dec)
                .enumerate()
            {
                let (e, m) = (nmse(g, b), max_abs_diff(g, b));
                eprintln!("{gguf} {how:?} decode {step} vs 1 GPU: nmse {e:.3e} max_abs {m:.3e}");
                assert!(
                    e <= dec_tol,
                    "{gguf} {how:?} decode step {step}: NMSE {e:.3e}"
                );
            }
        }
    }
}

fn randn(r: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = r.random_range(1e-7f32..1.0);
            let u2: f32 = r.random();
            scale * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect()
}

/// Random bytes of a weight: f32, bf16, or a block type as an f16 scale of about `scale / 64`
/// followed by random payload bytes (Q8_0, Q5_0), or MXFP4 with E8M0 scales near `scale / 4`.
fn random_weight(r: &mut StdRng, name: &str, dtype: GgmlType, shape: &[usize]) -> WeightData {
    let n: usize = shape.iter().product();
    let scale = if name.contains("bias") { 0.5 } else { 0.05 };
    let bytes: Vec<u8> = match dtype {
        GgmlType::F32 => randn(r, n, scale)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        GgmlType::BF16 => randn(r, n, scale)
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::MXFP4 => {
            let e0 = (scale / 4.0).log2().round() as i32 + 127;
            let mut out = Vec::with_capacity(n / 32 * 17);
            for _ in 0..n / 32 {
                out.push((e0 + r.random_range(-2..=1)) as u8);
                out.extend((0..16).map(|_| r.random::<u8>()));
            }
            out
        }
        block => {
            let (bs, ts) = (block.block_size(), block.type_size());
            let mut out = Vec::with_capacity(n / bs * ts);
            for _ in 0..n / bs {
                let d = half::f16::from_f32(scale / 64.0 * r.random_range(0.5f32..1.5));
                out.extend_from_slice(&d.to_le_bytes());
                out.extend((2..ts).map(|_| r.random::<u8>()));
            }
            out
        }
    };
    WeightData {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes),
    }
}

/// One MoE block: `moe_local` over each rank's experts (2 and 4 ranks), summed in f32 as the
/// collective does, against `moe` over all experts on the same GPU, for each row count.
#[allow(clippy::too_many_arguments)]
fn moe_local_case(
    g: &CudaBackend,
    r: &mut StdRng,
    label: &str,
    d: usize,
    ff: usize,
    e: usize,
    k: usize,
    ty: GgmlType,
    ts: &[usize],
) {
    let bias = GgmlType::F32;
    let full = [
        random_weight(r, "ffn_gate_inp.weight", GgmlType::F32, &[d, e]),
        random_weight(r, "ffn_gate_inp.bias", bias, &[e]),
        random_weight(r, "ffn_gate_exps.weight", ty, &[d, ff, e]),
        random_weight(r, "ffn_gate_exps.bias", bias, &[ff, e]),
        random_weight(r, "ffn_up_exps.weight", ty, &[d, ff, e]),
        random_weight(r, "ffn_up_exps.bias", bias, &[ff, e]),
        random_weight(r, "ffn_down_exps.weight", ty, &[ff, d, e]),
        random_weight(r, "ffn_down_exps.bias", bias, &[d, e]),
    ];
    let upload = |ws: &[WeightData]| {
        let mut u = ws.iter().map(|w| g.upload(w).expect("upload"));
        let mut n = || u.next().expect("eight pieces");
        MoeWeights {
            router: n(),
            router_bias: n(),
            gate: n(),
            gate_bias: n(),
            up: n(),
            up_bias: n(),
            down: n(),
            down_bias: n(),
        }
    };
    let whole = upload(&full);
    let cfg = MoeConfig {
        n_experts: e,
        top_k: k,
    };
    // Rank outputs with a nonzero value, and calls: a rank whose experts no token picked gives
    // zeros, so this is only checked in aggregate (most calls must see several ranks at work).
    let (mut nonzero, mut calls) = (0, 0);
    for ranks in [2, 4] {
        let shares: Vec<_> = (0..ranks)
            .map(|i| {
                let range = i * e / ranks..(i + 1) * e / ranks;
                let cut: Vec<WeightData> = full
                    .iter()
                    .enumerate()
                    .map(|(j, w)| match j {
                        0 | 1 => w.clone(),
                        _ => shard::slice_last(w, range.clone()).expect("slice"),
                    })
                    .collect();
                (range, upload(&cut))
            })
            .collect();
        for &t in ts {
            let x = g.from_host(&randn(r, t * d, 1.0), t, d).expect("x");
            g.poison_pool(64 << 20).expect("poison");
            let want = g
                .to_host(&g.moe(&x, &whole, &cfg).expect("moe"))
                .expect("host")
                .0;
            let mut sum = vec![0f32; t * d];
            calls += 1;
            for (range, w) in &shares {
                g.poison_pool(64 << 20).expect("poison");
                let y = g.moe_local(&x, w, &cfg, range.clone()).expect("moe_local");
                let y = g.to_host(&y).expect("host").0;
                nonzero += y.iter().any(|&v| v != 0.0) as usize;
                sum.iter_mut().zip(&y).for_each(|(s, v)| *s += v);
            }
            let (er, m) = (nmse(&sum, &want), max_abs_diff(&sum, &want));
            let what = format!("{label} {ty:?} d={d} ff={ff} E={e} k={k} t={t} x{ranks}");
            eprintln!("moe_local {what}: nmse {er:.3e} max_abs {m:.3e}");
            assert!(
                sum.iter().all(|v| v.is_finite()) && er <= EP_NMSE,
                "{what}: nmse {er:.3e}"
            );
        }
    }
    assert!(
        nonzero > calls,
        "{label}: {nonzero} contributing rank outputs in {calls} calls"
    );
}

/// The expert-parallel MoE operation on every CUDA kernel path: decode (f32 and int8
/// activations, MXFP4), the any-type kernels (BF16, Q8_0), the re-quantized types' kernels
/// (Q5_0), and the grouped tensor-core prefill (GPT-OSS width, from 9 rows): the sum over
/// ranks of `moe_local` equals `moe` within [`EP_NMSE`]; the pool is poisoned before each call
/// so a skipped pick that leaves garbage shows up.
#[test]
fn moe_local_sums_to_the_whole_moe_on_every_kernel_path() {
    let Some(g) = gpu(0) else {
        eprintln!("SKIPPED: no CUDA device");
        return;
    };
    let seed: u64 = std::env::var("GPTOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("seed {seed} (GPTOSS_SEED={seed} replays it)");
    let mut r = StdRng::seed_from_u64(seed);
    let mx = GgmlType::MXFP4;
    moe_local_case(&g, &mut r, "decode", 64, 96, 8, 4, mx, &[1, 3, 8]);
    moe_local_case(&g, &mut r, "decode", 2880, 2880, 32, 4, mx, &[1, 2, 5]);
    moe_local_case(&g, &mut r, "any", 64, 64, 16, 2, GgmlType::BF16, &[1, 9]);
    moe_local_case(&g, &mut r, "any", 64, 96, 8, 4, GgmlType::Q8_0, &[1, 5]);
    moe_local_case(
        &g,
        &mut r,
        "requant",
        256,
        512,
        8,
        4,
        GgmlType::Q5_0,
        &[1, 3, 9],
    );
    moe_local_case(&g, &mut r, "prefill", 2880, 2880, 32, 4, mx, &[9, 64, 300]);
    moe_local_case(&g, &mut r, "prefill", 1024, 160, 8, 3, mx, &[10, 129]);
    let mut g8 = gpu(0).expect("GPU 0");
    g8.set_int8_activations(true);
    moe_local_case(&g8, &mut r, "int8", 2880, 2880, 32, 4, mx, &[1, 4]);
    moe_local_case(&g8, &mut r, "int8", 64, 96, 8, 4, mx, &[1, 3]);
}

fn split_tiny(gguf: &str, reference: &str) {
    let Some(g0) = gpu(0) else {
        eprintln!("SKIPPED: no CUDA device");
        return;
    };
    let path = tiny(gguf);
    match gpu(1) {
        Some(g1) => {
            let ranks = vec![g0, g1];
            let coll = NcclCollective::new(&ranks).expect("NCCL over GPUs 0 and 1");
            let b = SplitBackend::new(ranks, coll).expect("split");
            run(Model::load(b, &path).expect("split load"), gguf, reference);
        }
        None => {
            eprintln!("one GPU: two ranks on GPU 0 with the host collective");
            let b =
                SplitBackend::new(vec![g0, gpu(0).expect("GPU 0")], HostCollective).expect("split");
            run(Model::load(b, &path).expect("split load"), gguf, reference);
        }
    }
}

#[test]
fn tiny_bf16_split_over_two_cuda_ranks() {
    split_tiny("tiny-gptoss-mxfp4-bf16.gguf", "reference");
}

#[test]
fn tiny_q8_0_split_over_two_cuda_ranks() {
    split_tiny("tiny-gptoss-mxfp4-q8_0.gguf", "reference-q8_0");
}

#[test]
fn nccl_refuses_a_gpu_listed_twice() {
    let (Some(a), Some(b)) = (gpu(0), gpu(0)) else {
        eprintln!("SKIPPED: no CUDA device");
        return;
    };
    match NcclCollective::new(&[a, b]) {
        Ok(_) => panic!("NCCL accepted GPU 0 twice"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(
                msg.contains("listed twice") || msg.contains("libnccl"),
                "{msg}"
            );
        }
    }
}
