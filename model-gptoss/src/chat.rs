//! Chat prompts: the GGUF's `tokenizer.chat_template` (Harmony for GPT-OSS) rendered with
//! minijinja, configured the way Hugging Face transformers renders it with Jinja2.
//!
//! transformers compiles chat templates with `trim_blocks` and `lstrip_blocks`, Python string
//! methods, a `tojson` filter that is Python's `json.dumps` (`", "` and `": "` separators, no
//! ASCII escaping, keys in insertion order), `raise_exception` and `strftime_now`. We supply the
//! same, with the clock injectable so that a rendered prompt is reproducible.

use std::fmt::Write as _;

use chrono::NaiveDateTime;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

/// How much the model should think before answering (Harmony's `Reasoning:` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReasoningEffort {
    /// `Reasoning: low`.
    Low,
    /// `Reasoning: medium` (what the template uses when none is given).
    #[default]
    Medium,
    /// `Reasoning: high`.
    High,
}

impl ReasoningEffort {
    /// The word the template prints.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

impl std::str::FromStr for ReasoningEffort {
    type Err = ChatError;
    fn from_str(s: &str) -> Result<Self, ChatError> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Ok(ReasoningEffort::Low),
            "medium" => Ok(ReasoningEffort::Medium),
            "high" => Ok(ReasoningEffort::High),
            _ => Err(ChatError::BadOption(format!(
                "reasoning effort '{s}' is not low, medium or high"
            ))),
        }
    }
}

impl std::fmt::Display for ReasoningEffort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tool call made by the assistant, as chat templates expect it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatToolCall {
    /// The function name (without the `functions.` namespace).
    pub name: String,
    /// The arguments as a JSON value (an object, normally). OpenAI-style APIs carry arguments as
    /// a JSON *string*: parse it first, or the template prints it as a quoted string.
    pub arguments: serde_json::Value,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the message (for an assistant message, its final answer).
    pub content: String,
    /// An assistant message's reasoning (Harmony's analysis channel); absent for others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// An assistant message's tool calls (the Harmony template renders the first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            thinking: None,
            tool_calls: Vec::new(),
        }
    }

    /// A `system` message (the Harmony template turns it into the developer instructions).
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }

    /// A `tool` message: the result of the preceding assistant tool call.
    pub fn tool(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("tool", content)
    }
}

/// Everything besides the messages that a chat template takes.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// End with the header of an assistant turn (`<|start|>assistant`), to generate the reply.
    pub add_generation_prompt: bool,
    /// `reasoning_effort`; `None` leaves it to the template's default (medium).
    pub reasoning_effort: Option<ReasoningEffort>,
    /// The time `strftime_now` reports; `None` is the local time of the call.
    pub now: Option<NaiveDateTime>,
    /// Function tools in the OpenAI format (`{"type": "function", "function": {"name": ...,
    /// "description": ..., "parameters": {...}}}`).
    pub tools: Vec<serde_json::Value>,
    /// Harmony built-in tools to announce: `"browser"` and/or `"python"`.
    pub builtin_tools: Vec<String>,
    /// Replaces the model identity line ("You are ChatGPT, ...").
    pub model_identity: Option<String>,
}

impl Default for ChatOptions {
    fn default() -> ChatOptions {
        ChatOptions {
            add_generation_prompt: true,
            reasoning_effort: None,
            now: None,
            tools: Vec::new(),
            builtin_tools: Vec::new(),
            model_identity: None,
        }
    }
}

/// Errors of chat rendering.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The model file has no `tokenizer.chat_template`.
    #[error("the model has no chat template (metadata key tokenizer.chat_template)")]
    NoTemplate,
    /// The template failed to compile or to render (including its own `raise_exception`).
    #[error("chat template: {0:#}")]
    Template(#[from] minijinja::Error),
    /// An option the template cannot take.
    #[error("chat option: {0}")]
    BadOption(String),
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles a Jinja chat template.
    pub fn new(source: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", py_tojson);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_string())?;
        Ok(ChatTemplate { env })
    }

    /// The chat template of a tokenizer loaded from GGUF.
    pub fn from_tokenizer(
        tokenizer: &crate::tokenizer::Tokenizer,
    ) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::new(tokenizer.chat_template().ok_or(ChatError::NoTemplate)?)
    }

    /// Renders messages into the prompt text (special tokens as text: encode it with
    /// `Tokenizer::encode(text, true)`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        options: &ChatOptions,
    ) -> Result<String, ChatError> {
        self.render_value(Value::from(Serde(messages)), options)
    }

    /// Renders messages given as JSON (an array of objects with `role`, `content`, and
    /// optionally `thinking` and `tool_calls`), for callers that carry OpenAI-style requests.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        options: &ChatOptions,
    ) -> Result<String, ChatError> {
        if !messages.is_array() {
            return Err(ChatError::BadOption("messages must be a JSON array".into()));
        }
        self.render_value(Value::from(Serde(messages)), options)
    }

    fn render_value(&self, messages: Value, options: &ChatOptions) -> Result<String, ChatError> {
        let now = options
            .now
            .unwrap_or_else(|| chrono::Local::now().naive_local());
        let strftime_now = Value::from_function(move |format: String| -> Result<String, Error> {
            let mut out = String::new();
            // chrono reports an unknown directive as a formatting error rather than a panic here.
            write!(out, "{}", now.format(&format)).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: bad format string {format:?}"),
                )
            })?;
            Ok(out)
        });
        // Absent options stay undefined so that the template's own defaults apply, as when
        // transformers is called without them.
        let undefined = Value::UNDEFINED;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => options.add_generation_prompt,
            strftime_now => strftime_now,
            reasoning_effort => options.reasoning_effort.map_or(undefined.clone(), |r| Value::from(r.as_str())),
            model_identity => options.model_identity.as_deref().map_or(undefined.clone(), Value::from),
            tools => if options.tools.is_empty() { Value::from(()) } else { Value::from(Serde(&options.tools)) },
            builtin_tools => if options.builtin_tools.is_empty() { undefined } else { Value::from(Serde(&options.builtin_tools)) },
        };
        let template = self.env.get_template(TEMPLATE_NAME)?;
        Ok(template.render(ctx)?)
    }
}

/// Python's `json.dumps(value, ensure_ascii=False)`, which transformers installs as `tojson`
/// (minijinja's own escapes HTML characters and writes no spaces). `indent` is accepted.
fn py_tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Writes JSON the way Python's `json.dumps` does: `", "` / `": "` separators without indent,
/// `","` plus newlines with it; non-ASCII characters as themselves.
fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => out.push_str(&n.to_string()),
        J::String(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        J::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}
