//! Open + parse the header of: the o200k vocabulary GGUF (446k merges), and two synthetic
//! GPT-OSS-20b-shaped files with the same tensor list and metadata whose data sections are
//! 12 GB (sparse) and ~0.2 MB. Equal times for the two synthetic files show that opening costs
//! nothing per byte of tensor data. Set GGUF_BENCH_DIR to place the synthetic files (default /tmp).

use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use gguf_format::{
    GgmlType, GgufFile, Metadata, TensorInfo, Value, WriteOptions, encode_header, pack_offsets,
};

fn fixtures() -> PathBuf {
    std::env::var("GPTOSS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

/// The gpt-oss-20b tensor list (llama.cpp names and types of an MXFP4_MOE file); `full` gives
/// the real shapes, otherwise every dimension is 32.
fn gptoss_tensors(full: bool) -> Vec<TensorInfo> {
    let d = |n: u64| if full { n } else { 32 };
    let (h, v, q, kv, e) = (2880, 201088, 4096, 512, 32);
    let mut t = Vec::new();
    let mut add = |name: String, ty: GgmlType, shape: Vec<u64>| {
        t.push(TensorInfo {
            name,
            ggml_type: ty,
            shape: shape.into_iter().map(d).collect(),
            offset: 0,
        })
    };
    use GgmlType::*;
    add("token_embd.weight".into(), Q8_0, vec![h, v]);
    for l in 0..24 {
        let b = |s: &str| format!("blk.{l}.{s}");
        add(b("attn_norm.weight"), F32, vec![h]);
        add(b("post_attention_norm.weight"), F32, vec![h]);
        add(b("attn_q.weight"), Q8_0, vec![h, q]);
        add(b("attn_q.bias"), F32, vec![q]);
        add(b("attn_k.weight"), Q8_0, vec![h, kv]);
        add(b("attn_k.bias"), F32, vec![kv]);
        add(b("attn_v.weight"), Q8_0, vec![h, kv]);
        add(b("attn_v.bias"), F32, vec![kv]);
        add(b("attn_output.weight"), Q8_0, vec![q, h]);
        add(b("attn_output.bias"), F32, vec![h]);
        add(b("attn_sinks.weight"), F32, vec![64]);
        add(b("ffn_gate_inp.weight"), F32, vec![h, e]);
        add(b("ffn_gate_inp.bias"), F32, vec![e]);
        for m in ["gate", "up", "down"] {
            add(b(&format!("ffn_{m}_exps.weight")), MXFP4, vec![h, h, e]);
            add(b(&format!("ffn_{m}_exps.bias")), F32, vec![h, e]);
        }
    }
    add("output_norm.weight".into(), F32, vec![h]);
    add("output.weight".into(), Q8_0, vec![h, v]);
    t
}

/// Write header + sparse data section (set_len: no data bytes are written or read).
fn synth(path: &Path, full: bool, md: &Metadata) -> u64 {
    let mut tensors = gptoss_tensors(full);
    let data = pack_offsets(&mut tensors, md.alignment()).unwrap();
    let (header, data_offset) = encode_header(md, &tensors, WriteOptions::default()).unwrap();
    std::fs::write(path, &header).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(data_offset + data).unwrap();
    data_offset + data
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let o200k = fixtures().join("o200k/o200k_harmony-vocab.gguf");
    // Synthetic metadata: the tiny fixture's (gpt-oss keys + 8k-token vocabulary).
    let tiny = GgufFile::open(fixtures().join("gpt-oss-tiny/tiny-gptoss-mxfp4-q8_0.gguf")).unwrap();
    let mut md: Metadata = tiny.metadata().clone();
    md.insert(
        "general.name",
        Value::String("synthetic gpt-oss-20b layout".into()),
    );
    let dir = std::env::var("GGUF_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let big = dir.join("gguf-bench-20b-sparse.gguf");
    let small = dir.join("gguf-bench-20b-tiny.gguf");
    let big_len = synth(&big, true, &md);
    let small_len = synth(&small, false, &md);
    eprintln!(
        "synthetic files: {} ({big_len} bytes), {} ({small_len} bytes)",
        big.display(),
        small.display()
    );
    for p in [&o200k, &big, &small] {
        let before = rss_kib();
        let f = GgufFile::open(p).unwrap();
        eprintln!(
            "open {}: {} tensors, {} keys, RSS +{} KiB",
            p.display(),
            f.tensors().len(),
            f.metadata().len(),
            rss_kib().saturating_sub(before)
        );
    }
    let mut g = c.benchmark_group("open_header");
    g.sample_size(20);
    g.bench_function("o200k_harmony-vocab (13 MB, 446k merges)", |b| {
        b.iter(|| GgufFile::open(&o200k).unwrap())
    });
    g.bench_function("synthetic gpt-oss-20b layout, 12.1 GB sparse", |b| {
        b.iter(|| GgufFile::open(&big).unwrap())
    });
    g.bench_function("synthetic gpt-oss-20b layout, tiny data", |b| {
        b.iter(|| GgufFile::open(&small).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
