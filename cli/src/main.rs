//! `gptoss`: the reference command-line tool of gptoss-rs.
//!
//! Every command is a thin layer over the library crates; each lives in its own module under
//! `cmd/` with a clap `Args` struct and a `run` function.

mod backends;
mod benchcore;
mod cmd;
mod convert;
mod gguf_out;
mod progress;
mod qplan;
mod requant;
mod synth;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gptoss",
    version,
    about = "Run, inspect, convert, quantize, bench and serve GPT-OSS GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CUDA MoE experts on Blackwell's FP4 tensor cores: auto (sm_120/121, sm_100/103 after a self-check),
    /// on (required; refused on other GPUs), off.
    #[arg(long, global = true, default_value = "auto")]
    fp4: gptoss_kernels_cuda::fp4::Fp4Mode,
}

#[derive(Subcommand)]
enum Command {
    // One variant per command, in the order `gptoss --help` lists them.
    /// Generate text after a prompt (optionally as a Harmony chat), streamed; prints tokens/s.
    Run(cmd::run::Args),
    /// Write the logits of every position of one prefill pass as safetensors (`logits` [T, V]).
    Logits(cmd::logits::Args),
    /// Generate token ids after a prompt of ids (prefill, then incremental decode).
    Generate(cmd::generate::Args),
    /// Show a GGUF file's metadata, tensors and a size summary (`--json` for one JSON object).
    Inspect(cmd::inspect::Args),
    /// Check a GGUF file's structure and tensor data; exit 1 listing every problem found.
    Validate(cmd::validate::Args),
    /// Write a random-weight GPT-OSS with the real layout (no download needed).
    Synth(cmd::synth::Args),
    /// Convert an OpenAI-layout Hugging Face GPT-OSS checkpoint to GGUF (MXFP4 kept lossless).
    Convert(cmd::convert::Args),
    /// Requantize a GGUF model (mxfp4_moe, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, iq4_nl, iq4_xs, bf16, f16, ...).
    Quantize(cmd::quantize::Args),
    /// Measure prefill/decode tokens/s, peak memory and bits per weight (llama-bench style).
    Bench(cmd::bench::Args),
    /// Synthesize a model, requantize it to several types, bench each: one table against MXFP4.
    Compare(cmd::compare::Args),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(cmd::serve::Args),
    /// Chat with the model in the terminal.
    Chat(cmd::chat::Args),
    /// Print the ids the model's tokenizer gives a text (`--json` for a JSON array), special tokens parsed.
    Tokenize(cmd::tokenize::Args),
    /// Decode one tensor of a GGUF to f32 and write it as safetensors (shape as the GGUF says).
    Dequant(cmd::dequant::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    backends::set_fp4_mode(cli.fp4);
    let result: anyhow::Result<std::process::ExitCode> = match cli.command {
        // Command::Name(args) => cmd::name::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Logits(args) => cmd::logits::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Synth(args) => cmd::synth::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Quantize(args) => cmd::quantize::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Compare(args) => cmd::compare::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Chat(args) => cmd::chat::run(args),
        Command::Tokenize(args) => cmd::tokenize::run(args),
        Command::Dequant(args) => cmd::dequant::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
