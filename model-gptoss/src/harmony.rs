//! Parsing what GPT-OSS generates: Harmony messages, split into reasoning (`analysis`), answer
//! (`final`) and tool calls (`commentary` addressed `to=functions.NAME`).
//!
//! A Harmony completion, after a prompt that ends in `<|start|>assistant`, looks like
//!
//! ```text
//! <|channel|>analysis<|message|>REASONING<|end|>
//! <|start|>assistant<|channel|>final<|message|>ANSWER<|return|>
//! ```
//!
//! or, for a tool call, `<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>`
//! (the recipient may also stand before the channel). [`HarmonyStreamParser`] takes tokens one
//! at a time and reports channel-tagged text as soon as it is complete UTF-8, for servers that
//! stream; [`parse_tokens`] runs it over a whole completion. Output cut off anywhere (by a token
//! limit) parses into what was complete plus a message marked [`MessageEnd::Truncated`].
//!
//! Special tokens are looked up by their text in the model's vocabulary, never by fixed ids.

use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

/// How a Harmony message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEnd {
    /// `<|end|>`: the message is over, another may follow.
    End,
    /// `<|return|>`: the assistant's turn is over.
    Return,
    /// `<|call|>`: a tool call; generation stops for the tool's result.
    Call,
    /// Another end-of-generation token (e.g. `<|endoftext|>`), by id.
    Other(u32),
    /// The tokens ran out before the message ended.
    Truncated,
}

/// One parsed Harmony message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HarmonyMessage {
    /// Author (`assistant`, or `functions.NAME` for a tool's reply).
    pub role: String,
    /// `analysis`, `commentary` or `final`; `None` if the header named none.
    pub channel: Option<String>,
    /// The `to=` recipient, e.g. `functions.get_weather`.
    pub recipient: Option<String>,
    /// The content type of a tool call (`json`, from `<|constrain|>json` or a bare `json`).
    pub content_type: Option<String>,
    /// The message text.
    pub content: String,
    /// How the message ended; `None` only while it is still being generated.
    pub end: Option<MessageEnd>,
}

/// A tool call found in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarmonyToolCall {
    /// The function name: the recipient without its `functions.` namespace (a built-in tool
    /// such as `browser.search` keeps its full name).
    pub name: String,
    /// The recipient as written.
    pub recipient: String,
    /// The arguments as generated (JSON text, normally).
    pub arguments: String,
    /// The declared content type, if any.
    pub content_type: Option<String>,
    /// False when the call was cut off before `<|call|>`.
    pub complete: bool,
}

/// A whole parsed completion.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HarmonyOutput {
    /// The messages in order.
    pub messages: Vec<HarmonyMessage>,
}

impl HarmonyOutput {
    /// The reasoning: the contents of all `analysis` messages, joined by newlines.
    pub fn analysis(&self) -> String {
        self.channel_texts("analysis")
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The answer: the content of the last `final` message, if there is one.
    pub fn final_text(&self) -> Option<&str> {
        self.channel_texts("final").last()
    }

    /// The tool calls: messages addressed to a recipient other than the user or assistant.
    pub fn tool_calls(&self) -> Vec<HarmonyToolCall> {
        self.messages
            .iter()
            .filter_map(|m| {
                let recipient = m.recipient.as_deref()?;
                if matches!(recipient, "assistant" | "user" | "all") {
                    return None;
                }
                Some(HarmonyToolCall {
                    name: recipient
                        .strip_prefix("functions.")
                        .unwrap_or(recipient)
                        .to_string(),
                    recipient: recipient.to_string(),
                    arguments: m.content.clone(),
                    content_type: m.content_type.clone(),
                    complete: m.end != Some(MessageEnd::Truncated),
                })
            })
            .collect()
    }

    /// True when the output was cut off inside a message.
    pub fn truncated(&self) -> bool {
        self.messages
            .last()
            .is_some_and(|m| m.end == Some(MessageEnd::Truncated))
    }

    fn channel_texts<'s>(&'s self, channel: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.messages
            .iter()
            .filter(move |m| m.channel.as_deref() == Some(channel) && m.recipient.is_none())
            .map(|m| m.content.as_str())
    }
}

/// What the stream parser reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HarmonyEvent {
    /// A message header is complete: its content follows.
    MessageStart {
        /// Author.
        role: String,
        /// Channel, if named.
        channel: Option<String>,
        /// `to=` recipient, if any.
        recipient: Option<String>,
        /// Declared content type, if any.
        content_type: Option<String>,
    },
    /// More content of the current message.
    Delta {
        /// The current message's channel.
        channel: Option<String>,
        /// The current message's recipient (set for tool-call arguments).
        recipient: Option<String>,
        /// The new text.
        text: String,
    },
    /// A message is complete (or cut off, at [`HarmonyStreamParser::finish`]).
    MessageEnd(HarmonyMessage),
}

/// Errors of Harmony parsing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarmonyError {
    /// The vocabulary lacks a Harmony special token.
    #[error("the vocabulary has no {0} token: not a Harmony (GPT-OSS) tokenizer")]
    MissingToken(&'static str),
    /// A token id outside the vocabulary.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The ids of the Harmony control tokens in one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarmonyTokens {
    /// `<|start|>`.
    pub start: u32,
    /// `<|end|>`.
    pub end: u32,
    /// `<|message|>`.
    pub message: u32,
    /// `<|channel|>`.
    pub channel: u32,
    /// `<|constrain|>`.
    pub constrain: u32,
    /// `<|return|>`.
    pub return_: u32,
    /// `<|call|>`.
    pub call: u32,
}

impl HarmonyTokens {
    /// Looks the tokens up by text.
    pub fn find(tokenizer: &Tokenizer) -> Result<HarmonyTokens, HarmonyError> {
        let get = |t: &'static str| tokenizer.find_token(t).ok_or(HarmonyError::MissingToken(t));
        Ok(HarmonyTokens {
            start: get("<|start|>")?,
            end: get("<|end|>")?,
            message: get("<|message|>")?,
            channel: get("<|channel|>")?,
            constrain: get("<|constrain|>")?,
            return_: get("<|return|>")?,
            call: get("<|call|>")?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a header (after `<|start|>`, or at the beginning).
    Header,
    /// Reading content (after `<|message|>`).
    Content,
    /// Between messages: after `<|end|>` or `<|call|>`, waiting for `<|start|>`.
    Between,
    /// After `<|return|>` or another end-of-generation token: everything else is ignored.
    Done,
}

/// Markers kept in the header text for the control tokens that structure a header.
const CHANNEL_MARK: &str = "<|channel|>";
const CONSTRAIN_MARK: &str = "<|constrain|>";

/// Parses Harmony output token by token.
///
/// Feed every generated token to [`push`](Self::push), then call [`finish`](Self::finish); the
/// events of both, in order, describe the whole output. The same tokenizer must be passed to
/// every call.
#[derive(Debug, Clone)]
pub struct HarmonyStreamParser {
    tokens: HarmonyTokens,
    state: State,
    /// Role of the next header when the prompt already wrote it (`<|start|>assistant`).
    pending_role: Option<String>,
    header: Vec<u8>,
    /// A `<|start|>` opened a header that has not reached `<|message|>` yet.
    opened: bool,
    current: HarmonyMessage,
    decoder: StreamDecoder,
    messages: Vec<HarmonyMessage>,
}

impl HarmonyStreamParser {
    /// A parser for a completion whose prompt ended with `<|start|>assistant` (the chat
    /// template's generation prompt): the first header has no role of its own.
    pub fn new(tokenizer: &Tokenizer) -> Result<HarmonyStreamParser, HarmonyError> {
        HarmonyStreamParser::with_role(tokenizer, Some("assistant"))
    }

    /// A parser whose first header's role is `role` if given, or is read from the output.
    pub fn with_role(
        tokenizer: &Tokenizer,
        role: Option<&str>,
    ) -> Result<HarmonyStreamParser, HarmonyError> {
        Ok(HarmonyStreamParser {
            tokens: HarmonyTokens::find(tokenizer)?,
            state: State::Header,
            pending_role: role.map(str::to_string),
            header: Vec::new(),
            opened: false,
            current: HarmonyMessage::default(),
            decoder: StreamDecoder::new(),
            messages: Vec::new(),
        })
    }

    /// True after `<|return|>` or another end-of-generation token.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The messages completed so far.
    pub fn messages(&self) -> &[HarmonyMessage] {
        &self.messages
    }

    /// Takes one generated token.
    pub fn push(
        &mut self,
        tokenizer: &Tokenizer,
        id: u32,
    ) -> Result<Vec<HarmonyEvent>, HarmonyError> {
        let t = self.tokens;
        let mut events = Vec::new();
        let bytes = tokenizer.token_bytes(id).ok_or(TokenizerError::UnknownId {
            id,
            vocab_size: tokenizer.vocab_size(),
        })?;
        let end_of_generation = id == t.return_ || tokenizer.is_eog(id) && id != t.call;
        match self.state {
            State::Done => {}
            State::Header | State::Between => {
                if id == t.message {
                    self.begin_content(&mut events);
                } else if id == t.start {
                    // A header that never got content: keep what it said as an empty message.
                    self.flush_header(MessageEnd::End, &mut events);
                    self.header.clear();
                    self.pending_role = None;
                    self.opened = true;
                    self.state = State::Header;
                } else if id == t.end || id == t.call || end_of_generation {
                    self.flush_header(end_kind(t, id), &mut events);
                    self.state = if end_of_generation {
                        State::Done
                    } else {
                        State::Between
                    };
                } else if id == t.channel {
                    self.state = State::Header;
                    self.header.extend_from_slice(CHANNEL_MARK.as_bytes());
                } else if id == t.constrain {
                    self.state = State::Header;
                    self.header.extend_from_slice(b" ");
                    self.header.extend_from_slice(CONSTRAIN_MARK.as_bytes());
                } else {
                    self.state = State::Header;
                    self.header.extend_from_slice(bytes);
                }
            }
            State::Content => {
                if id == t.end || id == t.call || end_of_generation {
                    self.end_message(end_kind(t, id), &mut events);
                    self.state = if end_of_generation {
                        State::Done
                    } else {
                        State::Between
                    };
                } else if id == t.start || id == t.channel {
                    // A new header without `<|end|>` first: end the message here.
                    self.end_message(MessageEnd::End, &mut events);
                    self.state = State::Header;
                    self.opened = id == t.start;
                    if id == t.channel {
                        // `<|channel|>` right after content continues the same author.
                        self.pending_role = Some(
                            self.messages
                                .last()
                                .map(|m| m.role.clone())
                                .unwrap_or_default(),
                        );
                        self.header.extend_from_slice(CHANNEL_MARK.as_bytes());
                    }
                } else {
                    let text = self.decoder.push_bytes(bytes);
                    self.emit_delta(text, &mut events);
                }
            }
        }
        Ok(events)
    }

    /// Ends the stream: a message still open is reported as [`MessageEnd::Truncated`].
    pub fn finish(&mut self) -> Vec<HarmonyEvent> {
        let mut events = Vec::new();
        match self.state {
            State::Content => self.end_message(MessageEnd::Truncated, &mut events),
            State::Header => self.flush_header(MessageEnd::Truncated, &mut events),
            State::Between | State::Done => {}
        }
        self.state = State::Done;
        events
    }

    /// Consumes the parser, returning every message.
    pub fn into_output(mut self) -> HarmonyOutput {
        self.finish();
        HarmonyOutput {
            messages: self.messages,
        }
    }

    fn begin_content(&mut self, events: &mut Vec<HarmonyEvent>) {
        let header = String::from_utf8_lossy(&self.header).into_owned();
        self.current = parse_header(self.pending_role.take(), &header);
        self.header.clear();
        self.opened = false;
        self.state = State::Content;
        events.push(HarmonyEvent::MessageStart {
            role: self.current.role.clone(),
            channel: self.current.channel.clone(),
            recipient: self.current.recipient.clone(),
            content_type: self.current.content_type.clone(),
        });
    }

    fn emit_delta(&mut self, text: String, events: &mut Vec<HarmonyEvent>) {
        if text.is_empty() {
            return;
        }
        self.current.content.push_str(&text);
        events.push(HarmonyEvent::Delta {
            channel: self.current.channel.clone(),
            recipient: self.current.recipient.clone(),
            text,
        });
    }

    fn end_message(&mut self, end: MessageEnd, events: &mut Vec<HarmonyEvent>) {
        let rest = self.decoder.finish();
        self.emit_delta(rest, events);
        let mut message = std::mem::take(&mut self.current);
        message.end = Some(end);
        self.messages.push(message.clone());
        events.push(HarmonyEvent::MessageEnd(message));
    }

    /// A header that ended without `<|message|>`. If it holds no header structure at all (plain
    /// text, as from a model that ignores Harmony), that text is kept as the content.
    fn flush_header(&mut self, end: MessageEnd, events: &mut Vec<HarmonyEvent>) {
        let header = String::from_utf8_lossy(&self.header).into_owned();
        self.header.clear();
        let opened = std::mem::take(&mut self.opened);
        if header.trim().is_empty() {
            if opened && end == MessageEnd::Truncated {
                // Cut off right after `<|start|>`: a message had begun.
                let message = HarmonyMessage {
                    end: Some(end),
                    ..HarmonyMessage::default()
                };
                self.messages.push(message.clone());
                events.push(HarmonyEvent::MessageEnd(message));
            }
            return;
        }
        let structured = header.contains(CHANNEL_MARK)
            || header.contains(CONSTRAIN_MARK)
            || header.contains(" to=");
        let mut message = if structured {
            parse_header(self.pending_role.take(), &header)
        } else if let Some(role) = self.pending_role.take() {
            HarmonyMessage {
                role,
                content: header,
                ..HarmonyMessage::default()
            }
        } else {
            // After `<|start|>` the first word is the role, the rest content-less header.
            parse_header(None, &header)
        };
        message.end = Some(end);
        if !message.content.is_empty() {
            events.push(HarmonyEvent::MessageStart {
                role: message.role.clone(),
                channel: None,
                recipient: None,
                content_type: None,
            });
            events.push(HarmonyEvent::Delta {
                channel: None,
                recipient: None,
                text: message.content.clone(),
            });
        }
        self.messages.push(message.clone());
        events.push(HarmonyEvent::MessageEnd(message));
    }
}

fn end_kind(t: HarmonyTokens, id: u32) -> MessageEnd {
    if id == t.end {
        MessageEnd::End
    } else if id == t.return_ {
        MessageEnd::Return
    } else if id == t.call {
        MessageEnd::Call
    } else {
        MessageEnd::Other(id)
    }
}

/// Reads a header such as `assistant to=functions.f<|channel|>commentary <|constrain|>json`.
fn parse_header(role: Option<String>, header: &str) -> HarmonyMessage {
    let (before, after) = match header.split_once(CHANNEL_MARK) {
        Some((b, a)) => (b, Some(a)),
        None => (header, None),
    };
    let mut message = HarmonyMessage {
        role: role.unwrap_or_default(),
        ..HarmonyMessage::default()
    };

    let take_word = |word: &str, message: &mut HarmonyMessage, channel_part: bool| {
        if let Some(r) = word.strip_prefix("to=") {
            message.recipient = Some(r.to_string());
        } else if let Some(c) = word.strip_prefix(CONSTRAIN_MARK) {
            message.content_type = Some(c.to_string());
        } else if channel_part && message.channel.is_none() {
            message.channel = Some(word.to_string());
        } else if !channel_part && message.role.is_empty() {
            message.role = word.to_string();
        } else if message.content_type.is_none() {
            message.content_type = Some(word.to_string());
        }
    };
    for word in before.split_whitespace() {
        take_word(word, &mut message, false);
    }
    if let Some(after) = after {
        // A channel name is one word; `<|constrain|>` may follow it with or without a space.
        let spaced = after
            .replace(CONSTRAIN_MARK, &format!(" {CONSTRAIN_MARK}"))
            .replace(CHANNEL_MARK, " ");
        for word in spaced.split_whitespace() {
            take_word(word, &mut message, true);
        }
        if message.channel.is_none() {
            message.channel = Some(String::new());
        }
    }
    message
}

/// Parses a whole completion given as token ids (generated after `<|start|>assistant`).
pub fn parse_tokens(tokenizer: &Tokenizer, ids: &[u32]) -> Result<HarmonyOutput, HarmonyError> {
    let mut parser = HarmonyStreamParser::new(tokenizer)?;
    for &id in ids {
        parser.push(tokenizer, id)?;
    }
    Ok(parser.into_output())
}

/// Parses a completion given as text with its special tokens written out (as
/// `Tokenizer::decode` prints them).
pub fn parse_text(tokenizer: &Tokenizer, text: &str) -> Result<HarmonyOutput, HarmonyError> {
    parse_tokens(tokenizer, &tokenizer.encode(text, true))
}
