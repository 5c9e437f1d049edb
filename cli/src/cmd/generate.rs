//! `gptoss generate -m MODEL --tokens 1,2,3 -n N [--temp T] [--json] [--backend B]`: generated
//! token ids after a prompt of ids, by one prefill pass then incremental decode.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use gptoss_backend::Backend;
use gptoss_model::tokenizer::Tokenizer;
use gptoss_model::{GenerateOptions, Model, Sampler, SamplerConfig, generate, open_gguf};

use crate::backends::{NAMES, WithBackend};

/// Arguments of `gptoss generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Prompt token ids, comma-separated (`1,2,3`).
    #[arg(long)]
    pub tokens: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 16)]
    pub n: usize,
    /// Temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the best (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Also stop at the vocabulary's end-of-generation tokens (by default exactly N ids are
    /// generated, for comparison with references).
    #[arg(long)]
    pub eog: bool,
    /// Print one JSON array instead of space-separated ids.
    #[arg(long)]
    pub json: bool,
    /// Compute backend (default: the exact CPU reference).
    #[arg(long, default_value = "cpu-ref", help = format!("Compute backend: {NAMES}"))]
    pub backend: String,
    /// Split the model over these GPUs (tensor parallel through NCCL), e.g. `--gpus 0,1` with
    /// `--backend cuda`; with `--backend cpu` it simulates the split on CPU ranks.
    #[arg(long, value_delimiter = ',', value_parser = crate::backends::parse_gpus)]
    pub gpus: Option<Vec<usize>>,
}

/// Parse `1,2,3` (spaces allowed) into token ids.
pub(crate) fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| anyhow::anyhow!("--tokens: '{t}' is not a token id"))
        })
        .collect::<Result<Vec<u32>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}

struct Job<'a> {
    gguf: &'a gguf_format::GgufModel,
    prompt: Vec<u32>,
    sampler: Sampler,
    opts: GenerateOptions,
}

impl WithBackend for Job<'_> {
    type Out = Vec<u32>;
    fn run<B: Backend>(mut self, backend: B) -> Result<Vec<u32>> {
        let model = Model::from_gguf(backend, self.gguf)?;
        let ctx = (self.prompt.len() + self.opts.max_tokens).min(model.config().context_length);
        let mut session = model.new_session(Some(ctx))?;
        let g = generate(
            &model,
            &mut session,
            &self.prompt,
            &mut self.sampler,
            &self.opts,
            &mut |_| true,
        )?;
        Ok(g.tokens)
    }
}

/// Run the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let prompt = parse_tokens(&args.tokens)?;
    let gguf = open_gguf(&args.model)?;
    let stop_tokens = if args.eog {
        Tokenizer::from_gguf(gguf.metadata())?.eog_tokens()
    } else {
        Vec::new()
    };
    let sampler = Sampler::new(SamplerConfig {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplerConfig::default()
    })?;
    let job = Job {
        gguf: &gguf,
        prompt,
        sampler,
        opts: GenerateOptions {
            max_tokens: args.n,
            stop_tokens,
        },
    };
    let ids = crate::backends::with_backend_gpus(&args.backend, args.gpus.as_deref(), job)?;
    if args.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", s.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
