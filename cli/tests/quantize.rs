//! `gptoss quantize` on the tiny model: every type validates, loads and runs; Q8_0-class outputs
//! reproduce transformers' logits for the Q8_0 GGUF; mxfp4_moe reproduces llama.cpp's tensors.

mod common;

use common::*;
use gguf_format::GgufFile;
use gptoss_backend::cpu::CpuBackend;
use gptoss_model::Model;

const TYPES: [&str; 10] = [
    "mxfp4_moe",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q4_k_m",
    "q4_0",
    "iq4_nl",
    "iq4_xs",
    "bf16",
    "f16",
];

fn reference_q8() -> (Vec<u32>, Vec<f32>) {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("reference-q8_0.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = j["sequences"]["harmony_chat"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let bytes = std::fs::read(tiny().join("reference-q8_0.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("harmony_chat.logits").unwrap();
    let logits = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (ids, logits)
}

fn logits_of(path: &std::path::Path, ids: &[u32]) -> Vec<f32> {
    let model = Model::load(CpuBackend::new(), path).expect("model loads");
    let mut s = model.new_session(Some(256)).unwrap();
    let t = model.forward(&mut s, ids, true).unwrap();
    let (data, rows, cols) = gptoss_backend::Backend::to_host(model.backend(), &t).unwrap();
    assert_eq!((rows, cols), (ids.len(), 8192));
    data
}

fn nmse(a: &[f32], r: &[f32]) -> f64 {
    let (mut n, mut d) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(r) {
        n += (x as f64 - y as f64).powi(2);
        d += (y as f64).powi(2);
    }
    n / d
}

#[test]
fn every_type_validates_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny().join("tiny-gptoss-mxfp4-bf16.gguf");
    let (ids, reference) = reference_q8();
    for ty in TYPES {
        let out = dir.path().join(format!("{ty}.gguf"));
        gptoss(&["quantize", s(&src), s(&out), "--type", ty, "--quiet"]);
        assert_valid(&out);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.tensors().len(), 79, "{ty}");
        let logits = logits_of(&out, &ids);
        assert!(
            logits.iter().all(|v| v.is_finite()),
            "{ty}: non-finite logits"
        );
        let e = nmse(&logits, &reference);
        eprintln!("{ty}: logits NMSE vs reference-q8_0 = {e:.3e}");
        // Random 64-wide models amplify weight error through routing flips (Q8_0's 2e-5 in
        // weights becomes 5e-3 in logits), so the logits only have to stay the same model's;
        // the weights themselves are checked against per-type bounds below.
        assert!(e < 0.5, "{ty}: NMSE {e}");
        let src_f = GgufFile::open(&src).unwrap();
        for t in f.tensors() {
            let r = src_f.tensor_info(&t.name).unwrap();
            let n = t.n_elements() as usize;
            let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
            gptoss_quant::dequantize(t.ggml_type, f.tensor_data(t).unwrap(), &mut x).unwrap();
            gptoss_quant::dequantize(r.ggml_type, src_f.tensor_data(r).unwrap(), &mut y).unwrap();
            let bound = match t.ggml_type.to_string().as_str() {
                "F32" | "BF16" | "MXFP4" => 0.0,
                "F16" => 1e-6, // BF16 values below F16's normal range round
                "Q8_0" => 1e-4,
                "Q6_K" => 1e-3,
                "Q5_0" | "Q5_1" | "Q5_K" => 4e-3,
                _ => 1.5e-2, // 4-bit types
            };
            let w = if t.ggml_type == r.ggml_type {
                0.0
            } else {
                nmse(&x, &y)
            };
            if t.ggml_type == r.ggml_type {
                assert!(
                    f.tensor_data(t).unwrap() == src_f.tensor_data(r).unwrap(),
                    "{ty} {}: copied",
                    t.name
                );
            }
            assert!(
                w <= bound,
                "{ty} {} ({}): weight NMSE {w:.3e} above {bound:.0e}",
                t.name,
                t.ggml_type
            );
        }
        if ty == "mxfp4_moe" {
            // Experts untouched, every other matrix Q8_0: exactly the file reference-q8_0 ran.
            assert!(e < 1e-4, "{ty}: NMSE {e} above 1e-4");
        }
        if ty == "q8_0" {
            // llama.cpp's Q8_0 also requantizes the MXFP4 experts (weight NMSE ~2e-5, checked
            // below); routing flips of a random 64-wide model amplify that to ~5e-3 in logits.
            assert!(e < 1e-2, "{ty}: NMSE {e} above 1e-2");
        }
    }
}

#[test]
fn mxfp4_moe_of_the_bf16_file_has_llama_cpp_tensors() {
    // llama-quantize MXFP4_MOE of the BF16 conversion: experts untouched, matrices Q8_0 (the
    // same reference quantizer as the converter's q8_0), router and vectors F32.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let src = tiny().join("tiny-gptoss-mxfp4-bf16.gguf");
    gptoss(&["quantize", s(&src), s(&out), "--type", "mxfp4_moe", "-q"]);
    let ours = GgufFile::open(&out).unwrap();
    let reference = GgufFile::open(tiny().join("tiny-gptoss-mxfp4-q8_0.gguf")).unwrap();
    assert_eq!(ours.metadata().get_u32("general.file_type").unwrap(), 38);
    for t in reference.tensors() {
        let o = ours
            .tensor_info(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!(
            (o.ggml_type, &o.shape),
            (t.ggml_type, &t.shape),
            "{}",
            t.name
        );
        assert!(
            ours.tensor_data(o).unwrap() == reference.tensor_data(t).unwrap(),
            "{}: bytes",
            t.name
        );
    }
    // llama.cpp's order: outside blocks first, then block by block, by name.
    let names: Vec<_> = ours.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        &names[..4],
        &[
            "output.weight",
            "output_norm.weight",
            "token_embd.weight",
            "blk.0.attn_k.bias"
        ]
    );
}

#[test]
fn q4_k_m_follows_llama_cpp_fallbacks() {
    // 64-wide rows cannot hold 256-element k-quant blocks: llama.cpp falls back Q4_K -> Q5_0,
    // Q5_K -> Q5_1, Q6_K -> Q8_0; the 8-expert rule puts attn_k/attn_v in Q8_0.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.gguf");
    let src = tiny().join("tiny-gptoss-mxfp4-bf16.gguf");
    gptoss(&["quantize", s(&src), s(&out), "--type", "q4_k_m", "-q"]);
    let f = GgufFile::open(&out).unwrap();
    let ty = |n: &str| f.tensor_info(n).unwrap().ggml_type.to_string();
    assert_eq!(ty("blk.0.attn_q.weight"), "Q5_0");
    assert_eq!(ty("blk.0.attn_v.weight"), "Q8_0");
    assert_eq!(ty("blk.0.attn_output.weight"), "Q5_1");
    assert_eq!(ty("blk.3.ffn_down_exps.weight"), "Q8_0"); // use_more_bits layer: Q6_K -> Q8_0
    assert_eq!(ty("blk.0.ffn_down_exps.weight"), "Q5_0");
    assert_eq!(ty("blk.0.ffn_gate_exps.weight"), "Q5_0");
    assert_eq!(ty("output.weight"), "Q8_0");
    assert_eq!(ty("token_embd.weight"), "Q5_0");
    assert_eq!(ty("blk.0.ffn_gate_inp.weight"), "F32");
}

#[test]
fn unknown_type_and_missing_input_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny().join("tiny-gptoss-mxfp4-bf16.gguf");
    let out = gptoss_raw(&[
        "quantize",
        s(&src),
        s(&dir.path().join("x")),
        "--type",
        "q3_xx",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown type"));
    let out = gptoss_raw(&[
        "quantize",
        s(&dir.path().join("none.gguf")),
        s(&dir.path().join("x")),
        "-t",
        "q8_0",
    ]);
    assert!(!out.status.success());
    assert!(!dir.path().join("x").exists());
}

#[test]
fn q8_0_requantizes_mxfp4_experts_from_their_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    let src = tiny().join("tiny-gptoss-mxfp4-bf16.gguf");
    gptoss(&["quantize", s(&src), s(&out), "--type", "q8_0", "-q"]);
    let (a, b) = (GgufFile::open(&out).unwrap(), GgufFile::open(&src).unwrap());
    for t in b
        .tensors()
        .iter()
        .filter(|t| t.name.contains("_exps.weight"))
    {
        let o = a.tensor_info(&t.name).unwrap();
        assert_eq!(o.ggml_type.to_string(), "Q8_0");
        let n = t.n_elements() as usize;
        let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
        gptoss_quant::dequantize(o.ggml_type, a.tensor_data(o).unwrap(), &mut x).unwrap();
        gptoss_quant::dequantize(t.ggml_type, b.tensor_data(t).unwrap(), &mut y).unwrap();
        let e = nmse(&x, &y);
        // Q8_0 of 4-bit values: half a step of amax/127 at most, NMSE about 2.4e-5.
        assert!(e < 1e-4, "{}: NMSE {e}", t.name);
        let max = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            max <= amax / 127.0 * 0.5 * 1.01,
            "{}: max error {max}",
            t.name
        );
    }
}

#[test]
fn q8_0_keeping_mxfp4_experts_reproduces_reference_q8_0() {
    // The Q8_0 GGUF people download (and the converter's `--outtype q8_0`, which
    // reference-q8_0 ran) keeps the MXFP4 experts: llama-quantize's `--tensor-type` override
    // with an unchanged type copies them bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    let src = tiny().join("tiny-gptoss-mxfp4-bf16.gguf");
    gptoss(&[
        "quantize",
        s(&src),
        s(&out),
        "--type",
        "q8_0",
        "--tensor-type",
        "_exps\\.weight$=mxfp4",
        "-q",
    ]);
    assert_valid(&out);
    let ours = GgufFile::open(&out).unwrap();
    let reference = GgufFile::open(tiny().join("tiny-gptoss-mxfp4-q8_0.gguf")).unwrap();
    for t in reference.tensors() {
        let o = ours.tensor_info(&t.name).unwrap();
        assert_eq!(o.ggml_type, t.ggml_type, "{}", t.name);
        assert!(
            ours.tensor_data(o).unwrap() == reference.tensor_data(t).unwrap(),
            "{}: bytes differ from llama.cpp's Q8_0 conversion",
            t.name
        );
    }
    assert_eq!(ours.metadata().get_u32("general.file_type").unwrap(), 7);
    let (ids, reference) = reference_q8();
    let e = nmse(&logits_of(&out, &ids), &reference);
    eprintln!("q8_0 + MXFP4 experts: logits NMSE vs reference-q8_0 = {e:.3e}");
    assert!(e <= 1e-4, "NMSE {e} above 1e-4");
}

#[test]
fn tensor_type_overrides_apply_and_bad_ones_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny().join("tiny-gptoss-mxfp4-bf16.gguf");
    let out = dir.path().join("o.gguf");
    gptoss(&[
        "quantize",
        s(&src),
        s(&out),
        "-t",
        "q4_0",
        "--tensor-type",
        "attn_v=q8_0",
        "--output-tensor-type",
        "bf16",
        "--token-embedding-type",
        "q5_1",
        "-q",
    ]);
    let f = GgufFile::open(&out).unwrap();
    let ty = |n: &str| f.tensor_info(n).unwrap().ggml_type.to_string();
    assert_eq!(ty("blk.1.attn_v.weight"), "Q8_0");
    assert_eq!(ty("blk.1.attn_q.weight"), "Q4_0");
    assert_eq!(ty("output.weight"), "BF16");
    assert_eq!(ty("token_embd.weight"), "Q5_1");
    for bad in ["attn_v", "attn_v=q9_9", "(=q8_0", "attn_v=iq2_xxs"] {
        let out = gptoss_raw(&[
            "quantize",
            s(&src),
            s(&dir.path().join("x.gguf")),
            "-t",
            "q8_0",
            "--tensor-type",
            bad,
        ]);
        assert!(!out.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--tensor-type"), "{bad}: {err}");
        assert!(!dir.path().join("x.gguf").exists());
    }
}
