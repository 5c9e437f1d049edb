//! `gptoss synth`: the tiny preset has the fixture's layout and validates; the 20b preset's
//! header is the published file's layout.

mod common;

use std::collections::BTreeMap;

use common::*;
use gguf_format::GgufFile;

fn table(f: &GgufFile) -> BTreeMap<String, (gguf_format::GgmlType, Vec<u64>)> {
    f.tensors()
        .iter()
        .map(|t| (t.name.clone(), (t.ggml_type, t.shape.clone())))
        .collect()
}

#[test]
fn tiny_synth_has_the_fixture_layout_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.gguf");
    gptoss(&["synth", "--preset", "tiny", s(&out), "--quiet"]);
    assert_valid(&out);
    let ours = GgufFile::open(&out).unwrap();
    let reference = GgufFile::open(tiny().join("tiny-gptoss-mxfp4-q8_0.gguf")).unwrap();
    let ka: Vec<_> = ours.metadata().iter().map(|(k, _)| k).collect();
    let kb: Vec<_> = reference.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(ka, kb, "metadata keys");
    // Hyperparameters equal the fixture's (which has this shape).
    for (k, v) in reference.metadata().iter() {
        if k.starts_with("gpt-oss.") {
            assert_eq!(ours.metadata().get(k), Some(v), "{k}");
        }
    }
    assert_eq!(ours.metadata().get_u32("general.file_type").unwrap(), 38);
    // Same names, shapes and types as llama.cpp's Q8_0 file (experts MXFP4, matrices Q8_0).
    assert_eq!(table(&ours), table(&reference));
    // Values are random but sane: finite, the right scale.
    let t = ours.tensor_info("blk.0.attn_q.weight").unwrap();
    let mut x = vec![0f32; t.n_elements() as usize];
    gptoss_quant::dequantize(t.ggml_type, ours.tensor_data(t).unwrap(), &mut x).unwrap();
    let rms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64).sqrt();
    assert!(
        (rms - 0.125).abs() < 0.01,
        "attn_q rms {rms}, expected 1/sqrt(64)"
    );
    let e = ours.tensor_info("blk.3.ffn_down_exps.weight").unwrap();
    let mut y = vec![0f32; e.n_elements() as usize];
    gptoss_quant::dequantize(e.ggml_type, ours.tensor_data(e).unwrap(), &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_finite()));
    let rms = (y.iter().map(|v| (v * v) as f64).sum::<f64>() / y.len() as f64).sqrt();
    assert!((rms - 1.0 / 96f64.sqrt()).abs() < 0.02, "down rms {rms}");
}

#[test]
fn synth_is_deterministic_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    gptoss(&["synth", "--preset", "tiny", s(&a), "-q", "--seed", "1"]);
    gptoss(&["synth", "--preset", "tiny", s(&b), "-q", "--seed", "1"]);
    gptoss(&["synth", "--preset", "tiny", s(&c), "-q", "--seed", "2"]);
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a == b, "same seed, different files");
    assert!(a != c, "different seeds, same file");
}

#[test]
fn synth_with_a_vocabulary_gguf_copies_its_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.gguf");
    let vocab = fixtures().join("o200k/o200k_harmony-vocab.gguf");
    gptoss(&[
        "synth",
        "--preset",
        "tiny",
        s(&out),
        "-q",
        "--vocab",
        s(&vocab),
    ]);
    assert_valid(&out);
    let ours = GgufFile::open(&out).unwrap();
    let v = GgufFile::open(&vocab).unwrap();
    for (k, val) in v
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
    {
        assert!(ours.metadata().get(k) == Some(val), "{k} not copied");
    }
    // The embedding follows the vocabulary's size.
    let emb = ours.tensor_info("token_embd.weight").unwrap();
    assert_eq!(emb.shape, vec![64, 201088]);
}

#[test]
fn synth_20b_dry_run_is_the_published_layout() {
    let out = gptoss(&[
        "synth",
        "--preset",
        "20b",
        "/nonexistent/never-written.gguf",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap();
    // 459 tensors (3 + 24 x 19); 12.1 GB as the ggml-org gpt-oss-20b MXFP4 file.
    assert!(last.starts_with("459 tensors, 36 metadata keys"), "{last}");
    assert!(last.contains("(11.27 GiB)"), "{last}");
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_string()
    };
    assert!(row("blk.0.ffn_gate_exps.weight").contains("MXFP4  [2880, 2880, 32]"));
    assert!(row("blk.23.attn_q.weight").contains("Q8_0   [2880, 4096]"));
    assert!(row("blk.0.attn_k.weight").contains("Q8_0   [2880, 512]"));
    assert!(row("blk.0.attn_output.weight").contains("Q8_0   [4096, 2880]"));
    assert!(row("token_embd.weight").contains("Q8_0   [2880, 201088]"));
    assert!(row("output.weight").contains("Q8_0   [2880, 201088]"));
    assert!(row("blk.5.attn_sinks.weight").contains("F32    [64]"));
    assert!(row("blk.5.ffn_gate_inp.weight").contains("F32    [2880, 32]"));
    assert!(row("blk.5.ffn_up_exps.bias").contains("F32    [2880, 32]"));
}
