//! `gptoss chat` driven through a pseudo-terminal (Python's pty module from the test venv).

mod common;

use std::process::Command;

use common::*;

#[test]
fn chat_through_a_pty() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/chat_pty.py");
    let model = tiny().join("tiny-gptoss-mxfp4-q8_0.gguf");
    let out = Command::new(oracle_python())
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_gptoss"))
        .arg(&model)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "chat pty checks failed"
    );
}
