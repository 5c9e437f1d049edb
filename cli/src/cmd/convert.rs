//! `gptoss convert`: an OpenAI-layout Hugging Face GPT-OSS checkpoint to GGUF, as llama.cpp's
//! converter writes it (MXFP4 experts repacked losslessly).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args as ClapArgs;

use crate::convert::{self, Checkpoint, OutType};
use crate::gguf_out::{OutTensor, TensorSink};

/// Arguments of `gptoss convert`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Checkpoint folder (config.json, model.safetensors or shards, tokenizer.json,
    /// chat_template.jinja).
    pub hf_dir: PathBuf,
    /// Output GGUF file.
    pub out: PathBuf,
    /// Type of the attention, embedding and output matrices: bf16 (default), f16 or q8_0.
    /// Experts stay MXFP4; vectors, biases and the router stay F32.
    #[arg(long, default_value = "bf16", value_parser = OutType::parse)]
    pub outtype: OutType,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Run `gptoss convert`.
pub fn run(args: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let ck = Checkpoint::open(&args.hf_dir)?;
    let planned = convert::plan(&ck, args.outtype)?;
    let meta = convert::metadata(&ck, args.outtype, &planned)?;
    let outs: Vec<OutTensor> = planned.iter().map(|p| p.out.clone()).collect();
    let mut sink = TensorSink::create(&args.out, &meta, &outs)?;
    let pb = crate::progress::bytes_bar(sink.total_bytes(), "convert", args.quiet);
    for p in &planned {
        let bytes = convert::tensor_bytes(&ck, p)?;
        sink.write(&bytes)?;
        pb.inc(bytes.len() as u64);
        tracing::debug!(tensor = %p.out.name, ty = %p.out.ty, "converted");
    }
    let total = sink.finish()?;
    pb.finish_and_clear();
    if !args.quiet {
        eprintln!(
            "wrote {} ({} tensors, {:.1} MiB) in {:.1} s",
            args.out.display(),
            planned.len(),
            total as f64 / (1u64 << 20) as f64,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
