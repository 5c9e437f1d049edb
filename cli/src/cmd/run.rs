//! `gptoss run -m MODEL -p PROMPT [--chat] [--reasoning low|medium|high] [-n N] [--temp T]
//! [--seed S] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--backend B] [--ctx N]`:
//! generate text after a prompt, streamed as it comes; prefill and decode speeds at the end.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use gptoss_backend::Backend;
use gptoss_model::chat::{ChatMessage, ChatOptions, ChatTemplate, ReasoningEffort};
use gptoss_model::tokenizer::{StreamDecoder, Tokenizer};
use gptoss_model::{
    GenerateOptions, Generation, Sampler, SamplerConfig, StopReason, generate, open_gguf,
};

use crate::backends::{NAMES, WithBackend};

/// Harmony reasoning effort.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Reasoning {
    /// `Reasoning: low`.
    Low,
    /// `Reasoning: medium`.
    Medium,
    /// `Reasoning: high`.
    High,
}

/// Arguments of `gptoss run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// The prompt text (special tokens such as `<|start|>` are parsed).
    #[arg(short = 'p', long = "prompt")]
    pub prompt: String,
    /// Wrap the prompt as a user message with the model's chat template (Harmony).
    #[arg(long)]
    pub chat: bool,
    /// Reasoning effort written into the chat's system message (with --chat).
    #[arg(long, value_enum, requires = "chat")]
    pub reasoning: Option<Reasoning>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n: usize,
    /// Temperature (0: greedy). GPT-OSS is meant to be sampled at 1.0.
    #[arg(long, default_value_t = 1.0)]
    pub temp: f32,
    /// Random seed (default: from the clock; printed at the end so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty over the last 64 tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Compute backend.
    #[arg(long, default_value = "auto", help = format!("Compute backend: {NAMES}"))]
    pub backend: String,
    /// Split the model over these GPUs (tensor parallel through NCCL), e.g. `--gpus 0,1` with
    /// `--backend cuda`; with `--backend cpu` it simulates the split on CPU ranks.
    #[arg(long, value_delimiter = ',', value_parser = crate::backends::parse_gpus)]
    pub gpus: Option<Vec<usize>>,
    /// Context size in tokens (default: prompt + N, at most the model's context length).
    #[arg(long)]
    pub ctx: Option<usize>,
}

struct Job<'a> {
    gguf: &'a gguf_format::GgufModel,
    tokenizer: &'a Tokenizer,
    prompt: Vec<u32>,
    sampler: Sampler,
    opts: GenerateOptions,
    ctx: Option<usize>,
    label: String,
}

impl WithBackend for Job<'_> {
    type Out = (Generation, String);
    fn run<B: Backend>(mut self, backend: B) -> Result<Self::Out> {
        let name = backend.name();
        let t0 = std::time::Instant::now();
        let model = crate::progress::load_model(backend, self.gguf, &self.label, false)?;
        tracing::info!("loaded on {name} in {:.2?}", t0.elapsed());
        let limit = model.config().context_length;
        let ctx = self
            .ctx
            .unwrap_or((self.prompt.len() + self.opts.max_tokens).min(limit));
        let mut session = model.new_session(Some(ctx))?;
        let mut decoder = StreamDecoder::new();
        let mut out = std::io::stdout().lock();
        let mut failure: Option<anyhow::Error> = None;
        let stops = self.opts.stop_tokens.clone();
        let g = generate(
            &model,
            &mut session,
            &self.prompt,
            &mut self.sampler,
            &self.opts,
            &mut |id| {
                // The end-of-generation token itself is not part of the text.
                if stops.contains(&id) {
                    return true;
                }
                let piece = match decoder.push(self.tokenizer, id) {
                    Ok(p) => p,
                    Err(e) => {
                        failure = Some(e.into());
                        return false;
                    }
                };
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    failure = Some(anyhow::Error::new(e).context("writing to standard output"));
                    return false;
                }
                true
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        let rest = decoder.finish();
        writeln!(out, "{rest}").context("writing to standard output")?;
        Ok((g, name))
    }
}

/// Run the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let gguf = open_gguf(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(gguf.metadata())
        .with_context(|| format!("{}: building the tokenizer", args.model.display()))?;
    let text = if args.chat {
        let template = ChatTemplate::from_tokenizer(&tokenizer)?;
        let options = ChatOptions {
            reasoning_effort: args.reasoning.map(|r| match r {
                Reasoning::Low => ReasoningEffort::Low,
                Reasoning::Medium => ReasoningEffort::Medium,
                Reasoning::High => ReasoningEffort::High,
            }),
            ..ChatOptions::default()
        };
        template.render(&[ChatMessage::user(args.prompt.clone())], &options)?
    } else {
        args.prompt.clone()
    };
    let prompt = tokenizer.encode(&text, true);
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let sampler = Sampler::new(SamplerConfig {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed,
        ..SamplerConfig::default()
    })?;
    let job = Job {
        gguf: &gguf,
        tokenizer: &tokenizer,
        prompt,
        sampler,
        opts: GenerateOptions {
            max_tokens: args.n,
            stop_tokens: tokenizer.eog_tokens(),
        },
        ctx: args.ctx,
        label: args.model.display().to_string(),
    };
    let (g, backend) =
        crate::backends::with_backend_gpus(&args.backend, args.gpus.as_deref(), job)?;
    let stop = match g.stop {
        StopReason::EndOfGeneration(id) => format!(
            "end of generation ({})",
            tokenizer.token_text(id).unwrap_or("?")
        ),
        StopReason::MaxTokens => format!("{} tokens (-n)", args.n),
        StopReason::ContextFull => "context full (--ctx)".to_string(),
        StopReason::Callback => "interrupted".to_string(),
    };
    eprintln!(
        "\n[{backend}] prompt {} tokens: prefill {:.2} tok/s ({:.2?}); generated {} tokens: decode {:.2} tok/s; stop: {stop}; seed {seed}",
        g.prompt_tokens,
        g.prefill_tokens_per_second(),
        g.prefill_time,
        g.tokens.len(),
        g.decode_tokens_per_second(),
    );
    Ok(ExitCode::SUCCESS)
}
