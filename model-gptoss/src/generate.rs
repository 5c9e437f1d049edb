//! The generation loop: prefill the prompt in one pass, then decode token by token until an
//! end-of-generation token, the token limit, a full context, or the caller says stop.

use crate::error::{ModelError, Result};
use crate::model::{Model, Session};
use crate::sampling::Sampler;
use gptoss_backend::Backend;
use std::time::{Duration, Instant};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced this end-of-generation token (it is the last generated token).
    EndOfGeneration(u32),
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The session's context is full.
    ContextFull,
    /// The per-token callback asked to stop.
    Callback,
}

/// Limits of one generation.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Token ids that end generation (the vocabulary's end-of-generation tokens).
    pub stop_tokens: Vec<u32>,
}

/// The result of [`generate`], with timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, including a final end-of-generation token when one stopped it.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Prompt tokens processed by the prefill pass.
    pub prompt_tokens: usize,
    /// Wall time of the prefill forward pass.
    pub prefill_time: Duration,
    /// Single-token forward passes after the prefill.
    pub decode_steps: usize,
    /// Wall time of those passes (and their sampling).
    pub decode_time: Duration,
}

impl Generation {
    /// Prompt tokens per second of the prefill pass.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Tokens per second of the decode steps (`NaN` when there were none).
    pub fn decode_tokens_per_second(&self) -> f64 {
        if self.decode_steps == 0 {
            f64::NAN
        } else {
            self.decode_steps as f64 / self.decode_time.as_secs_f64().max(f64::MIN_POSITIVE)
        }
    }
}

/// The weight floor of a cut draw's candidates without top-k (relative to the most likely
/// token's 1) and the most candidates: a top-p cut of a peaked distribution lies well within
/// them; a flat one overflows them and is sampled on the host. With top-k the candidates are
/// the top-k tokens, however flat the distribution.
const CUT_FLOOR: f32 = 1.0 / 1048576.0;
const CUT_CAP: usize = 4096;

/// Pick the next token from the last row of `logits`: greedy on the device (argmax), a
/// temperature softmax on the device when the backend can draw it
/// ([`Backend::sample_softmax`]), else on the host from a copy of the row. Only a token id
/// crosses back in the first two cases (a 201k-entry vocabulary is 804 KB a token).
pub fn pick_next<B: Backend>(
    model: &Model<B>,
    logits: &B::Tensor,
    sampler: &mut Sampler,
    history: &[u32],
) -> Result<u32> {
    let be = model.backend();
    if sampler.is_plain_greedy() {
        let ids = be.argmax(logits)?;
        return ids
            .last()
            .copied()
            .ok_or_else(|| ModelError::InvalidInput("argmax returned no row".into()));
    }
    // A draw's random number is spent when it is made: a host fallback finishes it.
    let mut drawn = None;
    if let Some(d) = sampler.softmax_draw(history) {
        if let Some(t) = be.sample_softmax(logits, &d)? {
            return Ok(t);
        }
        drawn = Some(d.u);
    } else if let Some(d) = sampler.cut_draw(history) {
        let top_k = sampler.config().top_k;
        if let Some(c) = be.softmax_candidates(logits, &d, CUT_FLOOR, top_k, CUT_CAP)?
            && let Some(t) = sampler.sample_candidates(&c, d.u)
        {
            return Ok(t);
        }
        drawn = Some(d.u);
    }
    let (data, rows, cols) = be.to_host(logits)?;
    if rows == 0 || cols == 0 {
        return Err(ModelError::InvalidInput("empty logits".into()));
    }
    let row = &data[(rows - 1) * cols..];
    match drawn {
        Some(u) => sampler.sample_at(row, history, u),
        None => sampler.sample(row, history),
    }
}

/// Generate after `prompt` (appended to `session` at its current position): one prefill pass
/// over the prompt, then one forward pass per token. `on_token` sees each generated id as soon
/// as it is chosen and returns `false` to stop.
pub fn generate<B: Backend>(
    model: &Model<B>,
    session: &mut Session<B>,
    prompt: &[u32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput(
            "generate: the prompt is empty (at least one token is needed to predict from)".into(),
        ));
    }
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Generation {
        tokens: Vec::new(),
        stop: StopReason::MaxTokens,
        prompt_tokens: prompt.len(),
        prefill_time: Duration::ZERO,
        decode_steps: 0,
        decode_time: Duration::ZERO,
    };
    let t0 = Instant::now();
    let logits = model.forward(session, prompt, false)?;
    if opts.max_tokens == 0 {
        out.prefill_time = t0.elapsed();
        return Ok(out);
    }
    let mut next = pick_next(model, &logits, sampler, &history)?;
    out.prefill_time = t0.elapsed();
    let t1 = Instant::now();
    loop {
        out.tokens.push(next);
        history.push(next);
        let go_on = on_token(next);
        if opts.stop_tokens.contains(&next) {
            out.stop = StopReason::EndOfGeneration(next);
            break;
        }
        if !go_on {
            out.stop = StopReason::Callback;
            break;
        }
        if out.tokens.len() >= opts.max_tokens {
            out.stop = StopReason::MaxTokens;
            break;
        }
        if session.remaining() == 0 {
            out.stop = StopReason::ContextFull;
            break;
        }
        let logits = model.forward(session, &[next], false)?;
        next = pick_next(model, &logits, sampler, &history)?;
        out.decode_steps += 1;
    }
    out.decode_time = t1.elapsed();
    Ok(out)
}
