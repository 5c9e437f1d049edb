//! Harmony output parsing: whole completions, tool calls in both header orders, truncation
//! anywhere, and the streaming parser's deltas, on the real and the renumbered vocabulary.

use std::path::PathBuf;
use std::sync::OnceLock;

use gptoss_model::harmony::{
    HarmonyEvent, HarmonyOutput, HarmonyStreamParser, MessageEnd, parse_text, parse_tokens,
};
use gptoss_model::tokenizer::Tokenizer;

fn load(rel: &str) -> Tokenizer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(rel);
    let file =
        gguf_format::GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(file.metadata()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vocabularies() -> [&'static Tokenizer; 2] {
    static REAL: OnceLock<Tokenizer> = OnceLock::new();
    static TINY: OnceLock<Tokenizer> = OnceLock::new();
    [
        REAL.get_or_init(|| load("o200k/o200k_harmony-vocab.gguf")),
        TINY.get_or_init(|| load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf")),
    ]
}

const ANSWER: &str = "<|channel|>analysis<|message|>The user greets; reply briefly.<|end|>\
<|start|>assistant<|channel|>final<|message|>Bonjour ! 你好 👋🏽<|return|>";

#[test]
fn reasoning_and_answer() {
    for tok in vocabularies() {
        let out = parse_text(tok, ANSWER).expect("parses");
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.analysis(), "The user greets; reply briefly.");
        assert_eq!(out.final_text(), Some("Bonjour ! 你好 👋🏽"));
        assert_eq!(out.messages[0].end, Some(MessageEnd::End));
        assert_eq!(out.messages[1].end, Some(MessageEnd::Return));
        assert!(out.messages.iter().all(|m| m.role == "assistant"));
        assert!(out.tool_calls().is_empty());
        assert!(!out.truncated());
    }
}

#[test]
fn tool_calls_with_recipient_after_or_before_the_channel() {
    for tok in vocabularies() {
        // As the model writes it: recipient after the channel, <|constrain|> for the type.
        let text = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary \
                    to=functions.get_weather <|constrain|>json<|message|>{\"location\": \"Paris\"}<|call|>";
        let out = parse_text(tok, text).expect("parses");
        let calls = out.tool_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].recipient, "functions.get_weather");
        assert_eq!(calls[0].arguments, "{\"location\": \"Paris\"}");
        assert_eq!(calls[0].content_type.as_deref(), Some("json"));
        assert!(calls[0].complete);
        assert_eq!(out.messages[1].channel.as_deref(), Some("commentary"));
        assert_eq!(out.messages[1].end, Some(MessageEnd::Call));
        assert_eq!(out.analysis(), "Need the weather.");
        assert_eq!(out.final_text(), None);

        // As the chat template renders history: recipient first, bare content type.
        let text = " to=functions.lookup<|channel|>commentary json<|message|>{\"q\": 1}<|call|>";
        let out = parse_text(tok, text).expect("parses");
        let calls = out.tool_calls();
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("lookup", "{\"q\": 1}")
        );
        assert_eq!(calls[0].content_type.as_deref(), Some("json"));
        assert_eq!(out.messages[0].role, "assistant");
    }
}

#[test]
fn truncated_output_keeps_what_was_complete() {
    for tok in vocabularies() {
        let ids = tok.encode(ANSWER, true);
        // Cut after every token: never an error, never more text than was generated, and the
        // reasoning is whole once its <|end|> is in.
        let analysis_end = tok
            .encode(
                "<|channel|>analysis<|message|>The user greets; reply briefly.<|end|>",
                true,
            )
            .len();
        for cut in 0..ids.len() {
            let out = parse_tokens(tok, &ids[..cut]).expect("parses");
            let full = ["The user greets; reply briefly.", "Bonjour ! 你好 👋🏽"];
            for (m, whole) in out.messages.iter().zip(full) {
                // A character cut in half comes out as U+FFFD at the end, nothing else is invented.
                assert!(
                    whole.starts_with(m.content.trim_end_matches('\u{fffd}')),
                    "cut {cut}: {out:?}"
                );
            }
            assert!(out.messages.len() <= 2, "cut {cut}: {out:?}");
            if cut >= analysis_end {
                assert_eq!(
                    out.analysis(),
                    "The user greets; reply briefly.",
                    "cut {cut}"
                );
            }
            if cut < ids.len() && cut > 2 {
                assert!(out.truncated() || cut == analysis_end, "cut {cut}: {out:?}");
            }
        }
        let out = parse_text(tok, "<|channel|>analysis<|message|>I am thin").expect("parses");
        assert!(out.truncated());
        assert_eq!(out.analysis(), "I am thin");
        // A tool call cut off mid-arguments is reported as incomplete.
        let out = parse_text(
            tok,
            "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"a\":",
        )
        .expect("parses");
        let calls = out.tool_calls();
        assert_eq!(calls.len(), 1);
        assert!(!calls[0].complete);
        assert_eq!(calls[0].arguments, "{\"a\":");
    }
}

#[test]
fn plain_text_without_harmony_headers_is_kept() {
    for tok in vocabularies() {
        let out = parse_text(tok, "Just text.<|return|>").expect("parses");
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.messages[0].content, "Just text.");
        assert_eq!(out.messages[0].end, Some(MessageEnd::Return));
        // Anything after the end of generation is ignored.
        let out = parse_text(
            tok,
            "<|channel|>final<|message|>A<|return|>garbage<|start|>x",
        )
        .expect("parses");
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.final_text(), Some("A"));
    }
}

#[test]
fn stream_deltas_rebuild_the_messages() {
    for tok in vocabularies() {
        let text = ANSWER.to_string();
        let ids = tok.encode(&text, true);
        let mut parser = HarmonyStreamParser::new(tok).expect("harmony vocabulary");
        let mut events = Vec::new();
        for &id in &ids {
            events.extend(parser.push(tok, id).expect("in range"));
        }
        assert!(parser.is_done());
        events.extend(parser.finish());
        let mut analysis = String::new();
        let mut answer = String::new();
        let mut starts = 0;
        let mut ends = Vec::new();
        for e in &events {
            match e {
                HarmonyEvent::MessageStart { role, .. } => {
                    assert_eq!(role, "assistant");
                    starts += 1;
                }
                HarmonyEvent::Delta { channel, text, .. } => {
                    assert!(
                        !text.contains('\u{fffd}'),
                        "delta split a character: {text:?}"
                    );
                    match channel.as_deref() {
                        Some("analysis") => analysis.push_str(text),
                        Some("final") => answer.push_str(text),
                        other => panic!("unexpected channel {other:?}"),
                    }
                }
                HarmonyEvent::MessageEnd(m) => ends.push(m.clone()),
            }
        }
        assert_eq!(starts, 2);
        assert_eq!(analysis, "The user greets; reply briefly.");
        assert_eq!(answer, "Bonjour ! 你好 👋🏽");
        assert_eq!(
            HarmonyOutput { messages: ends },
            parse_text(tok, &text).expect("parses")
        );
    }
}

#[test]
fn rendered_training_turn_parses_back() {
    // The chat template's own rendering of an assistant turn (reasoning + answer), parsed back.
    use gptoss_model::chat::{ChatMessage, ChatOptions, ChatTemplate};
    let tok = vocabularies()[1];
    let template = ChatTemplate::from_tokenizer(tok).expect("template");
    let mut reply = ChatMessage::assistant("4, of course.");
    reply.thinking = Some("Simple arithmetic.".into());
    let options = ChatOptions {
        add_generation_prompt: false,
        ..ChatOptions::default()
    };
    let text = template
        .render(&[ChatMessage::user("2+2?"), reply], &options)
        .expect("renders");
    let generated = text
        .split_once("<|end|><|start|>assistant")
        .expect("assistant turn")
        .1;
    let out = parse_text(tok, generated).expect("parses");
    assert_eq!(out.analysis(), "Simple arithmetic.");
    assert_eq!(out.final_text(), Some("4, of course."));
}
