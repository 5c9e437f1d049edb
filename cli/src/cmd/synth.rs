//! `gptoss synth`: write a random-weight GPT-OSS with the real layout, metadata and tokenizer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use crate::gguf_out::OutTensor;
use crate::qplan::FileType;
use crate::synth::{self, Hparams, Vocab};

/// Arguments of `gptoss synth`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model shape: 20b, 120b (the published models), small or tiny.
    #[arg(long, default_value = "20b")]
    pub preset: String,
    /// Output GGUF file.
    pub out: PathBuf,
    /// llama.cpp file type: mxfp4_moe (as published), q8_0, q6_k, q5_k_m, q4_k_m, q4_0, iq4_nl,
    /// iq4_xs, bf16, f16, ...
    #[arg(long = "type", default_value = "mxfp4_moe", value_parser = FileType::parse)]
    pub ftype: FileType,
    /// Take the tokenizer (every `tokenizer.*` key) from this GGUF, e.g. a vocabulary-only file;
    /// default: a built-in byte-level vocabulary padded to the preset's size.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Random seed; the output depends only on it, not on the thread count.
    #[arg(long, default_value_t = 20251126)]
    pub seed: u64,
    /// Print the tensor table and the file size without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Run `gptoss synth`.
pub fn run(args: Args) -> Result<ExitCode> {
    let mut hp = Hparams::preset(&args.preset)?;
    let vocab = match &args.vocab {
        Some(p) => {
            let f = gguf_format::GgufFile::open(p)
                .with_context(|| format!("reading vocabulary {}", p.display()))?;
            let n = f
                .metadata()
                .get_array("tokenizer.ggml.tokens")
                .with_context(|| format!("{}: no tokenizer.ggml.tokens", p.display()))?
                .len();
            // The embedding and output matrices follow the vocabulary actually used.
            hp.n_vocab = n;
            Vocab::FromGguf(f.metadata().clone())
        }
        None => Vocab::Builtin,
    };
    let specs = synth::tensors_for(&hp, args.ftype);
    let meta = synth::metadata(&hp, args.ftype, &specs, &vocab)?;
    let out_tensors: Vec<OutTensor> = specs
        .iter()
        .map(|s| OutTensor {
            name: s.name.clone(),
            ne: s.ne.clone(),
            ty: s.ty,
        })
        .collect();
    if args.dry_run {
        let total = crate::gguf_out::file_size(&meta, &out_tensors)?;
        for s in &specs {
            println!(
                "{:<36} {:<6} {:?} {}",
                s.name,
                s.ty.to_string(),
                s.ne,
                s.n_bytes()
            );
        }
        println!(
            "{} tensors, {} metadata keys, {} bytes ({:.2} GiB)",
            specs.len(),
            meta.len(),
            total,
            total as f64 / (1u64 << 30) as f64
        );
        return Ok(ExitCode::SUCCESS);
    }
    let t0 = Instant::now();
    let n_chunks: Vec<usize> = specs.iter().map(synth::n_chunks).collect();
    let total = crate::gguf_out::write_chunked(
        &args.out,
        &meta,
        &out_tensors,
        &n_chunks,
        |i, c| {
            let mut out = Vec::new();
            synth::generate_chunk(&specs[i], i, args.seed, c, &mut out)?;
            Ok(out)
        },
        "synth",
        args.quiet,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!(
            "wrote {} ({}, {} tensors, {:.2} GiB) in {:.1} s ({:.0} MB/s)",
            args.out.display(),
            args.ftype,
            specs.len(),
            total as f64 / (1u64 << 30) as f64,
            secs,
            total as f64 / secs / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}
