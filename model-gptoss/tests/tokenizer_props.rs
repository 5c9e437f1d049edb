//! Property tests of the tokenizer on fresh random text: the o200k split against a backtracking
//! engine running tiktoken's exact pattern, whole encodings against tiktoken-rs (o200k_base),
//! round trips, the two BPE merge strategies, and the streaming decoder.

use std::path::PathBuf;
use std::sync::OnceLock;

use gptoss_model::tokenizer::{O200K_PATTERN, PreTokenizer, StreamDecoder, Tokenizer};
use proptest::prelude::*;

fn load(rel: &str) -> Tokenizer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(rel);
    let file =
        gguf_format::GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(file.metadata()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn o200k() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("o200k/o200k_harmony-vocab.gguf"))
}

fn tiny() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf"))
}

fn tiktoken() -> &'static tiktoken_rs::CoreBPE {
    static T: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    T.get_or_init(|| tiktoken_rs::o200k_base().expect("tiktoken-rs bundles o200k_base"))
}

/// Characters chosen to hit every branch of the split pattern and its edge cases: all kinds of
/// whitespace and line breaks, upper/lower/title/modifier/other letters, combining marks, digits
/// of several scripts, apostrophe contractions, punctuation, slashes, emoji with joiners.
const ALPHABET: &[&str] = &[
    " ",
    " ",
    " ",
    "  ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "\u{85}",
    "\u{b}",
    "\u{c}",
    "a",
    "b",
    "z",
    "A",
    "Q",
    "Z",
    "é",
    "É",
    "ǅ",
    "ʰ",
    "ß",
    "ſ",
    "K",
    "中",
    "文",
    "の",
    "한",
    "ب",
    "\u{301}",
    "\u{94d}",
    "ह",
    "0",
    "1",
    "9",
    "٣",
    "²",
    "Ⅻ",
    "'",
    "'s",
    "'S",
    "'t",
    "'re",
    "'VE",
    "'m",
    "'ll",
    "'d",
    "’",
    ".",
    ",",
    "!",
    "?",
    "-",
    "_",
    "/",
    "//",
    "\\",
    "(",
    ")",
    "{",
    "}",
    "<",
    ">",
    "|",
    "<|",
    "|>",
    "\"",
    "#",
    "$",
    "%",
    "&",
    "*",
    "+",
    "=",
    "@",
    "^",
    "`",
    "~",
    ";",
    ":",
    "😀",
    "👍🏽",
    "\u{200d}",
    "👩",
    "\u{fe0f}",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "hello",
    "World",
    "CamelCase",
    "123456",
    "don't",
    "  \n",
    " x",
    "<|start|>",
    "<|end|>",
    "<|endoftext|>",
];

fn text_strategy(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), 0..max).prop_map(|v| v.concat())
}

fn split_fancy(re: &fancy_regex::Regex, text: &str) -> Vec<String> {
    re.find_iter(text)
        .map(|m| m.expect("fancy-regex match").as_str().to_string())
        .collect()
}

fn split_ours(pre: &PreTokenizer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    pre.split(text, |p| out.push(p.to_string()));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn split_matches_backtracking_engine(text in text_strategy(40)) {
        static RE: OnceLock<fancy_regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| fancy_regex::Regex::new(O200K_PATTERN).expect("pattern"));
        let pre = PreTokenizer::o200k().expect("pattern");
        prop_assert_eq!(split_ours(&pre, &text), split_fancy(re, &text));
    }

    #[test]
    fn encode_matches_tiktoken_rs(text in text_strategy(40)) {
        // o200k_harmony is o200k_base plus special tokens; without special parsing they agree.
        let want: Vec<u32> = tiktoken().encode_ordinary(&text);
        prop_assert_eq!(o200k().encode(&text, false), want);
    }

    #[test]
    fn arbitrary_unicode_round_trips(text in any::<String>()) {
        for tok in [o200k(), tiny()] {
            let ids = tok.encode(&text, false);
            prop_assert_eq!(tok.decode(&ids).expect("in range"), text.clone());
        }
        let want: Vec<u32> = tiktoken().encode_ordinary(&text);
        prop_assert_eq!(o200k().encode(&text, false), want);
    }

    #[test]
    fn heap_and_scan_merges_agree(piece in prop::collection::vec(prop::sample::select(b"aab  e\xe4\xb8\xad\x80\xffq".to_vec()), 1..400)) {
        for tok in [o200k(), tiny()] {
            prop_assert_eq!(tok.merge_with(&piece, true), tok.merge_with(&piece, false));
        }
    }

    #[test]
    fn stream_decoder_equals_whole_decode(ids in prop::collection::vec(0u32..8192, 0..60)) {
        // Random ids: UTF-8 split anywhere, including sequences that never complete.
        let tok = tiny();
        let mut dec = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&dec.push(tok, id).expect("in range"));
        }
        streamed.push_str(&dec.finish());
        prop_assert_eq!(streamed, tok.decode(&ids).expect("in range"));
    }
}

#[test]
fn long_pieces_use_the_heap_and_match_tiktoken() {
    // 5000 letters without a break is one pre-token: exercises the O(n log n) merge path.
    let mut text = String::new();
    for i in 0..5000u32 {
        text.push(char::from(b'a' + (i * 7 % 26) as u8));
    }
    text.push_str(" and ");
    text.push_str(&"ab".repeat(3000));
    let want: Vec<u32> = tiktoken().encode_ordinary(&text);
    assert_eq!(o200k().encode(&text, false), want);
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let tok = o200k();
    // "👍🏽" is several tokens whose bytes split inside the characters.
    let ids = tok.encode("ok 👍🏽 done", false);
    let mut dec = StreamDecoder::new();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| dec.push(tok, id).expect("in range"))
        .collect();
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
    assert!(!dec.has_pending());
    assert_eq!(pieces.concat(), "ok 👍🏽 done");
    // Bytes that never complete come out as one replacement character at the end.
    assert_eq!(dec.push_bytes(&[0xf0, 0x9f]), "");
    assert!(dec.has_pending());
    assert_eq!(dec.finish(), "\u{fffd}");
    assert_eq!(dec.push_bytes(&[0xff, b'a']), "\u{fffd}a");
}
