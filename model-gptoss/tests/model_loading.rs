//! Loading: every tensor is checked against the metadata, and a missing or misshapen one is an
//! error naming it.

use gguf_format::GgufModel;
use gptoss_backend::{CpuBackend, WeightData};
use gptoss_model::{Model, ModelConfig, ModelError, TensorSource};
use std::path::PathBuf;

fn fixture() -> GgufModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/gpt-oss-tiny/tiny-gptoss-mxfp4-q8_0.gguf");
    GgufModel::open(&path).unwrap()
}

/// The fixture with one tensor hidden or its shape altered.
struct Tampered<'a> {
    inner: &'a GgufModel,
    name: &'static str,
    shape: Option<Vec<usize>>,
}

impl TensorSource for Tampered<'_> {
    fn weight(&self, name: &str) -> gptoss_model::Result<Option<WeightData>> {
        let w = self.inner.weight(name)?;
        if name != self.name {
            return Ok(w);
        }
        Ok(match &self.shape {
            None => None,
            Some(s) => w.map(|mut w| {
                w.shape = s.clone();
                w
            }),
        })
    }
}

fn load_err(src: &dyn TensorSource, config: ModelConfig) -> ModelError {
    match Model::from_source(CpuBackend::new(), config, src) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e,
    }
}

#[test]
fn the_fixture_loads() {
    let g = fixture();
    let m = Model::from_gguf(CpuBackend::new(), &g).unwrap();
    assert_eq!(m.vocab_size(), 8192);
    assert_eq!(m.config().n_layers, 4);
}

#[test]
fn a_missing_tensor_is_named() {
    let g = fixture();
    let config = ModelConfig::from_metadata(g.metadata()).unwrap();
    for name in [
        "token_embd.weight",
        "output.weight",
        "output_norm.weight",
        "blk.0.attn_sinks.weight",
        "blk.3.ffn_down_exps.bias",
        "blk.2.attn_q.bias",
        "blk.1.post_attention_norm.weight",
    ] {
        let src = Tampered {
            inner: &g,
            name,
            shape: None,
        };
        match load_err(&src, config.clone()) {
            ModelError::MissingTensor { name: n } => assert_eq!(n, name),
            e => panic!("{name}: expected MissingTensor, got {e}"),
        }
    }
}

#[test]
fn a_misshapen_tensor_is_named_with_both_shapes() {
    let g = fixture();
    let config = ModelConfig::from_metadata(g.metadata()).unwrap();
    let src = Tampered {
        inner: &g,
        name: "blk.1.attn_k.weight",
        shape: Some(vec![64, 32]),
    };
    match load_err(&src, config.clone()) {
        ModelError::TensorShape {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "blk.1.attn_k.weight");
            assert_eq!(expected, [64, 64]);
            assert_eq!(found, [64, 32]);
        }
        e => panic!("expected TensorShape, got {e}"),
    }
    // The output matrix must agree with the embedding's vocabulary.
    let src = Tampered {
        inner: &g,
        name: "output.weight",
        shape: Some(vec![64, 8000]),
    };
    let e = load_err(&src, config.clone());
    assert!(e.to_string().contains("output.weight"), "{e}");
}

#[test]
fn metadata_that_disagrees_with_the_tensors_is_caught() {
    let g = fixture();
    let base = ModelConfig::from_metadata(g.metadata()).unwrap();
    let mut c = base.clone();
    c.d_ff = 64;
    let e = load_err(&g, c);
    assert!(e.to_string().contains("blk.0.ffn_gate_exps.weight"), "{e}");
    let mut c = base.clone();
    c.n_layers = 5;
    match load_err(&g, c) {
        ModelError::MissingTensor { name } => assert!(name.starts_with("blk.4."), "{name}"),
        e => panic!("expected MissingTensor, got {e}"),
    }
    let mut c = base.clone();
    c.n_kv_heads = 4;
    let e = load_err(&g, c);
    assert!(e.to_string().contains("blk.0.attn_k.weight"), "{e}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let e = match Model::load(CpuBackend::new(), "/nonexistent/model.gguf") {
        Ok(_) => panic!("must fail"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}
