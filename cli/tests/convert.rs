//! `gptoss convert` against llama.cpp's own converter output for the tiny checkpoint.

mod common;

use common::*;
use gguf_format::GgufFile;

/// Compare two GGUF files key by key and tensor by tensor (names, types, shapes, bytes), then
/// byte for byte. The first difference is reported by name.
fn assert_same_gguf(ours: &std::path::Path, reference: &std::path::Path) {
    let a = GgufFile::open(ours).expect("open ours");
    let b = GgufFile::open(reference).expect("open reference");
    let ka: Vec<_> = a.metadata().iter().map(|(k, _)| k.to_string()).collect();
    let kb: Vec<_> = b.metadata().iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(ka, kb, "metadata keys or their order differ");
    for (k, v) in b.metadata().iter() {
        assert_eq!(
            a.metadata().get(k),
            Some(v),
            "metadata value of {k} differs"
        );
    }
    assert_eq!(a.tensors().len(), b.tensors().len(), "tensor count");
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(ta.name, tb.name, "tensor order");
        assert_eq!(ta.ggml_type, tb.ggml_type, "{}: type", ta.name);
        assert_eq!(ta.shape, tb.shape, "{}: shape", ta.name);
        assert_eq!(ta.offset, tb.offset, "{}: offset", ta.name);
        assert!(
            a.tensor_data(ta).unwrap() == b.tensor_data(tb).unwrap(),
            "{}: data differ",
            ta.name
        );
    }
    assert!(
        a.bytes() == b.bytes(),
        "files differ outside metadata and tensor data (padding?)"
    );
}

#[test]
fn convert_bf16_equals_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bf16.gguf");
    gptoss(&["convert", s(&tiny().join("hf")), s(&out), "--quiet"]);
    assert_valid(&out);
    assert_same_gguf(&out, &tiny().join("tiny-gptoss-mxfp4-bf16.gguf"));
}

#[test]
fn convert_q8_0_equals_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8.gguf");
    gptoss(&[
        "convert",
        s(&tiny().join("hf")),
        s(&out),
        "--outtype",
        "q8_0",
        "--quiet",
    ]);
    assert_valid(&out);
    assert_same_gguf(&out, &tiny().join("tiny-gptoss-mxfp4-q8_0.gguf"));
}

#[test]
fn convert_missing_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = gptoss_raw(&[
        "convert",
        s(&dir.path().join("nope")),
        s(&dir.path().join("o.gguf")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
    assert!(!dir.path().join("o.gguf").exists());
}
