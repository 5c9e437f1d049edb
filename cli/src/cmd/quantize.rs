//! `gptoss quantize`: requantize a GGUF model to a llama.cpp file type, with llama.cpp's choice
//! of which tensors keep more precision.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use crate::qplan::{FileType, Overrides, parse_ggml_type};
use crate::requant;
use gguf_format::GgmlType;

/// Arguments of `gptoss quantize`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Input GGUF (a single file or the first shard of a split set).
    pub input: PathBuf,
    /// Output GGUF file.
    pub out: PathBuf,
    /// Target file type: mxfp4_moe, q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q5_0, q4_0,
    /// iq4_nl, iq4_xs, bf16, f16, f32.
    #[arg(long = "type", short = 't', value_parser = FileType::parse)]
    pub ftype: FileType,
    /// Per-tensor type, as llama-quantize's `--tensor-type`: `PATTERN=TYPE`, where the first
    /// pattern (a regex) found in a quantizable tensor's name sets its type. Repeatable.
    /// Example: `--type q8_0 --tensor-type exps=mxfp4` keeps MXFP4 experts as they are (an
    /// unchanged type is copied bit for bit), as in the Q8_0 GGUF files people download.
    #[arg(long = "tensor-type", value_parser = Overrides::parse_tensor_type)]
    pub tensor_type: Vec<(regex::Regex, GgmlType)>,
    /// Type of output.weight (as llama-quantize's `--output-tensor-type`).
    #[arg(long, value_parser = parse_ggml_type)]
    pub output_tensor_type: Option<GgmlType>,
    /// Type of token_embd.weight (as llama-quantize's `--token-embedding-type`).
    #[arg(long, value_parser = parse_ggml_type)]
    pub token_embedding_type: Option<GgmlType>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Run `gptoss quantize`.
pub fn run(args: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let model = gguf_format::GgufModel::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let overrides = Overrides {
        tensor_types: args.tensor_type,
        output: args.output_tensor_type,
        token_embd: args.token_embedding_type,
    };
    let plan = requant::plan_with(&model, args.ftype, &overrides)?;
    let n_chunks: Vec<usize> = (0..plan.src.len())
        .map(|i| requant::n_chunks(&plan, i))
        .collect();
    let total = crate::gguf_out::write_chunked(
        &args.out,
        &plan.meta,
        &plan.out,
        &n_chunks,
        |i, c| requant::chunk(&model, &plan, i, c),
        "quantize",
        args.quiet,
    )?;
    if !args.quiet {
        let mut counts = std::collections::BTreeMap::new();
        for t in &plan.out {
            *counts.entry(t.ty.to_string()).or_insert(0usize) += 1;
        }
        let types: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        eprintln!(
            "wrote {} ({}, {:.2} GiB; tensors {}) in {:.1} s",
            args.out.display(),
            args.ftype,
            total as f64 / (1u64 << 30) as f64,
            types.join(", "),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
