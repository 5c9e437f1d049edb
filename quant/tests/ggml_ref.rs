//! Our quantizers against bytes written by ggml's own C reference quantizers (see
//! tests/data/README.md): the k-quants, Q8_1, Q8_K, IQ4_NL/IQ4_XS and the rest, bit for bit.
//! candle-core's quantizers follow an older ggml for Q2_K/Q4_K/Q5_K/Q6_K, so this is the oracle
//! for those.

mod common;

use std::path::PathBuf;
use std::process::Command;

use gptoss_quant::{GgmlType, quantize, row_size};

const TYPES: [&str; 17] = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
    "TQ1_0", "TQ2_0", "MXFP4", "IQ4_NL", "IQ4_XS",
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn compare(ty: GgmlType, x: &[f32], want: &[u8]) -> Result<(), String> {
    let mut got = vec![0u8; row_size(ty, x.len()).unwrap()];
    quantize(ty, x, &mut got).unwrap();
    if want.len() != got.len() {
        return Err(format!("{ty}: length {} vs {}", want.len(), got.len()));
    }
    let ts = ty.type_size();
    let bad: Vec<usize> = (0..got.len() / ts)
        .filter(|&b| want[b * ts..b * ts + ts] != got[b * ts..b * ts + ts])
        .collect();
    if let Some(&b) = bad.first() {
        return Err(format!(
            "{ty}: {} of {} blocks differ; block {b}:\n ggml {:02x?}\n ours {:02x?}",
            bad.len(),
            got.len() / ts,
            &want[b * ts..b * ts + ts],
            &got[b * ts..b * ts + ts]
        ));
    }
    Ok(())
}

#[test]
fn quantizers_match_ggml_reference_vectors() {
    let dir = data_dir();
    let x = common::bytes_to_f32(&std::fs::read(dir.join("ggml_ref_input.f32")).unwrap());
    assert_eq!(x.len(), 8192);
    let mut errors = Vec::new();
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        let want = std::fs::read(dir.join(format!("ggml_ref_{name}.bin"))).unwrap();
        if let Err(e) = compare(ty, &x, &want) {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Fresh random data through ggml's C quantizers: needs the driver built as tests/data/README.md
/// says, so it is opt-in: `GGML_REF_HARNESS=/tmp/gq/harness cargo test -p gptoss-quant --release
/// --test ggml_ref -- --ignored`.
#[test]
#[ignore = "needs GGML_REF_HARNESS (tests/data/README.md); run with --ignored"]
fn quantizers_match_ggml_on_fresh_data() {
    let harness = std::env::var("GGML_REF_HARNESS")
        .expect("set GGML_REF_HARNESS to the compiled driver (tests/data/README.md)");
    let mut r = common::rng("ggml_fresh");
    let x = common::random_f32(256 * 512, &mut r);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.f32");
    std::fs::write(&input, common::f32_to_bytes(&x)).unwrap();
    let mut errors = Vec::new();
    for name in TYPES {
        let out = Command::new(&harness)
            .arg(name)
            .arg(&input)
            .output()
            .expect("run harness");
        assert!(out.status.success(), "harness failed for {name}");
        if let Err(e) = compare(GgmlType::from_name(name).unwrap(), &x, &out.stdout) {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
