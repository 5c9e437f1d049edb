//! Pre-tokenization: splitting text into the pieces that BPE then encodes one by one.
//!
//! The o200k split pattern (`tokenizer.ggml.pre = gpt-4o`) contains one look-ahead, `\s+(?!\S)`,
//! which the linear-time `regex` crate cannot express. We drop that branch, keep the plain `\s+`
//! after it, and re-create its effect by hand: a whitespace-only match that the look-ahead branch
//! would have shortened (a run of two or more whitespace characters followed by a non-space) is
//! cut before its last character, and matching resumes there. That is exactly what a backtracking
//! engine does with the original pattern (checked against `fancy-regex` on random text in the
//! tests), at the speed of a DFA.

use regex::Regex;

/// The o200k pattern, as tiktoken writes it, minus the `\s+(?!\S)` branch (see the module docs).
const O200K_NO_LOOKAHEAD: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

/// The full o200k pattern with its look-ahead, as tiktoken defines it; used by the tests to check
/// [`PreTokenizer`] against a backtracking engine.
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// Splits text into pre-tokens with the o200k rules.
#[derive(Debug, Clone)]
pub struct PreTokenizer {
    re: Regex,
}

impl PreTokenizer {
    /// The o200k (`gpt-4o`) pre-tokenizer.
    pub fn o200k() -> Result<PreTokenizer, regex::Error> {
        Ok(PreTokenizer {
            re: Regex::new(O200K_NO_LOOKAHEAD)?,
        })
    }

    /// Calls `f` on every piece of `text`, in order. The pieces cover the whole text.
    pub fn split<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.re.find_at(text, pos) else {
                break;
            };
            let start = m.start();
            let mut end = m.end();
            if end < text.len() {
                let piece = m.as_str();
                // Only the `\s+` branch yields whitespace that does not end in a line break: the
                // `\s*[\r\n]+` branch ends in one, every other branch needs a non-space.
                let mut chars = piece.chars();
                if let Some(last) = chars.next_back()
                    && !matches!(last, '\r' | '\n')
                    && chars.clone().next().is_some()
                    && piece.chars().all(char::is_whitespace)
                {
                    // `\s+(?!\S)` would have stopped one character early, leaving that character
                    // to start the next piece.
                    end -= last.len_utf8();
                }
            }
            if end <= start {
                // Cannot happen (no branch matches the empty string); never loop forever anyway.
                end = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
            f(&text[start..end]);
            pos = end;
        }
    }
}
