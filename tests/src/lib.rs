//! Shared helpers of the conformance suite: fixture paths, the Python oracle, error metrics.

pub mod reference;

use std::path::PathBuf;

/// `../shared/fixtures` beside the repository root (override with `GPTOSS_FIXTURES`).
pub fn fixtures_dir() -> PathBuf {
    if let Ok(p) = std::env::var("GPTOSS_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// The Python interpreter with the test oracles (gguf-py, ...): `GPTOSS_PYTHON`, else the
/// repository's `.venv`. Panics with instructions when neither exists: an oracle test must fail
/// loudly rather than skip.
pub fn oracle_python() -> PathBuf {
    if let Ok(p) = std::env::var("GPTOSS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "oracle Python not found: run scripts/test (it creates .venv with gguf==0.19.0) or set GPTOSS_PYTHON"
    );
    venv
}

/// Run the numpy oracle (`tests/oracle/gptoss_random.py`): a random GPT-OSS GGUF of the given
/// configuration and its float64 reference, written to a new directory `{tag}-{pid}` under
/// `tmp` (a test's `CARGO_TARGET_TMPDIR`); returns that directory.
pub fn random_oracle_model(tmp: &std::path::Path, tag: &str, seed: u64, config: &str) -> PathBuf {
    let dir = tmp.join(format!("{tag}-{}", std::process::id()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle/gptoss_random.py");
    let out = std::process::Command::new(oracle_python())
        .arg(&script)
        .arg(&dir)
        .args(["--seed", &seed.to_string(), "--config", config])
        .output()
        .expect("running the numpy oracle");
    assert!(
        out.status.success(),
        "oracle failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Normalized mean squared error `sum (a-b)^2 / sum b^2` (ggml's test-backend-ops metric), with
/// `b` the reference. Any NaN in either gives NaN (so a comparison against a limit fails).
pub fn nmse(a: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(a.len(), reference.len(), "nmse: lengths differ");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &r) in a.iter().zip(reference) {
        let d = x as f64 - r as f64;
        num += d * d;
        den += (r as f64) * (r as f64);
    }
    if num.is_nan() || den.is_nan() {
        return f64::NAN;
    }
    num / den.max(f64::MIN_POSITIVE)
}

/// Largest absolute difference (NaN if any element is NaN).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths differ");
    let mut m = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        m = m.max(d);
    }
    m
}
