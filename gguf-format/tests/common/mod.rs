//! Helpers shared by the integration tests: fixture discovery and the Python oracle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared/fixtures` beside the repository root (override with `GPTOSS_FIXTURES`).
pub fn fixtures_dir() -> PathBuf {
    if let Ok(p) = std::env::var("GPTOSS_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "gguf") {
            out.push(p);
        }
    }
}

/// Every `*.gguf` under the fixtures folder; panics when there are none (a missing fixtures
/// folder must fail the suite, not pass it vacuously).
pub fn all_fixtures() -> Vec<PathBuf> {
    let mut v = Vec::new();
    collect(&fixtures_dir(), &mut v);
    v.sort();
    assert!(
        v.len() >= 8,
        "expected at least 8 GGUF fixtures under {}, found {}",
        fixtures_dir().display(),
        v.len()
    );
    v
}

/// The Python interpreter with gguf-py: `GPTOSS_PYTHON`, else the repository's `.venv`.
/// Panics when neither exists: an oracle test must fail loudly rather than skip.
pub fn oracle_python() -> PathBuf {
    if let Ok(p) = std::env::var("GPTOSS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "oracle Python not found at {}: run scripts/test (it creates .venv with gguf==0.19.0) or set GPTOSS_PYTHON",
        venv.display()
    );
    venv
}

/// Small files written by gguf-py's GGUFWriter (fuzz seeds): every scalar type, arrays,
/// F32/Q8_0/MXFP4 tensors, alignments 8/32/64, and one big-endian file.
pub fn gguf_py_written() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let v: Vec<PathBuf> = ["s1.gguf", "s2.gguf", "s3.gguf", "s4.gguf"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    for p in &v {
        assert!(p.exists(), "missing {}", p.display());
    }
    v
}
