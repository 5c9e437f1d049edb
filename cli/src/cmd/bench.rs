//! `gptoss bench`: llama-bench-style prefill/decode speed, peak memory, size and bits per weight.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args as ClapArgs;

use crate::backends;
use crate::benchcore::{self, BenchJob, Plan};
use gptoss_model::SamplerConfig;

fn list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{x}' is not a number"))
        })
        .collect()
}

/// Arguments of `gptoss bench`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model GGUF file(s), comma-separated or repeated.
    #[arg(short = 'm', long = "model", required = true, value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Backend: auto, cuda[:N], wgpu, cpu (fast), cpu-ref.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Split the model over these GPUs (tensor parallel through NCCL), e.g. `--gpus 0,1` with
    /// `--backend cuda`; with `--backend cpu` it simulates the split on CPU ranks.
    #[arg(long, value_delimiter = ',', value_parser = crate::backends::parse_gpus)]
    pub gpus: Option<Vec<usize>>,
    /// Prompt lengths of the prefill tests (0 for none).
    #[arg(short = 'p', long = "n-prompt", default_value = "512", value_parser = list)]
    pub prompt: Vec<Vec<usize>>,
    /// Token counts of the decode tests (0 for none).
    #[arg(short = 'n', long = "n-gen", default_value = "128", value_parser = list)]
    pub gen_len: Vec<Vec<usize>>,
    /// Context depths the tests start at.
    #[arg(short = 'd', long = "n-depth", default_value = "0", value_parser = list)]
    pub depth: Vec<Vec<usize>>,
    /// Repetitions of each test (after one warm-up).
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// Output format: md, json or csv.
    #[arg(short = 'o', long = "output", default_value = "md")]
    pub output: String,
    /// No per-test progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Decode tests sample each token at this temperature (as `gptoss chat` does, on the
    /// device where the backend can) instead of taking the argmax; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Nucleus threshold for sampled decode tests.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Top-k for sampled decode tests (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
}

/// Run `gptoss bench`.
pub fn run(args: Args) -> Result<ExitCode> {
    if !matches!(args.output.as_str(), "md" | "json" | "csv") {
        bail!(
            "unknown output format '{}' (expected md, json or csv)",
            args.output
        );
    }
    if args.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    let plan = Plan {
        prompt: args.prompt.iter().flatten().copied().collect(),
        gen_len: args.gen_len.iter().flatten().copied().collect(),
        depth: args.depth.iter().flatten().copied().collect(),
        reps: args.reps,
        verbose: !args.quiet,
        sampling: (args.temp > 0.0).then(|| SamplerConfig {
            temperature: args.temp,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: 42,
            ..Default::default()
        }),
    };
    let mut rows = Vec::new();
    for m in &args.models {
        rows.extend(backends::with_backend_gpus(
            &args.backend,
            args.gpus.as_deref(),
            BenchJob {
                path: m,
                plan: &plan,
            },
        )?);
    }
    if let Some(r) = rows.first()
        && !args.quiet
    {
        eprintln!("backend: {}", r.backend);
    }
    match args.output.as_str() {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(
                rows.iter().map(|r| r.to_json()).collect()
            ))?
        ),
        "csv" => print!("{}", benchcore::csv(&rows)),
        _ => print!("{}", benchcore::markdown(&rows)),
    }
    Ok(ExitCode::SUCCESS)
}
