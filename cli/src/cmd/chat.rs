//! `gptoss chat`: an interactive terminal chat. Keeps the conversation history, renders it with
//! the model's chat template each turn, streams the reply (reasoning dimmed, or hidden with
//! `--hide-reasoning`). Commands: `/reset`, `/reasoning low|medium|high`, `/help`, `/quit`.
//! Ctrl-C stops a reply; at the prompt it exits.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use gptoss_backend::Backend;
use gptoss_model::chat::{ChatMessage, ChatOptions, ChatTemplate, ReasoningEffort};
use gptoss_model::harmony::{HarmonyEvent, HarmonyStreamParser};
use gptoss_model::{GenerateOptions, Sampler, SamplerConfig, Tokenizer};

use crate::backends::WithBackend;

/// Arguments of `gptoss chat`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model GGUF file.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Backend: auto, cuda[:N], wgpu, cpu, cpu-ref.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Reasoning effort: low, medium or high.
    #[arg(long, default_value = "medium")]
    pub reasoning: String,
    /// A system (developer) message put before the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temp: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most tokens per reply.
    #[arg(short = 'n', long, default_value_t = 2048)]
    pub max_tokens: usize,
    /// Context size (history plus reply).
    #[arg(short = 'c', long, default_value_t = 8192)]
    pub ctx_size: usize,
    /// Do not print the model's reasoning.
    #[arg(long)]
    pub hide_reasoning: bool,
}

/// Set by Ctrl-C while a reply is being generated.
static INTERRUPT: AtomicBool = AtomicBool::new(false);
/// True while a reply is being generated (Ctrl-C then stops it instead of exiting).
static GENERATING: AtomicBool = AtomicBool::new(false);

struct ChatJob {
    args: Args,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn effort(s: &str) -> Result<ReasoningEffort> {
    s.parse::<ReasoningEffort>()
        .map_err(|_| anyhow::anyhow!("reasoning effort '{s}' is not low, medium or high"))
}

impl WithBackend for ChatJob {
    type Out = ();

    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let ChatJob {
            args,
            tokenizer,
            template,
        } = self;
        let backend_name = backend.name();
        let gguf = gptoss_model::open_gguf(&args.model)?;
        let model =
            crate::progress::load_model(backend, &gguf, &args.model.display().to_string(), false)?;
        let ctx = args.ctx_size.min(model.config().context_length);
        let mut effort_now = effort(&args.reasoning)?;
        let mut history: Vec<ChatMessage> = Vec::new();
        let stdin = std::io::stdin();
        let mut out = std::io::stdout();
        println!(
            "gptoss chat: {} on {backend_name}. /reset clears the history, /reasoning low|medium|high, /quit; Ctrl-C stops a reply.",
            args.model.display()
        );
        let dim = |s: &str| format!("\x1b[2m{s}\x1b[0m");
        loop {
            print!("> ");
            out.flush()?;
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                println!();
                return Ok(());
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(cmd) = line.strip_prefix('/') {
                let mut parts = cmd.split_whitespace();
                match parts.next().unwrap_or("") {
                    "quit" | "exit" | "q" => return Ok(()),
                    "reset" | "clear" => {
                        history.clear();
                        println!("(history cleared)");
                    }
                    "reasoning" => match parts.next().map(effort) {
                        Some(Ok(e)) => {
                            effort_now = e;
                            println!("(reasoning effort: {})", e.as_str());
                        }
                        Some(Err(e)) => println!("({e})"),
                        None => println!("(reasoning effort: {})", effort_now.as_str()),
                    },
                    "help" => println!("/reset  /reasoning low|medium|high  /quit"),
                    other => println!("(unknown command /{other}; try /help)"),
                }
                continue;
            }
            history.push(ChatMessage::user(line));
            let mut msgs = Vec::new();
            if let Some(s) = &args.system {
                msgs.push(ChatMessage::system(s.clone()));
            }
            msgs.extend(history.iter().cloned());
            let opts = ChatOptions {
                reasoning_effort: Some(effort_now),
                ..ChatOptions::default()
            };
            let prompt = tokenizer.encode(&template.render(&msgs, &opts)?, true);
            if prompt.len() + 1 >= ctx {
                println!(
                    "(the conversation has {} tokens, more than the context of {ctx}: /reset)",
                    prompt.len()
                );
                history.pop();
                continue;
            }
            let max_tokens = args.max_tokens.min(ctx - prompt.len());
            let mut session = model.new_session(Some(prompt.len() + max_tokens))?;
            let mut sampler = Sampler::new(SamplerConfig {
                temperature: args.temp,
                top_p: args.top_p,
                seed: args.seed,
                ..SamplerConfig::default()
            })?;
            let mut parser = HarmonyStreamParser::with_role(&tokenizer, Some("assistant"))?;
            let mut answer = String::new();
            let mut in_reasoning = false;
            let mut print_events = |evs: Vec<HarmonyEvent>, answer: &mut String| {
                for ev in evs {
                    if let HarmonyEvent::Delta {
                        channel,
                        recipient,
                        text,
                    } = ev
                    {
                        let reasoning =
                            channel.as_deref() == Some("analysis") && recipient.is_none();
                        if reasoning {
                            if !args.hide_reasoning {
                                if !in_reasoning {
                                    print!("{}", dim("[thinking] "));
                                    in_reasoning = true;
                                }
                                print!("{}", dim(&text));
                            }
                        } else {
                            if in_reasoning {
                                println!();
                                in_reasoning = false;
                            }
                            print!("{text}");
                            answer.push_str(&text);
                        }
                        let _ = std::io::stdout().flush();
                    }
                }
            };
            INTERRUPT.store(false, Ordering::SeqCst);
            GENERATING.store(true, Ordering::SeqCst);
            let gen_opts = GenerateOptions {
                max_tokens,
                stop_tokens: tokenizer.eog_tokens(),
            };
            let result = gptoss_model::generate(
                &model,
                &mut session,
                &prompt,
                &mut sampler,
                &gen_opts,
                &mut |id| {
                    let evs = parser.push(&tokenizer, id).unwrap_or_default();
                    print_events(evs, &mut answer);
                    !INTERRUPT.load(Ordering::SeqCst)
                },
            );
            GENERATING.store(false, Ordering::SeqCst);
            let g = result?;
            print_events(parser.finish(), &mut answer);
            if INTERRUPT.swap(false, Ordering::SeqCst) {
                println!("\n[interrupted]");
            } else {
                println!(
                    "\n{}",
                    dim(&format!(
                        "[{} tokens, {:.1} tok/s]",
                        g.tokens.len(),
                        g.decode_tokens_per_second().max(0.0)
                    ))
                );
            }
            history.push(ChatMessage::assistant(answer));
        }
    }
}

/// Run `gptoss chat`.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let gguf = gguf_format::GgufFile::open(&args.model)
        .with_context(|| format!("opening {}", args.model.display()))?;
    let tokenizer = Tokenizer::from_gguf(gguf.metadata())?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    drop(gguf);
    effort(&args.reasoning)?;
    ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            INTERRUPT.store(true, Ordering::SeqCst);
        } else {
            println!();
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    let backend = args.backend.clone();
    crate::backends::with_backend(
        &backend,
        ChatJob {
            args,
            tokenizer,
            template,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
