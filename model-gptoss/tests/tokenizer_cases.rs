//! The tokenizer against tiktoken: every case of the shared fixtures, id for id, both ways.

use std::path::PathBuf;

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

/// (text, ids) of a `tokenizer_cases.json`.
fn cases(rel: &str) -> Vec<(String, Vec<u32>)> {
    let path = fixtures().join(rel);
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("valid JSON");
    assert_eq!(
        json["allowed_special"], "all",
        "the cases were made with every special token allowed"
    );
    let cases: Vec<(String, Vec<u32>)> = json["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .map(|c| {
            let text = c["text"].as_str().expect("text").to_string();
            let ids = c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|i| i.as_u64().expect("id") as u32)
                .collect();
            (text, ids)
        })
        .collect();
    assert!(
        cases.len() >= 10,
        "{rel}: suspiciously few cases ({})",
        cases.len()
    );
    cases
}

fn check_all(tok: &Tokenizer, cases: &[(String, Vec<u32>)]) {
    let mut failures = Vec::new();
    for (text, want) in cases {
        let got = tok.encode(text, true);
        if &got != want {
            failures.push(format!(
                "encode {text:?}\n   got  {got:?}\n   want {want:?}"
            ));
        }
        let back = tok.decode(want).expect("ids in range");
        if &back != text {
            failures.push(format!(
                "decode {want:?}\n   got  {back:?}\n   want {text:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn o200k_harmony_matches_tiktoken_on_every_case() {
    let tok = load("o200k/o200k_harmony-vocab.gguf");
    assert_eq!(tok.vocab_size(), 201088);
    check_all(&tok, &cases("o200k/tokenizer_cases.json"));
}

#[test]
fn cut_vocabulary_matches_tiktoken_on_every_case() {
    let tok = load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    assert_eq!(tok.vocab_size(), 8192);
    check_all(&tok, &cases("gpt-oss-tiny/tokenizer_cases.json"));
}

#[test]
fn special_tokens_are_found_by_text_in_both_vocabularies() {
    let real = load("o200k/o200k_harmony-vocab.gguf");
    let tiny = load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    // Ids from tiktoken's o200k_harmony and from the fixture README (renumbered from 7102).
    assert_eq!(real.find_token("<|start|>"), Some(200006));
    assert_eq!(tiny.find_token("<|start|>"), Some(7110));
    assert_eq!(real.eog_tokens(), vec![199999, 200002, 200012]);
    for tok in [&real, &tiny] {
        let eog = tok.eog_tokens();
        assert_eq!(eog.len(), 3);
        for t in ["<|return|>", "<|call|>", "<|endoftext|>"] {
            let id = tok.find_token(t).expect(t);
            assert!(eog.contains(&id) && tok.is_eog(id), "{t}");
            assert!(tok.is_special(id));
            assert_eq!(tok.token_to_piece(id).as_deref(), Some(t));
        }
        assert!(!tok.is_eog(tok.find_token("<|start|>").expect("start")));
        // Without special parsing the same text is ordinary characters.
        let plain = tok.encode("<|start|>", false);
        assert!(
            plain.len() > 1 && plain.iter().all(|&id| !tok.is_special(id)),
            "{plain:?}"
        );
        assert_eq!(tok.decode(&plain).expect("decode"), "<|start|>");
        assert_eq!(
            tok.encode("<|start|>", true),
            vec![tok.find_token("<|start|>").expect("start")]
        );
    }
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let tok = load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    let err = tok.decode(&[1, 8192]).expect_err("8192 is out of range");
    assert!(err.to_string().contains("8192"), "{err}");
    assert!(tok.token_bytes(u32::MAX).is_none());
}

#[test]
fn loading_the_full_vocabulary_is_fast() {
    let path = fixtures().join("o200k/o200k_harmony-vocab.gguf");
    let t0 = std::time::Instant::now();
    let file = gguf_format::GgufFile::open(&path).expect("open");
    let t1 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(file.metadata()).expect("tokenizer");
    let t2 = std::time::Instant::now();
    assert_eq!(tok.merge_count(), 446189);
    eprintln!(
        "o200k: GGUF open {:?}, tokenizer build {:?}",
        t1 - t0,
        t2 - t1
    );
    // Generous: a shared 2-core CI machine under load; the point is to catch a quadratic blow-up.
    assert!(
        t2 - t1 < std::time::Duration::from_secs(10),
        "tokenizer build took {:?}",
        t2 - t1
    );
}
