//! Chat rendering against transformers' `apply_chat_template`: the shared fixture (real o200k
//! ids) and tests/data/chat_extra_cases.json (tools, reasoning efforts, tool calls, built-in
//! tools, training render; made by tests/data/make_chat_cases.py), text and ids exact.

use std::path::PathBuf;

use chrono::NaiveDate;
use gptoss_model::chat::{ChatMessage, ChatOptions, ChatTemplate, ChatToolCall, ReasoningEffort};
use gptoss_model::tokenizer::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn load(rel: &str) -> Tokenizer {
    let path = fixtures().join(rel);
    let file =
        gguf_format::GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(file.metadata()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: PathBuf) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|i| i.as_u64().expect("id") as u32)
        .collect()
}

/// The day the fixtures were rendered (the template prints it).
fn fixture_day() -> ChatOptions {
    ChatOptions {
        now: Some(
            NaiveDate::from_ymd_opt(2026, 11, 26)
                .expect("date")
                .and_hms_opt(12, 0, 0)
                .expect("time"),
        ),
        ..ChatOptions::default()
    }
}

#[test]
fn shared_chat_cases_render_and_tokenize_exactly() {
    let tok = load("o200k/o200k_harmony-vocab.gguf");
    let template = ChatTemplate::from_tokenizer(&tok).expect("template compiles");
    let cases = read_json(fixtures().join("o200k/chat_cases.json"));
    let cases = cases.as_array().expect("array");
    assert!(!cases.is_empty());
    for case in cases {
        // Through the JSON entry point ...
        let text = template
            .render_json(&case["messages"], &fixture_day())
            .expect("renders");
        assert_eq!(text, case["rendered"].as_str().expect("rendered"));
        assert_eq!(
            tok.encode(&text, true),
            ids(&case["ids"]),
            "ids of {text:?}"
        );
        // ... and through typed messages.
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                ChatMessage::new(
                    m["role"].as_str().expect("role"),
                    m["content"].as_str().expect("content"),
                )
            })
            .collect();
        assert_eq!(
            template.render(&messages, &fixture_day()).expect("renders"),
            text
        );
    }
}

#[test]
fn extra_chat_cases_match_transformers() {
    let tok = load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    let template = ChatTemplate::from_tokenizer(&tok).expect("template compiles");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_extra_cases.json");
    let data = read_json(path);
    let cases = data["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let kw = &case["kwargs"];
        let mut options = fixture_day();
        options.add_generation_prompt = case["add_generation_prompt"].as_bool().expect("flag");
        if let Some(r) = kw["reasoning_effort"].as_str() {
            options.reasoning_effort = Some(r.parse().expect("effort"));
        }
        if let Some(tools) = kw["tools"].as_array() {
            options.tools = tools.clone();
        }
        if let Some(b) = kw["builtin_tools"].as_array() {
            options.builtin_tools = b
                .iter()
                .map(|s| s.as_str().expect("name").to_string())
                .collect();
        }
        options.model_identity = kw["model_identity"].as_str().map(str::to_string);
        let text = template
            .render_json(&case["messages"], &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = case["rendered"].as_str().expect("rendered");
        assert_eq!(text, want, "{name}: rendered text differs");
        assert_eq!(
            tok.encode(&text, true),
            ids(&case["ids_tiny"]),
            "{name}: ids differ"
        );
    }
}

#[test]
fn typed_tool_call_and_reasoning_efforts() {
    let tok = load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    let template = ChatTemplate::from_tokenizer(&tok).expect("template compiles");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_extra_cases.json");
    let data = read_json(path);
    let case = data["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "tool_call_round_trip")
        .expect("case");
    // The same conversation through the typed API: tool calls as name + arguments object.
    let mut call = ChatMessage::assistant("");
    call.thinking = Some("I should call get_weather.".into());
    call.tool_calls.push(ChatToolCall {
        name: "get_weather".into(),
        arguments: serde_json::json!({"location": "Paris", "unit": "celsius", "note": "é\"x"}),
    });
    let messages = vec![
        ChatMessage::user("Weather in Paris?"),
        call,
        ChatMessage::tool("{\"temperature\": 21, \"sky\": \"clear\"}"),
    ];
    let mut options = fixture_day();
    options.tools = case["kwargs"]["tools"].as_array().expect("tools").clone();
    assert_eq!(
        template.render(&messages, &options).expect("renders"),
        case["rendered"].as_str().expect("text")
    );

    for effort in [
        ReasoningEffort::Low,
        ReasoningEffort::Medium,
        ReasoningEffort::High,
    ] {
        let mut options = fixture_day();
        options.reasoning_effort = Some(effort);
        let text = template
            .render(&[ChatMessage::user("x")], &options)
            .expect("renders");
        assert!(text.contains(&format!("\nReasoning: {effort}\n")), "{text}");
    }
    assert!("extreme".parse::<ReasoningEffort>().is_err());
}

#[test]
fn date_is_injected_and_template_errors_are_reported() {
    let tok = load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    let template = ChatTemplate::from_tokenizer(&tok).expect("template compiles");
    let options = ChatOptions {
        now: Some(
            NaiveDate::from_ymd_opt(1999, 12, 31)
                .expect("date")
                .and_hms_opt(0, 0, 0)
                .expect("time"),
        ),
        ..ChatOptions::default()
    };
    let text = template
        .render(&[ChatMessage::user("x")], &options)
        .expect("renders");
    assert!(text.contains("Current date: 1999-12-31\n"), "{text}");
    // Without a date the template gets today's.
    let today = chrono::Local::now().format("%Y-%m-%d").to_string();
    let text = template
        .render(&[ChatMessage::user("x")], &ChatOptions::default())
        .expect("renders");
    assert!(text.contains(&format!("Current date: {today}\n")), "{text}");
    // The template's raise_exception surfaces as an error naming the problem.
    let bad = vec![
        ChatMessage::user("x"),
        ChatMessage::tool("result without a call"),
    ];
    let err = template
        .render(&bad, &options)
        .expect_err("tool message without a tool call");
    assert!(
        err.to_string()
            .contains("no previous assistant message with a tool call"),
        "{err}"
    );
    // A broken template is a compile error, not a panic.
    assert!(ChatTemplate::new("{% if %}").is_err());
}
