//! llama-bench-style measurements shared by `bench` and `compare`: prefill (pp) and decode (tg)
//! tokens per second with mean and standard deviation over repetitions, after one warm-up run.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use gptoss_backend::Backend;
use gptoss_model::{Model, Sampler, SamplerConfig};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::json;

use crate::backends::WithBackend;

/// One measurement: a test (`pp512`, `tg128`, with `@ d4096` for depth) and its speeds.
#[derive(Debug, Clone)]
pub struct Row {
    /// Model file name.
    pub model: String,
    /// Bytes of tensor data.
    pub size_bytes: u64,
    /// Parameters.
    pub params: u64,
    /// Backend name as it reports itself.
    pub backend: String,
    /// `pp` (prompt processing) or `tg` (text generation).
    pub kind: &'static str,
    /// Tokens per test.
    pub n_tokens: usize,
    /// Context depth before the test.
    pub depth: usize,
    /// Tokens per second of each repetition.
    pub samples: Vec<f64>,
    /// Peak device memory after the test (process peak RSS on the CPU).
    pub peak_memory: Option<u64>,
    /// How decode tests chose each token: empty for greedy (argmax), else the sampling
    /// settings (`T0.7`, `T0.7 p0.9`).
    pub sampling: String,
}

impl Row {
    /// `pp512`, `tg128 @ d4096`.
    pub fn test_name(&self) -> String {
        let mut s = format!("{}{}", self.kind, self.n_tokens);
        if self.depth > 0 {
            s += &format!(" @ d{}", self.depth);
        }
        if !self.sampling.is_empty() {
            s += &format!(" {}", self.sampling);
        }
        s
    }

    /// Mean tokens per second.
    pub fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }

    /// Sample standard deviation (0 for one sample).
    pub fn stddev(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }

    /// Bits per weight.
    pub fn bpw(&self) -> f64 {
        self.size_bytes as f64 * 8.0 / self.params.max(1) as f64
    }

    /// A row back from [`Row::to_json`].
    pub fn from_json(v: &serde_json::Value) -> Result<Row> {
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("bench JSON: {k}"))
        };
        let u = |k: &str| v[k].as_u64().with_context(|| format!("bench JSON: {k}"));
        Ok(Row {
            model: s("model")?,
            size_bytes: u("size_bytes")?,
            params: u("params")?,
            backend: s("backend")?,
            kind: if v["kind"].as_str() == Some("pp") {
                "pp"
            } else {
                "tg"
            },
            n_tokens: u("n_tokens")? as usize,
            depth: u("depth")? as usize,
            samples: v["samples"]
                .as_array()
                .context("bench JSON: samples")?
                .iter()
                .filter_map(|x| x.as_f64())
                .collect(),
            peak_memory: v["peak_memory_bytes"].as_u64(),
            sampling: v["sampling"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// JSON object of this row.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "model": self.model, "size_bytes": self.size_bytes, "params": self.params,
            "bpw": self.bpw(), "backend": self.backend, "test": self.test_name(),
            "kind": self.kind, "n_tokens": self.n_tokens, "depth": self.depth,
            "tokens_per_second": self.mean(), "stddev": self.stddev(), "samples": self.samples,
            "peak_memory_bytes": self.peak_memory, "sampling": self.sampling,
        })
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prompt lengths (pp tests); 0 entries are skipped.
    pub prompt: Vec<usize>,
    /// Generation lengths (tg tests); 0 entries are skipped.
    pub gen_len: Vec<usize>,
    /// Context depths.
    pub depth: Vec<usize>,
    /// Repetitions per test.
    pub reps: usize,
    /// Called after each finished row (progress output).
    pub verbose: bool,
    /// Decode tests draw each token with these settings (as `gptoss generate` does) instead of
    /// taking the argmax.
    pub sampling: Option<SamplerConfig>,
}

/// Size and parameter count of a GGUF's tensors.
pub fn model_size(path: &Path) -> Result<(u64, u64)> {
    let m = gguf_format::GgufModel::open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let (mut bytes, mut params) = (0u64, 0u64);
    for t in m.tensors() {
        bytes += t.size_bytes();
        params += t.n_elements();
    }
    Ok((bytes, params))
}

/// Bench job for [`crate::backends::with_backend`].
pub struct BenchJob<'a> {
    /// Model file.
    pub path: &'a Path,
    /// Tests.
    pub plan: &'a Plan,
}

fn sync_logits<B: Backend>(model: &Model<B>, t: &B::Tensor) -> Result<u32> {
    // Reading the logits back waits for the device, so the clock sees finished work.
    let ids = model.backend().argmax(t)?;
    Ok(ids.first().copied().unwrap_or(0))
}

impl WithBackend for BenchJob<'_> {
    type Out = Vec<Row>;

    fn run<B: Backend>(self, backend: B) -> Result<Vec<Row>> {
        let (size_bytes, params) = model_size(self.path)?;
        let backend_name = backend.name();
        let gguf = gptoss_model::open_gguf(self.path)?;
        let label = self.path.display().to_string();
        let model = crate::progress::load_model(backend, &gguf, &label, !self.plan.verbose)
            .with_context(|| format!("loading {label} on {backend_name}"))?;
        let vocab = model.vocab_size() as u32;
        let mut rng = SmallRng::seed_from_u64(42);
        let mut random_tokens =
            |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
        let name = self
            .path
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut rows = Vec::new();
        let plan = self.plan;
        let mut tests: Vec<(&'static str, usize, usize)> = Vec::new();
        for &d in &plan.depth {
            tests.extend(
                plan.prompt
                    .iter()
                    .filter(|&&p| p > 0)
                    .map(|&p| ("pp", p, d)),
            );
            tests.extend(
                plan.gen_len
                    .iter()
                    .filter(|&&n| n > 0)
                    .map(|&n| ("tg", n, d)),
            );
        }
        for (kind, n, depth) in tests {
            let mut samples = Vec::new();
            // One warm-up run (kernel compilation, caches), then the timed repetitions.
            for rep in 0..=plan.reps {
                let mut session = model.new_session(Some(depth + n + 1))?;
                if depth > 0 {
                    let ctx = random_tokens(depth);
                    // Fill the context in batches of 512, as llama-bench does.
                    for c in ctx.chunks(512) {
                        let t = model.forward(&mut session, c, false)?;
                        sync_logits(&model, &t)?;
                    }
                }
                let t0 = Instant::now();
                if kind == "pp" {
                    let toks = random_tokens(n);
                    let t = model.forward(&mut session, &toks, false)?;
                    sync_logits(&model, &t)?;
                } else {
                    let mut next = random_tokens(1)[0];
                    // Greedy by default: then pick_next takes the argmax on the device.
                    let mut sampler = Sampler::new(plan.sampling.clone().unwrap_or_default())?;
                    let mut history = Vec::with_capacity(n);
                    for _ in 0..n {
                        let t = model.forward(&mut session, &[next], false)?;
                        next = gptoss_model::pick_next(&model, &t, &mut sampler, &history)?;
                        history.push(next);
                    }
                }
                let secs = t0.elapsed().as_secs_f64();
                if rep > 0 {
                    samples.push(n as f64 / secs.max(f64::MIN_POSITIVE));
                }
            }
            let row = Row {
                model: name.clone(),
                size_bytes,
                params,
                // Named after the run: it says which kernels ran (the CUDA MoE path, say).
                backend: model.backend().name(),
                kind,
                n_tokens: n,
                depth,
                samples,
                peak_memory: model.backend().peak_memory_bytes(),
                sampling: match (&plan.sampling, kind) {
                    (Some(c), "tg") => sampling_label(c),
                    _ => String::new(),
                },
            };
            if plan.verbose {
                eprintln!(
                    "{}: {} {:.2} ± {:.2} t/s",
                    row.model,
                    row.test_name(),
                    row.mean(),
                    row.stddev()
                );
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

/// Human-readable bytes (GiB / MiB).
pub fn fmt_bytes(b: u64) -> String {
    let g = b as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{g:.2} GiB")
    } else {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Parameter count as `20.91 B` / `1.23 M`.
pub fn fmt_params(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else {
        format!("{:.2} M", n / 1e6)
    }
}

/// The rows as a llama-bench markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| model | size | params | bpw | backend | test | t/s | peak mem |\n| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {:.2} | {} | {} | {:.2} ± {:.2} | {} |\n",
            r.model,
            fmt_bytes(r.size_bytes),
            fmt_params(r.params),
            r.bpw(),
            r.backend,
            r.test_name(),
            r.mean(),
            r.stddev(),
            r.peak_memory.map(fmt_bytes).unwrap_or_else(|| "n/a".into())
        );
    }
    s
}

/// The rows as CSV with a header line.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "model,size_bytes,params,bpw,backend,test,n_tokens,depth,tokens_per_second,stddev,peak_memory_bytes\n",
    );
    for r in rows {
        s += &format!(
            "{},{},{},{:.4},\"{}\",{},{},{},{:.4},{:.4},{}\n",
            r.model,
            r.size_bytes,
            r.params,
            r.bpw(),
            r.backend.replace('"', "'"),
            r.test_name(),
            r.n_tokens,
            r.depth,
            r.mean(),
            r.stddev(),
            r.peak_memory.map(|m| m.to_string()).unwrap_or_default()
        );
    }
    s
}

/// `T0.7`, `T0.7 p0.9 k40`: the settings a sampled decode test ran with.
fn sampling_label(c: &SamplerConfig) -> String {
    let mut s = format!("T{}", c.temperature);
    if c.top_p < 1.0 {
        s += &format!(" p{}", c.top_p);
    }
    if c.top_k > 0 {
        s += &format!(" k{}", c.top_k);
    }
    s
}
