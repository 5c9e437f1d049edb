//! Incremental detokenization: text comes out as soon as its UTF-8 is complete.

use super::{Tokenizer, TokenizerError};

/// Turns a stream of token ids into text, holding back the bytes of a UTF-8 character split
/// across tokens until the token that completes it arrives.
///
/// Byte-level BPE tokens are byte strings, not text: a Chinese character or an emoji is often
/// spread over two or three tokens. Printing each token's bytes lossily would print replacement
/// characters mid-stream; this decoder prints nothing for such a token and the whole character
/// with the next one. Bytes that can never become valid UTF-8 come out as U+FFFD, as
/// [`Tokenizer::decode`] writes them, so the concatenated output equals `decode` of all ids.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        let bytes = tokenizer.token_bytes(id).ok_or(TokenizerError::UnknownId {
            id,
            vocab_size: tokenizer.vocab_size(),
        })?;
        Ok(self.push_bytes(bytes))
    }

    /// Adds raw bytes; returns the text they complete (possibly empty).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut consumed = 0;
        loop {
            let rest = &self.pending[consumed..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `from_utf8` just reported this prefix valid, so the fallback is never taken.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: wait for more bytes.
                        None => {
                            consumed += valid;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            consumed += valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        out
    }

    /// True when bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: held-back bytes that never completed come out as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
