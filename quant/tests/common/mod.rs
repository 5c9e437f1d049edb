//! Shared helpers for the integration tests: a seeded RNG, random blocks with sane scales, and
//! the gguf-py oracle runner.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use gptoss_quant::GgmlType;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fresh RNG; the seed is printed so a failure can be reproduced.
pub fn rng(tag: &str) -> StdRng {
    let seed: u64 = std::env::var("QUANT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{tag}: seed {seed} (set QUANT_TEST_SEED to reproduce)");
    StdRng::seed_from_u64(seed)
}

/// A random finite f16 scale with magnitude in [2^-8, 2^2), random sign.
pub fn sane_f16(r: &mut StdRng) -> [u8; 2] {
    let mag = 2f32.powf(r.random_range(-8.0..2.0));
    let v = if r.random_bool(0.5) { -mag } else { mag };
    f16::from_f32(v).to_bits().to_le_bytes()
}

fn put_f16(b: &mut [u8], off: usize, r: &mut StdRng) {
    let v = sane_f16(r);
    b[off..off + 2].copy_from_slice(&v);
}

/// `nblocks` random blocks of `ty`: random code bytes, with every scale field overwritten by a
/// sane finite value.
pub fn random_blocks(ty: GgmlType, nblocks: usize, r: &mut StdRng) -> Vec<u8> {
    use GgmlType::*;
    let ts = ty.type_size();
    let mut out = vec![0u8; ts * nblocks];
    r.fill(&mut out[..]);
    for b in out.chunks_exact_mut(ts) {
        match ty {
            F32 => {
                let v: f32 = r.random_range(-4.0..4.0);
                b.copy_from_slice(&v.to_le_bytes());
            }
            F16 => put_f16(b, 0, r),
            BF16 => {
                let v: f32 = r.random_range(-4.0..4.0);
                b.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
            Q4_0 | Q5_0 | Q8_0 | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ1_S | IQ4_NL
            | IQ4_XS => put_f16(b, 0, r),
            Q4_1 | Q5_1 | Q8_1 | Q4_K | Q5_K => {
                put_f16(b, 0, r);
                put_f16(b, 2, r);
            }
            Q2_K => {
                put_f16(b, 80, r);
                put_f16(b, 82, r);
            }
            Q3_K => put_f16(b, 108, r),
            Q6_K => put_f16(b, 208, r),
            Q8_K => {
                let v: f32 = r.random_range(-0.1..0.1);
                b[0..4].copy_from_slice(&v.to_le_bytes());
            }
            TQ1_0 => put_f16(b, 52, r),
            TQ2_0 => put_f16(b, 64, r),
            MXFP4 => b[0] = r.random_range(100..150),
            NVFP4 => {
                for s in &mut b[0..4] {
                    *s = r.random_range(1..0x7f);
                }
            }
            IQ1_M => {
                // The f16 super-scale lives in the top nibble of the four u16 scale words.
                let d = u16::from_le_bytes(sane_f16(r));
                for k in 0..4 {
                    let w = u16::from_le_bytes([b[48 + 2 * k], b[49 + 2 * k]]);
                    let w = (w & 0x0fff) | (((d >> (4 * k)) & 0xf) << 12);
                    b[48 + 2 * k..50 + 2 * k].copy_from_slice(&w.to_le_bytes());
                }
            }
            _ => {}
        }
    }
    out
}

/// Random f32 data for quantizer tests: per 256-element group a random magnitude, normal-ish
/// values, with a sprinkling of exact zeros and repeated values.
pub fn random_f32(n: usize, r: &mut StdRng) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    let mut scale = 1.0f32;
    for i in 0..n {
        if i % 256 == 0 {
            scale = 2f32.powf(r.random_range(-6.0..6.0));
        }
        let x: f32 = match r.random_range(0..20) {
            0 => 0.0,
            1 if i > 0 => v[i - 1],
            _ => {
                // Sum of uniforms: a cheap bell shape.
                let s: f32 = (0..4).map(|_| r.random_range(-1.0f32..1.0)).sum();
                s * scale
            }
        };
        v.push(x);
    }
    v
}

/// The Python interpreter with gguf-py: `GPTOSS_PYTHON`, else the repository's `.venv`.
/// Panics (fails the test loudly) when it is missing: the oracle tests must never skip.
pub fn oracle_python() -> PathBuf {
    if let Ok(p) = std::env::var("GPTOSS_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        p.exists(),
        "oracle missing: {} does not exist; run scripts/test (it creates .venv with gguf==0.19.0) \
         or set GPTOSS_PYTHON",
        p.display()
    );
    p
}

/// One oracle job: `op` is "dequantize" or "quantize".
pub struct Job {
    pub op: &'static str,
    pub ty: GgmlType,
    pub n_per_row: usize,
    pub input: Vec<u8>,
}

const SCRIPT: &str = r#"
import sys, json, numpy as np
import gguf
from gguf.quants import dequantize, quantize
from gguf.constants import GGMLQuantizationType as T, GGML_QUANT_SIZES
jobs = json.load(open(sys.argv[1]))
for j in jobs:
    t = T[j["type"]]
    data = open(j["input"], "rb").read()
    bs, ts = GGML_QUANT_SIZES[t]
    n = j["n_per_row"]
    if j["op"] == "dequantize":
        arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, n // bs * ts)
        out = np.ascontiguousarray(dequantize(arr, t), dtype=np.float32)
    else:
        arr = np.frombuffer(data, dtype=np.float32).reshape(-1, n)
        out = np.ascontiguousarray(quantize(arr, t))
    open(j["output"], "wb").write(out.tobytes())
"#;

/// Runs all jobs in one Python process; returns each job's output bytes.
pub fn run_oracle(jobs: &[Job]) -> Vec<Vec<u8>> {
    let py = oracle_python();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut manifest = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let input = dir.path().join(format!("in{i}.bin"));
        let output = dir.path().join(format!("out{i}.bin"));
        std::fs::write(&input, &j.input).expect("write oracle input");
        manifest.push(format!(
            r#"{{"op":"{}","type":"{}","n_per_row":{},"input":"{}","output":"{}"}}"#,
            j.op,
            j.ty.name(),
            j.n_per_row,
            input.display(),
            output.display()
        ));
    }
    let mpath = dir.path().join("jobs.json");
    std::fs::write(&mpath, format!("[{}]", manifest.join(","))).expect("write manifest");
    let spath = dir.path().join("oracle.py");
    std::fs::write(&spath, SCRIPT).expect("write script");
    let out = Command::new(&py)
        .arg(&spath)
        .arg(&mpath)
        .output()
        .expect("run oracle python");
    assert!(
        out.status.success(),
        "oracle failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (0..jobs.len())
        .map(|i| std::fs::read(dir.path().join(format!("out{i}.bin"))).expect("oracle output"))
        .collect()
}

pub fn bytes_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn f32_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
