//! The i-quant grids and sign/level tables, transcribed from ggml-common.h, checked entry by entry
//! against gguf-py's independent packed copies.

mod common;

use std::process::Command;

use gptoss_quant::tables::*;

const SCRIPT: &str = r#"
import sys, numpy as np
from gguf.quants import IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ4_NL
out = []
for cls in (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S):
    cls.init_grid()
    g = np.asarray(cls.grid, dtype=np.float32).reshape(-1)
    out.append(cls.__name__ + " " + " ".join(str(int(v)) for v in g))
out.append("KSIGNS " + " ".join(str(b) for b in IQ2_XXS.ksigns))
out.append("KVALUES " + " ".join(str(v) for v in IQ4_NL.kvalues))
open(sys.argv[1], "w").write("\n".join(out))
"#;

fn bytes_of64(t: &[u64]) -> Vec<i64> {
    t.iter()
        .flat_map(|g| (0..8).map(move |j| ((g >> (8 * j)) & 0xff) as i64))
        .collect()
}

fn bytes_of32(t: &[u32]) -> Vec<i64> {
    t.iter()
        .flat_map(|g| (0..4).map(move |j| ((g >> (8 * j)) & 0xff) as i64))
        .collect()
}

#[test]
fn iq_tables_match_gguf_py() {
    let py = common::oracle_python();
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = (dir.path().join("t.py"), dir.path().join("t.txt"));
    std::fs::write(&script, SCRIPT).unwrap();
    let st = Command::new(py)
        .arg(&script)
        .arg(&out)
        .status()
        .expect("run oracle python");
    assert!(st.success(), "oracle script failed");
    let text = std::fs::read_to_string(&out).unwrap();
    let mut got = std::collections::HashMap::new();
    for line in text.lines() {
        let mut it = line.split(' ');
        let name = it.next().unwrap().to_string();
        let vals: Vec<i64> = it.map(|v| v.parse().unwrap()).collect();
        got.insert(name, vals);
    }
    let iq1: Vec<i64> = bytes_of64(&IQ1S_GRID)
        .into_iter()
        .map(|b| b as u8 as i8 as i64)
        .collect();
    let ours: [(&str, Vec<i64>); 8] = [
        ("IQ2_XXS", bytes_of64(&IQ2XXS_GRID)),
        ("IQ2_XS", bytes_of64(&IQ2XS_GRID)),
        ("IQ2_S", bytes_of64(&IQ2S_GRID)),
        ("IQ3_XXS", bytes_of32(&IQ3XXS_GRID)),
        ("IQ3_S", bytes_of32(&IQ3S_GRID)),
        ("IQ1_S", iq1),
        ("KSIGNS", KSIGNS_IQ2XS.iter().map(|&b| b as i64).collect()),
        ("KVALUES", KVALUES_IQ4NL.iter().map(|&b| b as i64).collect()),
    ];
    for (name, mine) in ours {
        let theirs = got
            .get(name)
            .unwrap_or_else(|| panic!("oracle gave no {name}"));
        assert_eq!(theirs.len(), mine.len(), "{name}: table length");
        for (i, (a, b)) in theirs.iter().zip(&mine).enumerate() {
            assert_eq!(
                a,
                b,
                "{name}: entry {} byte {} differs (gguf-py {a}, ours {b})",
                i / 8,
                i % 8
            );
        }
    }
}

#[test]
fn ksigns_have_even_parity() {
    for (i, &s) in KSIGNS_IQ2XS.iter().enumerate() {
        assert_eq!(s & 0x7f, i as u8);
        assert_eq!(s.count_ones() % 2, 0, "entry {i}");
    }
}
