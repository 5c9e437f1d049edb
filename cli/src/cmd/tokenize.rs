//! `gptoss tokenize -m MODEL (--file FILE | --text TEXT) [--json]`: the ids the model's own
//! tokenizer (from the GGUF metadata) gives a text, special tokens parsed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use gptoss_model::tokenizer::Tokenizer;

/// Arguments of `gptoss tokenize`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model (or vocabulary-only GGUF) whose tokenizer to use.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Read the text from this file (UTF-8); `-` reads standard input.
    #[arg(long, conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// The text itself.
    #[arg(long)]
    pub text: Option<String>,
    /// Print one JSON array of ids instead of one `id<TAB>piece` line per token.
    #[arg(long)]
    pub json: bool,
    /// Treat special-token texts such as `<|start|>` as ordinary characters.
    #[arg(long)]
    pub no_special: bool,
    /// Report load and encode times (and tokens/s) on standard error.
    #[arg(long)]
    pub timing: bool,
}

/// Run the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = match (&args.file, &args.text) {
        (Some(path), _) if path.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            s
        }
        (Some(path), _) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, Some(text)) => text.clone(),
        (None, None) => {
            anyhow::bail!("give the text with --file FILE (or - for standard input) or --text TEXT")
        }
    };

    let t0 = Instant::now();
    let file = gguf_format::GgufModel::open(&args.model)
        .with_context(|| format!("opening {}", args.model.display()))?;
    let t1 = Instant::now();
    let tokenizer = Tokenizer::from_gguf(file.metadata())
        .with_context(|| format!("{}: building the tokenizer", args.model.display()))?;
    let t2 = Instant::now();
    let ids = tokenizer.encode(&text, !args.no_special);
    let t3 = Instant::now();

    let mut out = String::with_capacity(ids.len() * 8);
    if args.json {
        out.push_str(&serde_json::to_string(&ids)?);
        out.push('\n');
    } else {
        for &id in &ids {
            let piece = tokenizer.token_to_piece(id).unwrap_or_default();
            out.push_str(&format!("{id}\t{piece:?}\n"));
        }
    }
    if args.timing {
        let secs = (t3 - t2).as_secs_f64();
        eprintln!(
            "gguf open {:.1} ms, tokenizer build {:.1} ms ({} tokens, {} merges), encode {:.3} ms: {} tokens, {:.0} tokens/s, {:.1} MB/s",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            tokenizer.vocab_size(),
            tokenizer.merge_count(),
            secs * 1e3,
            ids.len(),
            ids.len() as f64 / secs.max(1e-9),
            text.len() as f64 / secs.max(1e-9) / 1e6,
        );
    }
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}
