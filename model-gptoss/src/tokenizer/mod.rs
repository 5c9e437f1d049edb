//! The GPT-OSS tokenizer: GPT-2 style byte-level BPE over the o200k vocabulary, read from GGUF.
//!
//! Encoding follows tiktoken exactly: the text is first cut at special tokens (when asked), each
//! ordinary stretch is split by the o200k pre-tokenizer, and each piece becomes one token if the
//! vocabulary has it whole, otherwise it is merged pair by pair from its bytes in the order of
//! `tokenizer.ggml.merges`. Special tokens are found by their text, never by fixed ids, so the
//! same code serves the real vocabulary and cut-down test vocabularies that renumber them.

mod pretokenize;
mod stream;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::FxHashMap;

pub use pretokenize::{O200K_PATTERN, PreTokenizer};
pub use stream::StreamDecoder;

/// GGUF token type of an ordinary vocabulary entry (`tokenizer.ggml.token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF token type of a control token such as `<|start|>`.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined (added) token.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The texts of the tokens that end generation in GPT-OSS (looked up by text, see
/// [`Tokenizer::eog_tokens`]).
pub const EOG_TOKEN_TEXTS: [&str; 3] = ["<|return|>", "<|call|>", "<|endoftext|>"];

/// Pieces longer than this many bytes are merged with a priority queue instead of by repeated
/// scans, so that a pathological piece (a megabyte without spaces) stays O(n log n).
const HEAP_MERGE_THRESHOLD: usize = 256;

/// Everything that can go wrong building or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A metadata key the tokenizer needs is absent.
    #[error("tokenizer metadata key '{key}' is missing")]
    MissingKey {
        /// The full key, e.g. `tokenizer.ggml.tokens`.
        key: &'static str,
    },
    /// A metadata key is present but unusable.
    #[error("tokenizer metadata key '{key}': {detail}")]
    BadKey {
        /// The full key.
        key: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The file's tokenizer is not one this crate implements.
    #[error("unsupported tokenizer: {key} = '{found}' (supported: {supported})")]
    Unsupported {
        /// `tokenizer.ggml.model` or `tokenizer.ggml.pre`.
        key: &'static str,
        /// The value found.
        found: String,
        /// The values this crate accepts.
        supported: &'static str,
    },
    /// A merge rule that does not name two vocabulary entries whose concatenation is one.
    #[error("tokenizer.ggml.merges[{index}] = {rule:?}: {detail}")]
    BadMerge {
        /// Index of the rule in `tokenizer.ggml.merges`.
        index: usize,
        /// The rule as written.
        rule: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The pre-tokenizer pattern failed to compile (a bug, reported rather than panicking).
    #[error("pre-tokenizer pattern: {0}")]
    Pattern(String),
}

/// The raw ingredients of a tokenizer, as stored under `tokenizer.ggml.*` in GGUF.
///
/// [`Tokenizer::from_gguf`] fills this from a file; tests and converters can fill it directly.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec<'a> {
    /// `tokenizer.ggml.model`; only `gpt2` (byte-level BPE) is supported.
    pub model: &'a str,
    /// `tokenizer.ggml.pre`; only `gpt-4o` (the o200k split) is supported.
    pub pre: &'a str,
    /// `tokenizer.ggml.tokens`: each token's text (byte-level encoded for ordinary tokens).
    pub tokens: Vec<&'a str>,
    /// `tokenizer.ggml.token_type`, one per token; empty means all ordinary.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"LEFT RIGHT"` rules, highest priority first.
    pub merges: Vec<&'a str>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<&'a str>,
}

/// A byte-level BPE tokenizer with the o200k pre-tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    /// All token byte strings, concatenated; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// The vocabulary strings as stored in the file, concatenated; entry `i` ends at
    /// `text_ends[i]`.
    texts: String,
    text_ends: Vec<u32>,
    token_types: Vec<i32>,
    /// Ordinary tokens by their bytes (the whole-piece shortcut).
    by_bytes: ByteIndex,
    /// Merge rules: (left, right) -> (priority, merged token).
    merges: FxHashMap<u64, (u32, u32)>,
    /// The single-byte token of every byte value.
    byte_tokens: [u32; 256],
    /// Special tokens by text, for lookup and for the special-token splitter.
    specials: FxHashMap<String, u32>,
    special_matcher: Option<(AhoCorasick, Vec<u32>)>,
    pre: PreTokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    chat_template: Option<String>,
}

/// GPT-2's byte <-> printable-character table: bytes that are printable Latin-1 map to
/// themselves, the others to U+0100 onwards in byte order.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            let c = next;
            next += 1;
            c
        };
        table[usize::from(b)] = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// Characters of the byte alphabet are all below this code point.
const BYTE_ALPHABET_END: usize = 0x144;

/// Inverse of [`byte_to_char_table`], indexed by code point: the byte, or -1 outside the alphabet.
fn char_to_byte_table(table: &[char; 256]) -> [i16; BYTE_ALPHABET_END] {
    let mut inverse = [-1i16; BYTE_ALPHABET_END];
    for (b, &c) in table.iter().enumerate() {
        inverse[c as usize] = b as i16;
    }
    inverse
}

/// Decodes a byte-level token text to its bytes. Characters outside the byte alphabet (which a
/// well-formed vocabulary does not have) are kept as their own UTF-8.
fn unmap_bytes(text: &str, out: &mut Vec<u8>, inverse: &[i16; BYTE_ALPHABET_END]) {
    for c in text.chars() {
        match inverse.get(c as usize) {
            Some(&b) if b >= 0 => out.push(b as u8),
            _ => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata (`tokenizer.ggml.*`,
    /// `tokenizer.chat_template`).
    pub fn from_gguf(metadata: &gguf_format::Metadata) -> Result<Tokenizer, TokenizerError> {
        let spec = gguf_spec(metadata)?;
        Tokenizer::from_spec(&spec)
    }

    /// Builds the tokenizer from its raw ingredients.
    pub fn from_spec(spec: &TokenizerSpec<'_>) -> Result<Tokenizer, TokenizerError> {
        if spec.model != "gpt2" {
            return Err(TokenizerError::Unsupported {
                key: "tokenizer.ggml.model",
                found: spec.model.to_string(),
                supported: "gpt2",
            });
        }
        if spec.pre != "gpt-4o" {
            return Err(TokenizerError::Unsupported {
                key: "tokenizer.ggml.pre",
                found: spec.pre.to_string(),
                supported: "gpt-4o",
            });
        }
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.tokens",
                detail: "the vocabulary is empty".into(),
            });
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.tokens",
                detail: format!("{n} tokens do not fit 32-bit ids"),
            });
        }
        if spec.tokens.iter().map(|t| t.len() as u64).sum::<u64>() > u64::from(u32::MAX) {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.tokens",
                detail: "the vocabulary's total size exceeds 4 GiB".into(),
            });
        }
        let token_types = if spec.token_types.is_empty() {
            vec![TOKEN_TYPE_NORMAL; n]
        } else if spec.token_types.len() == n {
            spec.token_types.clone()
        } else {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.token_type",
                detail: format!("{} entries for {n} tokens", spec.token_types.len()),
            });
        };
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", spec.bos),
            ("tokenizer.ggml.eos_token_id", spec.eos),
            ("tokenizer.ggml.padding_token_id", spec.pad),
        ] {
            if let Some(id) = id
                && id as usize >= n
            {
                return Err(TokenizerError::BadKey {
                    key,
                    detail: format!("id {id} >= vocabulary size {n}"),
                });
            }
        }

        let table = byte_to_char_table();
        let inverse = char_to_byte_table(&table);

        let total_len: usize = spec.tokens.iter().map(|t| t.len()).sum();
        let mut bytes = Vec::with_capacity(total_len);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        let mut by_bytes = ByteIndex::with_capacity(n);
        let mut specials = FxHashMap::default();
        for (id, (&text, &ty)) in spec.tokens.iter().zip(&token_types).enumerate() {
            let id = id as u32;
            let normal = ty == TOKEN_TYPE_NORMAL;
            if normal {
                unmap_bytes(text, &mut bytes, &inverse);
            } else {
                // Control and added tokens are stored as plain text.
                bytes.extend_from_slice(text.as_bytes());
                if matches!(ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED) && !text.is_empty() {
                    specials.entry(text.to_string()).or_insert(id);
                }
            }
            let end = u32::try_from(bytes.len()).map_err(|_| TokenizerError::BadKey {
                key: "tokenizer.ggml.tokens",
                detail: "the vocabulary's total size exceeds 4 GiB".into(),
            })?;
            offsets.push(end);
            if normal {
                by_bytes.insert_first(id, &bytes, &offsets);
            }
        }

        let mut byte_tokens = [0u32; 256];
        for b in 0..=255u8 {
            byte_tokens[usize::from(b)] =
                by_bytes
                    .get(&[b][..], &bytes, &offsets)
                    .ok_or_else(|| TokenizerError::BadKey {
                        key: "tokenizer.ggml.tokens",
                        detail: format!(
                            "no ordinary token for the single byte 0x{b:02x} ({:?})",
                            table[usize::from(b)]
                        ),
                    })?;
        }

        // Merge rules name their halves by byte-level text; resolve them to ids once, through
        // their bytes (the text <-> bytes mapping is one to one for ordinary tokens).
        let mut merges = FxHashMap::with_capacity_and_hasher(spec.merges.len(), Default::default());
        let mut scratch = Vec::new();
        for (index, &rule) in spec.merges.iter().enumerate() {
            let bad = |detail: String| TokenizerError::BadMerge {
                index,
                rule: rule.to_string(),
                detail,
            };
            let (left, right) = rule
                .split_once(' ')
                .ok_or_else(|| bad("no space between the two halves".into()))?;
            scratch.clear();
            unmap_bytes(left, &mut scratch, &inverse);
            let split = scratch.len();
            unmap_bytes(right, &mut scratch, &inverse);
            let l = by_bytes
                .get(&scratch[..split], &bytes, &offsets)
                .ok_or_else(|| bad(format!("{left:?} is not in the vocabulary")))?;
            let r = by_bytes
                .get(&scratch[split..], &bytes, &offsets)
                .ok_or_else(|| bad(format!("{right:?} is not in the vocabulary")))?;
            let merged = by_bytes
                .get(&scratch, &bytes, &offsets)
                .ok_or_else(|| bad(format!("{left}{right:?} is not in the vocabulary")))?;
            let priority = u32::try_from(index).unwrap_or(u32::MAX);
            merges.entry(pair_key(l, r)).or_insert((priority, merged));
        }

        let special_matcher = if specials.is_empty() {
            None
        } else {
            let mut entries: Vec<(&String, &u32)> = specials.iter().collect();
            entries.sort_by_key(|(_, id)| **id);
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(entries.iter().map(|(t, _)| t.as_bytes()))
                .map_err(|e| TokenizerError::Pattern(e.to_string()))?;
            Some((ac, entries.iter().map(|(_, id)| **id).collect()))
        };

        Ok(Tokenizer {
            bytes,
            offsets,
            texts: spec.tokens.concat(),
            text_ends: spec
                .tokens
                .iter()
                .scan(0u32, |end, t| {
                    *end += t.len() as u32;
                    Some(*end)
                })
                .collect(),
            token_types,
            by_bytes,
            merges,
            byte_tokens,
            specials,
            special_matcher,
            pre: PreTokenizer::o200k().map_err(|e| TokenizerError::Pattern(e.to_string()))?,
            bos: spec.bos,
            eos: spec.eos,
            pad: spec.pad,
            chat_template: spec.chat_template.map(str::to_string),
        })
    }

    /// Number of entries in the vocabulary (ordinary and special).
    pub fn vocab_size(&self) -> usize {
        self.text_ends.len()
    }

    /// Encodes `text`. With `parse_special`, the texts of special tokens (`<|start|>`, ...) become
    /// those tokens; without it they are encoded as the ordinary characters they are made of.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match (&self.special_matcher, parse_special) {
            (Some((ac, ids)), true) => {
                let mut last = 0;
                for m in ac.find_iter(text) {
                    self.encode_ordinary_into(&text[last..m.start()], &mut out);
                    out.push(ids[m.pattern().as_usize()]);
                    last = m.end();
                }
                self.encode_ordinary_into(&text[last..], &mut out);
            }
            _ => self.encode_ordinary_into(text, &mut out),
        }
        out
    }

    /// Encodes `text` treating every character as ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        self.encode(text, false)
    }

    fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>) {
        self.pre
            .split(text, |piece| self.encode_piece(piece.as_bytes(), out));
    }

    /// Encodes one pre-token.
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(id) = self.by_bytes.get(piece, &self.bytes, &self.offsets) {
            out.push(id);
        } else if piece.len() > HEAP_MERGE_THRESHOLD {
            self.merge_heap(piece, out);
        } else {
            self.merge_scan(piece, out);
        }
    }

    fn merge_of(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair_key(left, right)).copied()
    }

    /// BPE by repeated scans: fast for the short pieces that ordinary text is made of.
    fn merge_scan(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut parts: Vec<u32> = piece
            .iter()
            .map(|&b| self.byte_tokens[usize::from(b)])
            .collect();
        // ranks[i]: the merge of parts[i] and parts[i + 1], if any.
        let mut ranks: Vec<Option<(u32, u32)>> = parts
            .windows(2)
            .map(|w| self.merge_of(w[0], w[1]))
            .collect();
        loop {
            let mut best: Option<(usize, u32, u32)> = None;
            for (i, r) in ranks.iter().enumerate() {
                if let Some((prio, merged)) = *r
                    && best.is_none_or(|(_, p, _)| prio < p)
                {
                    best = Some((i, prio, merged));
                }
            }
            let Some((i, _, merged)) = best else { break };
            parts[i] = merged;
            parts.remove(i + 1);
            ranks.remove(i);
            if i > 0 {
                ranks[i - 1] = self.merge_of(parts[i - 1], merged);
            }
            if i < ranks.len() {
                ranks[i] = self.merge_of(merged, parts[i + 1]);
            }
        }
        out.extend_from_slice(&parts);
    }

    /// BPE with a priority queue over a linked list: same result as [`Self::merge_scan`],
    /// O(n log n) for long pieces.
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        let mut ids: Vec<u32> = piece
            .iter()
            .map(|&b| self.byte_tokens[usize::from(b)])
            .collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        // (priority, position, left id, right id); stale entries are skipped when popped.
        let mut heap = BinaryHeap::new();
        for i in 0..n.saturating_sub(1) {
            if let Some((prio, _)) = self.merge_of(ids[i], ids[i + 1]) {
                heap.push(Reverse((prio, i, ids[i], ids[i + 1])));
            }
        }
        while let Some(Reverse((_, i, l, r))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j >= n || ids[i] != l || ids[j] != r {
                continue;
            }
            let Some((_, merged)) = self.merge_of(l, r) else {
                continue;
            };
            ids[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            let p = prev[i];
            if p < n
                && let Some((prio, _)) = self.merge_of(ids[p], merged)
            {
                heap.push(Reverse((prio, p, ids[p], merged)));
            }
            let q = next[i];
            if q < n
                && let Some((prio, _)) = self.merge_of(merged, ids[q])
            {
                heap.push(Reverse((prio, i, merged, ids[q])));
            }
        }
        let mut i = 0;
        while i < n {
            out.push(ids[i]);
            i = next[i];
        }
    }

    /// Decodes ids to text. Special tokens come out as their text; byte sequences that are not
    /// valid UTF-8 come out as U+FFFD (as tiktoken's `decode` does).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// Decodes ids to text, leaving out control tokens (`<|start|>`, `<|end|>`, ...).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| !self.is_special(id))
            .collect();
        self.decode(&kept)
    }

    /// Decodes ids to the raw bytes they stand for.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id).ok_or(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            })?);
        }
        Ok(out)
    }

    /// The bytes one token stands for (a special token's are its text); `None` if out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        if i >= self.vocab_size() {
            return None;
        }
        Some(token_slice(&self.bytes, &self.offsets, id))
    }

    /// The text one token stands for, lossily (a token may hold part of a UTF-8 character; use
    /// [`StreamDecoder`] to print generated tokens). `None` if out of range.
    pub fn token_to_piece(&self, id: u32) -> Option<String> {
        self.token_bytes(id)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The vocabulary entry as stored in the file (byte-level encoded for ordinary tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let end = *self.text_ends.get(i)? as usize;
        let start = if i == 0 {
            0
        } else {
            self.text_ends[i - 1] as usize
        };
        self.texts.get(start..end)
    }

    /// The GGUF token type of a token (1 ordinary, 3 control, 4 user-defined, ...).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.token_types.get(id as usize).copied()
    }

    /// True for control and user-defined tokens, the ones `encode(_, true)` parses from text.
    pub fn is_special(&self, id: u32) -> bool {
        matches!(
            self.token_type(id),
            Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED)
        )
    }

    /// Finds a token by its text: a special token by its literal text (`"<|start|>"`), an
    /// ordinary one by the text it decodes to (`" hello"`).
    pub fn find_token(&self, text: &str) -> Option<u32> {
        self.specials.get(text).copied().or_else(|| {
            self.by_bytes
                .get(text.as_bytes(), &self.bytes, &self.offsets)
        })
    }

    /// The tokens that end generation: `<|return|>`, `<|call|>` and `<|endoftext|>` (those the
    /// vocabulary has, found by text) plus the file's end-of-sequence token, ascending, no
    /// duplicates.
    pub fn eog_tokens(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = EOG_TOKEN_TEXTS
            .iter()
            .filter_map(|t| self.specials.get(*t).copied())
            .collect();
        ids.extend(self.eos);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// True if `id` is one of [`Self::eog_tokens`].
    pub fn is_eog(&self, id: u32) -> bool {
        self.eos == Some(id)
            || EOG_TOKEN_TEXTS
                .iter()
                .any(|t| self.specials.get(*t) == Some(&id))
    }

    /// `tokenizer.ggml.bos_token_id`, if the file has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// `tokenizer.ggml.eos_token_id`, if the file has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// `tokenizer.ggml.padding_token_id`, if the file has one.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// The Jinja chat template stored with the vocabulary (`tokenizer.chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Number of merge rules in use.
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// Test hook: BPE-merges `piece` with the scan or the heap algorithm.
    #[doc(hidden)]
    pub fn merge_with(&self, piece: &[u8], heap: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if heap {
            self.merge_heap(piece, &mut out);
        } else {
            self.merge_scan(piece, &mut out);
        }
        out
    }
}

impl std::fmt::Debug for Tokenizer {
    /// A summary: the vocabulary itself is far too long to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.merges.len())
            .field("special_tokens", &self.specials.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Ordinary tokens by their bytes: a hash table of ids whose keys live in the tokenizer's flat
/// byte buffer, so that 200k tokens cost no allocation each and the table stays small.
#[derive(Clone)]
struct ByteIndex {
    table: hashbrown::HashTable<u32>,
}

fn hash_bytes(b: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(b)
}

impl ByteIndex {
    fn with_capacity(n: usize) -> ByteIndex {
        ByteIndex {
            table: hashbrown::HashTable::with_capacity(n),
        }
    }

    /// Adds token `id` (already in `bytes`/`offsets`) unless a token with the same bytes is
    /// there: the first of duplicates wins.
    fn insert_first(&mut self, id: u32, bytes: &[u8], offsets: &[u32]) {
        let key = token_slice(bytes, offsets, id);
        let hash = hash_bytes(key);
        if self
            .table
            .find(hash, |&o| token_slice(bytes, offsets, o) == key)
            .is_none()
        {
            self.table
                .insert_unique(hash, id, |&o| hash_bytes(token_slice(bytes, offsets, o)));
        }
    }

    fn get(&self, key: &[u8], bytes: &[u8], offsets: &[u32]) -> Option<u32> {
        self.table
            .find(hash_bytes(key), |&o| token_slice(bytes, offsets, o) == key)
            .copied()
    }
}

fn token_slice<'b>(bytes: &'b [u8], offsets: &[u32], id: u32) -> &'b [u8] {
    let i = id as usize;
    &bytes[offsets[i] as usize..offsets[i + 1] as usize]
}

/// Reads the tokenizer keys out of GGUF metadata.
fn gguf_spec(md: &gguf_format::Metadata) -> Result<TokenizerSpec<'_>, TokenizerError> {
    use gguf_format::{Array, Value};

    fn string<'m>(
        md: &'m gguf_format::Metadata,
        key: &'static str,
    ) -> Result<Option<&'m str>, TokenizerError> {
        match md.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| TokenizerError::BadKey {
                key,
                detail: format!("expected a string, found {}", v.type_description()),
            }),
        }
    }
    fn strings<'m>(
        md: &'m gguf_format::Metadata,
        key: &'static str,
    ) -> Result<Option<Vec<&'m str>>, TokenizerError> {
        match md.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::String(a))) => Ok(Some(a.iter().collect())),
            Some(v) => Err(TokenizerError::BadKey {
                key,
                detail: format!(
                    "expected an array of strings, found {}",
                    v.type_description()
                ),
            }),
        }
    }
    fn id(md: &gguf_format::Metadata, key: &'static str) -> Result<Option<u32>, TokenizerError> {
        match md.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|i| u32::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| TokenizerError::BadKey {
                    key,
                    detail: format!("expected a token id, found {v:?}"),
                }),
        }
    }

    let model = string(md, "tokenizer.ggml.model")?.ok_or(TokenizerError::MissingKey {
        key: "tokenizer.ggml.model",
    })?;
    // llama.cpp reads a missing `pre` as "default"; we name it so the error says what is missing.
    let pre = string(md, "tokenizer.ggml.pre")?.unwrap_or("default");
    let tokens = strings(md, "tokenizer.ggml.tokens")?.ok_or(TokenizerError::MissingKey {
        key: "tokenizer.ggml.tokens",
    })?;
    let merges = strings(md, "tokenizer.ggml.merges")?.ok_or(TokenizerError::MissingKey {
        key: "tokenizer.ggml.merges",
    })?;
    let token_types = match md.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .to_i64_vec()
            .and_then(|v| {
                v.into_iter()
                    .map(|x| i32::try_from(x).ok())
                    .collect::<Option<Vec<i32>>>()
            })
            .ok_or_else(|| TokenizerError::BadKey {
                key: "tokenizer.ggml.token_type",
                detail: format!(
                    "expected an array of 32-bit integers, found array[{}] of {}",
                    a.element_type(),
                    a.len()
                ),
            })?,
        Some(v) => {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.token_type",
                detail: format!(
                    "expected an array of integers, found {}",
                    v.type_description()
                ),
            });
        }
    };
    Ok(TokenizerSpec {
        model,
        pre,
        tokens,
        token_types,
        merges,
        bos: id(md, "tokenizer.ggml.bos_token_id")?,
        eos: id(md, "tokenizer.ggml.eos_token_id")?,
        pad: id(md, "tokenizer.ggml.padding_token_id")?,
        chat_template: string(md, "tokenizer.chat_template")?,
    })
}
