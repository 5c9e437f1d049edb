//! Shared helpers of the CLI's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `../shared/fixtures` beside the repository root (override with `GPTOSS_FIXTURES`).
pub fn fixtures() -> PathBuf {
    if let Ok(p) = std::env::var("GPTOSS_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// The tiny GPT-OSS fixture folder.
pub fn tiny() -> PathBuf {
    fixtures().join("gpt-oss-tiny")
}

/// Run the `gptoss` binary with these arguments; panics with its output when it fails.
pub fn gptoss(args: &[&str]) -> Output {
    let out = gptoss_raw(args);
    assert!(
        out.status.success(),
        "gptoss {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run the `gptoss` binary, whatever its exit status.
pub fn gptoss_raw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .output()
        .expect("running the gptoss binary")
}

/// Path as &str (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Panic listing every finding unless `path` validates.
pub fn assert_valid(path: &Path) {
    let r = gguf_format::validate(path);
    assert!(
        r.is_valid(),
        "{} does not validate: {:#?}",
        path.display(),
        r.findings
    );
}

/// The Python with gguf-py (`GPTOSS_PYTHON` or the repository's .venv); panics when absent:
/// oracle tests fail loudly instead of skipping.
pub fn oracle_python() -> PathBuf {
    if let Ok(p) = std::env::var("GPTOSS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "oracle Python not found: run scripts/test or set GPTOSS_PYTHON"
    );
    venv
}
