//! `gptoss serve`: an OpenAI-compatible HTTP server (axum) over one model.
//!
//! - `POST /v1/chat/completions` (SSE streaming or not): the prompt is rendered with the model's
//!   chat template; the Harmony reply is split into `reasoning_content` (analysis channel),
//!   `content` (final channel) and `tool_calls` (messages addressed to `functions.NAME`).
//! - `POST /v1/completions`, `GET /v1/models`, `GET /health`.
//! - Loopback by default; optional bearer API key; request body and `max_tokens` limits.
//! - Requests queue on one model worker thread (a bounded channel: a full queue answers 503);
//!   a client that disconnects stops its generation at the next token.

// Handlers return early with a ready error `Response`; it is built once per failed request, so
// its size on the stack does not matter.
#![allow(clippy::result_large_err)]

mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args as ClapArgs;
use gptoss_model::chat::{ChatOptions, ChatTemplate, ReasoningEffort};
use gptoss_model::harmony::{HarmonyEvent, HarmonyStreamParser};
use gptoss_model::{SamplerConfig, StreamDecoder, Tokenizer};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use worker::{Event, Job, WorkerJob};

/// Arguments of `gptoss serve`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model GGUF file.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Address to listen on (loopback by default; use 0.0.0.0 deliberately).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 requests (also from GPTOSS_API_KEY).
    #[arg(long, env = "GPTOSS_API_KEY")]
    pub api_key: Option<String>,
    /// Backend: auto, cuda[:N], wgpu, cpu, cpu-ref.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Split the model over these GPUs (tensor parallel through NCCL), e.g. `--gpus 0,1` with
    /// `--backend cuda`; with `--backend cpu` it simulates the split on CPU ranks.
    #[arg(long, value_delimiter = ',', value_parser = crate::backends::parse_gpus)]
    pub gpus: Option<Vec<usize>>,
    /// Context size per request (prompt + generated tokens).
    #[arg(short = 'c', long, default_value_t = 4096)]
    pub ctx_size: usize,
    /// Largest `max_tokens` a request may ask for (also the default).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Requests that may wait for the model; more are answered 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Model id reported by /v1/models (default: the file name without .gguf).
    #[arg(long)]
    pub alias: Option<String>,
}

struct AppState {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    jobs: mpsc::Sender<Job>,
    model_id: String,
    api_key: Option<String>,
    ctx_size: usize,
    max_tokens: usize,
    stop: Vec<u32>,
}

type Shared = Arc<AppState>;

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{n:x}")
}

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid or missing API key",
        ))
    }
}

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("malformed JSON body: {e}")))?;
    if !v.is_object() {
        return Err(bad_request("the request body must be a JSON object"));
    }
    Ok(v)
}

/// Sampling settings and the token budget from an OpenAI request.
fn sampling(
    req: &Value,
    state: &AppState,
    prompt_len: usize,
) -> Result<(SamplerConfig, usize), Response> {
    let mut cfg = SamplerConfig::default();
    if let Some(t) = req.get("temperature").filter(|v| !v.is_null()) {
        let t = t
            .as_f64()
            .ok_or_else(|| bad_request("temperature must be a number"))?;
        if !(0.0..=2.0).contains(&t) {
            return Err(bad_request("temperature must be between 0 and 2"));
        }
        cfg.temperature = t as f32;
    }
    if let Some(p) = req.get("top_p").filter(|v| !v.is_null()) {
        let p = p
            .as_f64()
            .ok_or_else(|| bad_request("top_p must be a number"))?;
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad_request("top_p must be in (0, 1]"));
        }
        cfg.top_p = p as f32;
    }
    if let Some(s) = req.get("seed").and_then(Value::as_u64) {
        cfg.seed = s;
    }
    if prompt_len >= state.ctx_size {
        return Err(bad_request(format!(
            "the prompt has {prompt_len} tokens; the context size is {}",
            state.ctx_size
        )));
    }
    let room = (state.ctx_size - prompt_len).min(state.max_tokens);
    let asked = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .filter(|v| !v.is_null());
    let max_tokens = match asked {
        None => room,
        Some(v) => {
            let n = v
                .as_u64()
                .ok_or_else(|| bad_request("max_tokens must be a positive integer"))?
                as usize;
            if n == 0 {
                return Err(bad_request("max_tokens must be at least 1"));
            }
            if n > state.max_tokens {
                return Err(bad_request(format!(
                    "max_tokens {n} is above this server's limit of {}",
                    state.max_tokens
                )));
            }
            n.min(room)
        }
    };
    Ok((cfg, max_tokens))
}

/// Queue a job; a full queue is 503.
fn submit(
    state: &AppState,
    prompt: Vec<u32>,
    max_tokens: usize,
    sampler: SamplerConfig,
) -> Result<mpsc::Receiver<Event>, Response> {
    let (tx, rx) = mpsc::channel(256);
    let job = Job {
        prompt,
        max_tokens,
        sampler,
        stop: state.stop.clone(),
        events: tx,
    };
    match state.jobs.try_send(job) {
        Ok(()) => Ok(rx),
        Err(mpsc::error::TrySendError::Full(_)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "too many requests are waiting for the model; retry later",
        )),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the model worker has stopped",
        )),
    }
}

/// OpenAI message content (a string, or an array of text parts) as text.
fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// OpenAI messages in the shape the GPT-OSS template reads (`thinking` for reasoning,
/// tool calls with parsed arguments).
fn template_messages(messages: &[Value]) -> Result<Value, Response> {
    let mut out = Vec::new();
    for m in messages {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_request("every message needs a string role"))?;
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(bad_request(format!("unknown message role '{role}'")));
        }
        let mut o = json!({"role": role, "content": m.get("content").map(content_text).unwrap_or_default()});
        if let Some(r) = m.get("reasoning_content").and_then(Value::as_str) {
            o["thinking"] = json!(r);
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let f = c.get("function").cloned().unwrap_or(json!({}));
                    let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                    json!({"name": f.get("name").cloned().unwrap_or(json!("")),
                           "arguments": serde_json::from_str::<Value>(args).unwrap_or(json!(args))})
                })
                .collect();
            o["tool_calls"] = json!(calls);
        }
        if let Some(n) = m.get("name") {
            o["name"] = n.clone();
        }
        if let Some(id) = m.get("tool_call_id") {
            o["tool_call_id"] = id.clone();
        }
        out.push(o);
    }
    Ok(Value::Array(out))
}

/// Splits the streamed Harmony reply into OpenAI deltas.
struct ReplyParser {
    parser: Option<HarmonyStreamParser>,
    raw: StreamDecoder,
    raw_text: String,
    emitted: bool,
    tool_calls: Vec<(String, String, String)>, // (id, name, arguments)
}

/// One piece of the reply.
enum Delta {
    Content(String),
    Reasoning(String),
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolArgs {
        index: usize,
        text: String,
    },
}

impl ReplyParser {
    fn new(tok: &Tokenizer) -> ReplyParser {
        ReplyParser {
            parser: HarmonyStreamParser::with_role(tok, Some("assistant")).ok(),
            raw: StreamDecoder::new(),
            raw_text: String::new(),
            emitted: false,
            tool_calls: Vec::new(),
        }
    }

    fn events(&mut self, evs: Vec<HarmonyEvent>, out: &mut Vec<Delta>) {
        for ev in evs {
            match ev {
                HarmonyEvent::MessageStart {
                    recipient: Some(r), ..
                } if !matches!(r.as_str(), "assistant" | "user" | "all") => {
                    let name = r.strip_prefix("functions.").unwrap_or(&r).to_string();
                    let id = format!("call_{}", self.tool_calls.len());
                    self.tool_calls
                        .push((id.clone(), name.clone(), String::new()));
                    out.push(Delta::ToolStart {
                        index: self.tool_calls.len() - 1,
                        id,
                        name,
                    });
                    self.emitted = true;
                }
                HarmonyEvent::Delta {
                    channel,
                    recipient,
                    text,
                } => {
                    if text.is_empty() {
                        continue;
                    }
                    self.emitted = true;
                    if recipient.is_some() && !self.tool_calls.is_empty() {
                        let i = self.tool_calls.len() - 1;
                        self.tool_calls[i].2 += &text;
                        out.push(Delta::ToolArgs { index: i, text });
                    } else if channel.as_deref() == Some("analysis") {
                        out.push(Delta::Reasoning(text));
                    } else {
                        out.push(Delta::Content(text));
                    }
                }
                _ => {}
            }
        }
    }

    fn push(&mut self, tok: &Tokenizer, id: u32) -> Vec<Delta> {
        let mut out = Vec::new();
        if !tok.is_special(id)
            && let Ok(s) = self.raw.push(tok, id)
        {
            self.raw_text += &s;
        }
        let evs = match &mut self.parser {
            Some(p) => p.push(tok, id).unwrap_or_default(),
            None => Vec::new(),
        };
        self.events(evs, &mut out);
        out
    }

    /// Remaining deltas; output that was not Harmony at all comes back as plain content.
    fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        let evs = self.parser.as_mut().map(|p| p.finish()).unwrap_or_default();
        self.events(evs, &mut out);
        self.raw_text += &self.raw.finish();
        if !self.emitted && !self.raw_text.is_empty() {
            out.push(Delta::Content(std::mem::take(&mut self.raw_text)));
            self.emitted = true;
        }
        out
    }
}

fn delta_json(d: &Delta) -> Value {
    match d {
        Delta::Content(t) => json!({"content": t}),
        Delta::Reasoning(t) => json!({"reasoning_content": t}),
        Delta::ToolStart { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        Delta::ToolArgs { index, text } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
        }
    }
}

async fn chat_completions(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_key(&state, &headers) {
        return r;
    }
    let req = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(messages) = req
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return bad_request("'messages' must be a non-empty array");
    };
    let Some(template) = &state.template else {
        return bad_request("the model has no chat template; use /v1/completions");
    };
    let msgs = match template_messages(messages) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut opts = ChatOptions::default();
    if let Some(e) = req.get("reasoning_effort").and_then(Value::as_str) {
        match e.parse::<ReasoningEffort>() {
            Ok(e) => opts.reasoning_effort = Some(e),
            Err(_) => {
                return bad_request(format!("reasoning_effort '{e}' is not low, medium or high"));
            }
        }
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        opts.tools = tools.clone();
    }
    let text = match template.render_json(&msgs, &opts) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("{e}")),
    };
    let prompt = state.tokenizer.encode(&text, true);
    let (cfg, max_tokens) = match sampling(&req, &state, prompt.len()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let rx = match submit(&state, prompt, max_tokens, cfg) {
        Ok(rx) => rx,
        Err(r) => return r,
    };
    let id = request_id("chatcmpl");
    if stream {
        chat_stream(state, rx, id, include_usage).into_response()
    } else {
        chat_whole(state, rx, id).await
    }
}

fn finish_reason(stopped: bool, tools: bool) -> &'static str {
    if tools {
        "tool_calls"
    } else if stopped {
        "stop"
    } else {
        "length"
    }
}

async fn chat_whole(state: Shared, mut rx: mpsc::Receiver<Event>, id: String) -> Response {
    let mut p = ReplyParser::new(&state.tokenizer);
    let (mut content, mut reasoning) = (String::new(), String::new());
    let collect = |ds: Vec<Delta>, content: &mut String, reasoning: &mut String| {
        for d in ds {
            match d {
                Delta::Content(t) => *content += &t,
                Delta::Reasoning(t) => *reasoning += &t,
                _ => {}
            }
        }
    };
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => collect(p.push(&state.tokenizer, t), &mut content, &mut reasoning),
            Event::Error(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e),
            Event::Done {
                prompt_tokens,
                completion_tokens,
                stopped,
            } => {
                collect(p.finish(), &mut content, &mut reasoning);
                let calls: Vec<Value> = p
                    .tool_calls
                    .iter()
                    .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
                    .collect();
                let mut message = json!({"role": "assistant", "content": content});
                if !reasoning.is_empty() {
                    message["reasoning_content"] = json!(reasoning);
                }
                if !calls.is_empty() {
                    message["tool_calls"] = json!(calls);
                }
                let body = json!({
                    "id": id, "object": "chat.completion", "created": now(), "model": state.model_id,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stopped, !calls.is_empty())}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                });
                return axum::Json(body).into_response();
            }
        }
    }
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the model worker stopped mid-request",
    )
}

fn chat_stream(
    state: Shared,
    mut rx: mpsc::Receiver<Event>,
    id: String,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let (tx, out) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let created = now();
        let chunk = |delta: Value, finish: Option<&str>| {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": state.model_id,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            SseEvent::default().data(v.to_string())
        };
        let mut p = ReplyParser::new(&state.tokenizer);
        if tx
            .send(chunk(json!({"role": "assistant", "content": ""}), None))
            .await
            .is_err()
        {
            return;
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token(t) => {
                    for d in p.push(&state.tokenizer, t) {
                        // A failed send means the client disconnected: dropping `rx` then
                        // stops the worker at its next token.
                        if tx.send(chunk(delta_json(&d), None)).await.is_err() {
                            return;
                        }
                    }
                }
                Event::Error(e) => {
                    let v = json!({"error": {"message": e, "type": "server_error"}});
                    let _ = tx.send(SseEvent::default().data(v.to_string())).await;
                    return;
                }
                Event::Done {
                    prompt_tokens,
                    completion_tokens,
                    stopped,
                } => {
                    for d in p.finish() {
                        let _ = tx.send(chunk(delta_json(&d), None)).await;
                    }
                    let _ = tx
                        .send(chunk(
                            json!({}),
                            Some(finish_reason(stopped, !p.tool_calls.is_empty())),
                        ))
                        .await;
                    if include_usage {
                        let v = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                       "model": state.model_id, "choices": [],
                                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                                 "total_tokens": prompt_tokens + completion_tokens}});
                        let _ = tx.send(SseEvent::default().data(v.to_string())).await;
                    }
                    let _ = tx.send(SseEvent::default().data("[DONE]")).await;
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|e| (Ok(e), out))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn completions(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_key(&state, &headers) {
        return r;
    }
    let req = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let prompt = match req.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => return bad_request("'prompt' must be a string"),
    };
    let ids = state.tokenizer.encode(&prompt, true);
    if ids.is_empty() {
        return bad_request("the prompt is empty");
    }
    let (cfg, max_tokens) = match sampling(&req, &state, ids.len()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut rx = match submit(&state, ids, max_tokens, cfg) {
        Ok(rx) => rx,
        Err(r) => return r,
    };
    let id = request_id("cmpl");
    let created = now();
    if stream {
        let (tx, out) = mpsc::channel::<SseEvent>(64);
        tokio::spawn(async move {
            let mut dec = StreamDecoder::new();
            let chunk = |text: String, finish: Option<&str>| {
                let v = json!({"id": id, "object": "text_completion", "created": created, "model": state.model_id,
                               "choices": [{"index": 0, "text": text, "finish_reason": finish}]});
                SseEvent::default().data(v.to_string())
            };
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Token(t) => {
                        let s = dec.push(&state.tokenizer, t).unwrap_or_default();
                        if !s.is_empty() && tx.send(chunk(s, None)).await.is_err() {
                            return;
                        }
                    }
                    Event::Error(e) => {
                        let v = json!({"error": {"message": e, "type": "server_error"}});
                        let _ = tx.send(SseEvent::default().data(v.to_string())).await;
                        return;
                    }
                    Event::Done { stopped, .. } => {
                        let _ = tx
                            .send(chunk(
                                dec.finish(),
                                Some(if stopped { "stop" } else { "length" }),
                            ))
                            .await;
                        let _ = tx.send(SseEvent::default().data("[DONE]")).await;
                        return;
                    }
                }
            }
        });
        let s = futures_util::stream::unfold(out, |mut out| async move {
            out.recv()
                .await
                .map(|e| (Ok::<_, std::convert::Infallible>(e), out))
        });
        return Sse::new(s).keep_alive(KeepAlive::default()).into_response();
    }
    let mut toks = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => toks.push(t),
            Event::Error(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e),
            Event::Done {
                prompt_tokens,
                completion_tokens,
                stopped,
            } => {
                let text = state.tokenizer.decode(&toks).unwrap_or_default();
                return axum::Json(json!({
                    "id": id, "object": "text_completion", "created": created, "model": state.model_id,
                    "choices": [{"index": 0, "text": text, "finish_reason": if stopped { "stop" } else { "length" }}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                }))
                .into_response();
            }
        }
    }
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the model worker stopped mid-request",
    )
}

async fn models(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = check_key(&state, &headers) {
        return r;
    }
    axum::Json(json!({"object": "list", "data": [
        {"id": state.model_id, "object": "model", "created": now(), "owned_by": "gptoss-rs"}]}))
    .into_response()
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Run `gptoss serve`.
pub fn run(args: Args) -> Result<ExitCode> {
    let gguf = gguf_format::GgufFile::open(&args.model)
        .with_context(|| format!("opening {}", args.model.display()))?;
    let tokenizer = Tokenizer::from_gguf(gguf.metadata())?;
    let template = match ChatTemplate::from_tokenizer(&tokenizer) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("no chat template: {e}; /v1/chat/completions is disabled");
            None
        }
    };
    let stop = tokenizer.eog_tokens();
    drop(gguf);
    if args.ctx_size < 2 || args.max_tokens == 0 || args.queue == 0 {
        bail!("--ctx-size must be at least 2, --max-tokens and --queue at least 1");
    }
    let (jobs_tx, jobs_rx) = mpsc::channel(args.queue);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (path, backend) = (args.model.clone(), args.backend.clone());
    let gpus = args.gpus.clone();
    std::thread::Builder::new()
        .name("model-worker".into())
        .spawn(move || {
            let job = WorkerJob {
                path,
                jobs: jobs_rx,
                ready: ready_tx.clone(),
            };
            if let Err(e) = crate::backends::with_backend_gpus(&backend, gpus.as_deref(), job) {
                let _ = ready_tx.send(Err(format!("{e:#}")));
            }
        })?;
    let ready = ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the model worker exited before loading the model"))?
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", args.model.display()))?;
    let ctx_size = args.ctx_size.min(ready.context_length);
    let model_id = args.alias.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into())
    });
    let state = Arc::new(AppState {
        tokenizer,
        template,
        jobs: jobs_tx,
        model_id,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        ctx_size,
        max_tokens: args.max_tokens,
        stop,
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(args.max_body))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .or_else(|_| {
                use std::net::ToSocketAddrs;
                format!("{}:{}", args.host, args.port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))
            })
            .with_context(|| format!("bad --host {}", args.host))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        // The tests and scripts read this line to find the port.
        println!(
            "listening on http://{local} (model {}, backend {})",
            args.model.display(),
            ready.backend
        );
        use std::io::Write;
        std::io::stdout().flush().ok();
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
