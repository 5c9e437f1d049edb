//! Hyperparameters from GGUF metadata: GPT-OSS shapes from the published model cards, the
//! fixture's documented configuration, defaults and errors.

use gguf_format::{Array, GgufModel, Metadata, Value};
use gptoss_model::{ModelConfig, ModelError};
use std::path::PathBuf;

/// Metadata of a GPT-OSS file with the published gpt-oss-20b/120b hyperparameters.
fn gptoss_metadata(layers: u32, experts: u32) -> Metadata {
    let mut m = Metadata::new();
    m.insert("general.architecture", Value::String("gpt-oss".into()));
    let u = |m: &mut Metadata, k: &str, v: u32| m.insert(format!("gpt-oss.{k}"), Value::U32(v));
    u(&mut m, "block_count", layers);
    u(&mut m, "context_length", 131072);
    u(&mut m, "embedding_length", 2880);
    u(&mut m, "feed_forward_length", 2880);
    u(&mut m, "expert_feed_forward_length", 2880);
    u(&mut m, "expert_count", experts);
    u(&mut m, "expert_used_count", 4);
    u(&mut m, "attention.head_count", 64);
    u(&mut m, "attention.head_count_kv", 8);
    u(&mut m, "attention.key_length", 64);
    u(&mut m, "attention.value_length", 64);
    u(&mut m, "attention.sliding_window", 128);
    u(&mut m, "rope.scaling.original_context_length", 4096);
    m.insert("gpt-oss.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    m.insert("gpt-oss.rope.freq_base", Value::F32(150000.0));
    m.insert("gpt-oss.rope.scaling.type", Value::String("yarn".into()));
    m.insert("gpt-oss.rope.scaling.factor", Value::F32(32.0));
    m
}

#[test]
fn gpt_oss_20b_metadata() {
    let c = ModelConfig::from_metadata(&gptoss_metadata(24, 32)).unwrap();
    assert_eq!(
        (c.n_layers, c.d_model, c.d_ff, c.n_experts, c.top_k),
        (24, 2880, 2880, 32, 4)
    );
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (64, 8, 64));
    assert_eq!((c.q_dim(), c.kv_dim()), (4096, 512));
    assert_eq!((c.sliding_window, c.context_length), (128, 131072));
    assert_eq!(c.rms_eps, 1e-5);
    // Even layers windowed, odd layers full.
    for il in 0..24 {
        assert_eq!(c.window(il), (il % 2 == 0).then_some(128), "layer {il}");
        assert_eq!(c.attention(il).window, c.window(il));
        assert_eq!(c.kv_cache(il, 1000).window, c.window(il));
    }
    assert_eq!(c.attention(1).scale, 0.125);
    let r = c.rope;
    assert_eq!(
        (r.head_dim, r.theta, r.scaling_factor),
        (64, 150000.0, 32.0)
    );
    assert_eq!(r.original_context, 4096);
    // Absent beta keys (older files) default to the reference's 32 and 1.
    assert_eq!((r.beta_fast, r.beta_slow), (32.0, 1.0));
}

#[test]
fn gpt_oss_120b_metadata() {
    let c = ModelConfig::from_metadata(&gptoss_metadata(36, 128)).unwrap();
    assert_eq!((c.n_layers, c.n_experts, c.top_k), (36, 128, 4));
    assert_eq!(c.swa_layers.iter().filter(|&&w| w).count(), 18);
}

#[test]
fn betas_and_patterns_from_keys() {
    let mut m = gptoss_metadata(6, 8);
    m.insert("gpt-oss.rope.scaling.yarn_beta_fast", Value::F32(16.0));
    m.insert("gpt-oss.rope.scaling.yarn_beta_slow", Value::F32(2.0));
    m.insert("gpt-oss.attention.sliding_window_pattern", Value::U32(3));
    let c = ModelConfig::from_metadata(&m).unwrap();
    assert_eq!((c.rope.beta_fast, c.rope.beta_slow), (16.0, 2.0));
    assert_eq!(c.swa_layers, [true, true, false, true, true, false]);

    let pattern = [false, true, true, false, false, true];
    m.insert(
        "gpt-oss.attention.sliding_window_pattern",
        Value::Array(Array::Bool(pattern.to_vec())),
    );
    assert_eq!(ModelConfig::from_metadata(&m).unwrap().swa_layers, pattern);

    m.insert(
        "gpt-oss.attention.sliding_window_pattern",
        Value::Array(Array::Bool(vec![true; 5])),
    );
    let e = ModelConfig::from_metadata(&m).unwrap_err();
    assert!(e.to_string().contains("sliding_window_pattern"), "{e}");
}

#[test]
fn missing_and_mistyped_keys_are_named() {
    for key in [
        "block_count",
        "context_length",
        "embedding_length",
        "expert_feed_forward_length",
        "expert_count",
        "expert_used_count",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "attention.sliding_window",
        "rope.freq_base",
    ] {
        let mut m = gptoss_metadata(24, 32);
        m.remove(&format!("gpt-oss.{key}"));
        match ModelConfig::from_metadata(&m) {
            Err(ModelError::MissingKey { key: k, .. }) => assert_eq!(k, format!("gpt-oss.{key}")),
            other => panic!("{key}: expected MissingKey, got {other:?}"),
        }
    }
    let mut m = gptoss_metadata(24, 32);
    m.insert("gpt-oss.expert_count", Value::String("32".into()));
    let e = ModelConfig::from_metadata(&m).unwrap_err();
    assert!(
        matches!(&e, ModelError::BadKey { key, .. } if key == "gpt-oss.expert_count"),
        "{e}"
    );
    // A u64 that fits is fine (files vary in integer width).
    let mut m = gptoss_metadata(24, 32);
    m.insert("gpt-oss.expert_count", Value::U64(32));
    assert_eq!(ModelConfig::from_metadata(&m).unwrap().n_experts, 32);
}

#[test]
fn inconsistent_values_are_rejected() {
    let cases: [(&str, Value); 6] = [
        ("gpt-oss.attention.head_count_kv", Value::U32(7)),
        ("gpt-oss.expert_used_count", Value::U32(33)),
        ("gpt-oss.attention.value_length", Value::U32(32)),
        ("gpt-oss.block_count", Value::U32(0)),
        (
            "gpt-oss.rope.scaling.type",
            Value::String("longrope".into()),
        ),
        (
            "gpt-oss.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
        ),
    ];
    for (k, v) in cases {
        let mut m = gptoss_metadata(24, 32);
        m.insert(k, v.clone());
        assert!(
            ModelConfig::from_metadata(&m).is_err(),
            "{k} = {v:?} accepted"
        );
    }
    let mut m = gptoss_metadata(24, 32);
    m.insert("general.architecture", Value::String("llama".into()));
    assert!(matches!(
        ModelConfig::from_metadata(&m),
        Err(ModelError::WrongArchitecture { .. })
    ));
}

#[test]
fn tiny_fixture_config_matches_its_readme() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    let g = GgufModel::open(&path).unwrap();
    let c = ModelConfig::from_metadata(g.metadata()).unwrap();
    // fixtures/README.md and hf/config.json: hidden 64, 4 layers (0 and 2 windowed), 4 query
    // heads and 2 KV heads of dim 32, 8 experts top-4, expert width 96, window 8.
    assert_eq!(
        (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim),
        (64, 4, 4, 2, 32)
    );
    assert_eq!(
        (c.n_experts, c.top_k, c.d_ff, c.sliding_window),
        (8, 4, 96, 8)
    );
    assert_eq!(c.swa_layers, [true, false, true, false]);
    assert_eq!(
        (c.rope.theta, c.rope.scaling_factor, c.rope.original_context),
        (150000.0, 32.0, 4096)
    );
}
