//! `gptoss serve` on the tiny fixture model (CPU backend), driven by the real OpenAI Python
//! client: streaming and non-streaming chat, completions, models, health, a wrong API key,
//! malformed JSON, an oversize body, 16 concurrent clients, a client disconnecting mid-stream.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn openai_client_against_serve() {
    let model = tiny().join("tiny-gptoss-mxfp4-q8_0.gguf");
    let key = "test-key-123";
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args([
            "serve",
            "-m",
            s(&model),
            "--port",
            "0",
            "--backend",
            "cpu",
            "--api-key",
            key,
        ])
        .args([
            "--max-tokens",
            "2048",
            "--max-body",
            "1048576",
            "-c",
            "4096",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting gptoss serve");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "loopback by default: {url}"
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/openai_client.py");
    let out = Command::new(oracle_python())
        .arg(script)
        .arg(&url)
        .arg(key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "OpenAI client checks failed"
    );
    drop(server);
}
