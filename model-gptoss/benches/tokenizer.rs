//! Tokenizer throughput against tiktoken-rs (o200k_base) in the same run, and load time.
//!
//! `cargo bench -p gptoss-model --bench tokenizer`
//!
//! The text is mixed: English prose, code, Russian, Chinese, Japanese, Korean, Arabic, Hindi,
//! Greek, numbers, URLs, emoji and whitespace runs (every text of the o200k tokenizer cases that
//! has no special token, plus prose), repeated to about 256 KiB. Both tokenizers encode it without
//! special tokens; the ids are checked equal before timing.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gptoss_model::tokenizer::Tokenizer;

const PROSE: &str = "The committee met on Tuesday to review the 2025 budget, which allocates $4.2 million to \
infrastructure and 18% more to education than last year. \"We can't keep postponing repairs,\" said the chair, \
pointing to bridges built in the 1960s.\n\nfn parse(input: &str) -> Result<Vec<u32>, Error> {\n    \
input.split(',').map(|s| s.trim().parse::<u32>().map_err(Error::from)).collect()\n}\n\n\
Москва — столица России, крупнейший по численности населения город страны. \
北京是中华人民共和国的首都，也是全国的政治、文化中心。東京は日本の首都であり、世界有数の大都市です。\
서울은 대한민국의 수도이다. القاهرة هي عاصمة جمهورية مصر العربية. नई दिल्ली भारत की राजधानी है। \
Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. Visit https://example.org/docs?page=3&lang=en#intro 🚀✨👍🏽\n\t\t  \n";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn mixed_text() -> String {
    let cases: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("o200k/tokenizer_cases.json")).expect("tokenizer cases"),
    )
    .expect("json");
    let mut unit = String::from(PROSE);
    for c in cases["cases"].as_array().expect("cases") {
        let t = c["text"].as_str().expect("text");
        if !t.contains("<|") {
            unit.push_str(t);
            unit.push('\n');
        }
    }
    let mut text = String::new();
    while text.len() < 256 * 1024 {
        text.push_str(&unit);
    }
    text
}

fn bench(c: &mut Criterion) {
    let path = fixtures().join("o200k/o200k_harmony-vocab.gguf");
    let t0 = Instant::now();
    let file = gguf_format::GgufFile::open(&path).expect("vocabulary GGUF");
    let t1 = Instant::now();
    let ours = Tokenizer::from_gguf(file.metadata()).expect("tokenizer");
    let t2 = Instant::now();
    let theirs = tiktoken_rs::o200k_base().expect("tiktoken-rs o200k_base");
    let t3 = Instant::now();
    eprintln!(
        "load: GGUF open+metadata {:.1} ms, our tokenizer build {:.1} ms ({} merges); tiktoken-rs o200k_base {:.1} ms",
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        ours.merge_count(),
        (t3 - t2).as_secs_f64() * 1e3,
    );

    let text = mixed_text();
    let ids = ours.encode(&text, false);
    let want: Vec<u32> = theirs.encode_ordinary(&text);
    assert_eq!(
        ids, want,
        "the two tokenizers disagree: timings would not be comparable"
    );
    eprintln!(
        "text: {} bytes, {} tokens ({:.2} bytes/token)",
        text.len(),
        ids.len(),
        text.len() as f64 / ids.len() as f64
    );

    // The machine is shared: alternate the two encoders and compare medians, so that load
    // changes hit both alike (criterion below runs them one after the other).
    let mut ours_s = Vec::new();
    let mut theirs_s = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        black_box(ours.encode(black_box(&text), false));
        ours_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(theirs.encode_ordinary(black_box(&text)));
        theirs_s.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (o, t) = (median(&mut ours_s), median(&mut theirs_s));
    eprintln!(
        "interleaved medians: gptoss {:.2} Mtok/s ({:.1} MB/s), tiktoken-rs {:.2} Mtok/s ({:.1} MB/s), ratio {:.2}x",
        ids.len() as f64 / o / 1e6,
        text.len() as f64 / o / 1e6,
        ids.len() as f64 / t / 1e6,
        text.len() as f64 / t / 1e6,
        t / o
    );

    let mut g = c.benchmark_group("encode_mixed_256k");
    // Elements = tokens, so criterion reports tokens/s.
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.sample_size(20);
    g.bench_function("gptoss", |b| {
        b.iter(|| black_box(ours.encode(black_box(&text), false)))
    });
    g.bench_function("tiktoken-rs", |b| {
        b.iter(|| black_box(theirs.encode_ordinary(black_box(&text))))
    });
    g.finish();

    let mut g = c.benchmark_group("decode_mixed_256k");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.sample_size(20);
    g.bench_function("gptoss", |b| {
        b.iter(|| black_box(ours.decode(black_box(&ids)).expect("in range")))
    });
    g.bench_function("tiktoken-rs", |b| {
        b.iter(|| black_box(theirs.decode(black_box(&want)).expect("utf-8")))
    });
    g.finish();

    let mut g = c.benchmark_group("load_o200k");
    g.sample_size(10);
    g.bench_function("gptoss_from_gguf_metadata", |b| {
        b.iter(|| black_box(Tokenizer::from_gguf(file.metadata()).expect("tokenizer")))
    });
    g.bench_function("gguf_open_and_metadata", |b| {
        b.iter(|| black_box(gguf_format::GgufFile::open(&path).expect("gguf")))
    });
    g.bench_function("tiktoken-rs_o200k_base", |b| {
        b.iter(|| black_box(tiktoken_rs::o200k_base().expect("bpe")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
