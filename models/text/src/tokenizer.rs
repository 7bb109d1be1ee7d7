//! GPT-2's byte-level BPE, from `tokenizer.json` or from `vocab.json` + `merges.txt`, with
//! `<|endoftext|>` as a special token; plus a streaming decoder that never emits a broken UTF-8
//! character.
//!
//! The BPE is written here rather than taken from Hugging Face's `tokenizers`: building that
//! crate's model from GPT-2's 50,000 merges was a large part of every textgen cold start,
//! beside the weight read and slowing it, and this one builds in less than half the time
//! (docs/performance.md). What it must equal is
//! checked token for token against OpenAI's `tiktoken` (tests/tokenizer.rs) and against files
//! `tokenizers` writes.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use fancy_regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::TextError;

/// GPT-2's end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// GPT-2's pre-tokenization: contractions, then runs of letters, of digits or of other
/// symbols (each with one leading space), then whitespace (a run before a word leaves that
/// word its space).
const PRE_TOKENS: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// (left, right) token pair -> (its merge's rank, the merged token).
type MergeTable = Map<(u32, u32), (u32, u32)>;

/// A GPT-2 tokenizer and the raw bytes of every token.
pub struct Gpt2Tokenizer {
    /// The token of each single byte: every pre-token starts as these.
    byte_tokens: [u32; 256],
    merges: MergeTable,
    /// Tokens matched in the raw text before anything else (`<|endoftext|>`).
    special: Vec<(String, u32)>,
    tokens: TokenBytes,
    pre_tokens: Regex,
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpt2Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tokenizer_error(e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer(e.to_string())
}

impl Gpt2Tokenizer {
    /// From a Hugging Face `tokenizer.json` holding a byte-level BPE without a prefix space
    /// (GPT-2's); its added tokens are special tokens.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TextError> {
        let unsupported = |what: &str| tokenizer_error(format!("{}: {what}", path.display()));
        let text = std::fs::read(path).map_err(|e| unsupported(&e.to_string()))?;
        let json: TokenizerJson = serde_json::from_slice(&text).map_err(|e| unsupported(&e.to_string()))?;
        if json.model.kind != "BPE" {
            return Err(unsupported(
                "not a BPE model (only GPT-2's byte-level BPE is supported)",
            ));
        }
        let pre_tokenizer = &json.pre_tokenizer;
        if pre_tokenizer["type"] != "ByteLevel" || pre_tokenizer["add_prefix_space"] == true {
            return Err(unsupported(
                "the pre-tokenizer is not GPT-2's (ByteLevel without a prefix space)",
            ));
        }
        let merges = json
            .model
            .merges
            .iter()
            .map(|merge| match merge {
                Merge::Line(line) => split_merge(line),
                Merge::Pair([a, b]) => Ok((a.as_ref(), b.as_ref())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut special = Vec::new();
        for token in &json.added_tokens {
            if token.content.is_empty() {
                return Err(unsupported("an added token is empty"));
            }
            special.push((token.content.to_string(), token.id));
        }
        Self::build(&json.model.vocab.map(), &merges, special)
    }

    /// From `vocab.json` and `merges.txt` (the same files as OpenAI's `encoder.json` and
    /// `vocab.bpe`), configured as GPT-2's: byte-level, no prefix space.
    pub fn from_vocab_and_merges(vocab: &Path, merges: &Path) -> Result<Self, TextError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| tokenizer_error(format!("{}: {e}", p.display())));
        Self::from_parts(&read(vocab)?, &read(merges)?)
    }

    /// GPT-2's own BPE (r50k_base), built into the binary for directories without tokenizer
    /// files (`scripts/fetch_gpt2_bpe.py` wrote the data from its published source).
    pub fn builtin() -> Result<Self, TextError> {
        let gunzip = |bytes: &[u8]| -> Result<Vec<u8>, TextError> {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
                .map_err(tokenizer_error)?;
            Ok(out)
        };
        Self::from_parts(
            &gunzip(include_bytes!("../data/gpt2-vocab.json.gz"))?,
            &gunzip(include_bytes!("../data/gpt2-merges.txt.gz"))?,
        )
    }

    fn from_parts(vocab_json: &[u8], merges_txt: &[u8]) -> Result<Self, TextError> {
        let vocab: Vocab = serde_json::from_slice(vocab_json).map_err(tokenizer_error)?;
        let vocab = vocab.map();
        let merges_txt = std::str::from_utf8(merges_txt).map_err(tokenizer_error)?;
        let merges = merges_txt
            .lines()
            .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
            .map(split_merge)
            .collect::<Result<Vec<_>, _>>()?;
        // `<|endoftext|>` is special; a vocabulary without it gets it as its next token.
        let end_of_text = vocab
            .get(END_OF_TEXT)
            .copied()
            .unwrap_or_else(|| vocab.values().max().map_or(0, |&id| id + 1));
        Self::build(&vocab, &merges, vec![(END_OF_TEXT.to_string(), end_of_text)])
    }

    fn build(
        vocab: &Map<&str, u32>,
        merges: &[(&str, &str)],
        special: Vec<(String, u32)>,
    ) -> Result<Self, TextError> {
        let size = vocab
            .values()
            .chain(special.iter().map(|(_, id)| id))
            .max()
            .map_or(0, |&id| id as usize + 1);
        if size > vocab.len() + special.len() {
            return Err(tokenizer_error(format!(
                "token ids run to {} for {} tokens: the vocabulary has gaps",
                size - 1,
                vocab.len() + special.len()
            )));
        }
        // The two tables are independent, so they are built side by side on the pool.
        let (tokens, merge_table) = rayon::join(
            || TokenBytes::new(vocab, &special, size),
            || merge_table(vocab, merges),
        );
        let (tokens, byte_tokens) = tokens?;
        Ok(Self {
            byte_tokens,
            merges: merge_table?,
            special,
            tokens,
            pre_tokens: Regex::new(PRE_TOKENS).map_err(tokenizer_error)?,
        })
    }

    /// Tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokens.ends.len()
    }

    /// Token ids of `text`; `<|endoftext|>` in the text is the special token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut rest = text;
        while let Some((at, content, id)) = self.next_special(rest) {
            self.encode_ordinary(&rest[..at], &mut ids)?;
            ids.push(id);
            rest = &rest[at + content.len()..];
        }
        self.encode_ordinary(rest, &mut ids)?;
        Ok(ids)
    }

    /// The first special token in `text` (the longest of those starting there).
    fn next_special<'a>(&'a self, text: &str) -> Option<(usize, &'a str, u32)> {
        self.special
            .iter()
            .filter_map(|(content, id)| text.find(content.as_str()).map(|at| (at, content.as_str(), *id)))
            .min_by_key(|&(at, content, _)| (at, Reverse(content.len())))
    }

    fn encode_ordinary(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TextError> {
        for piece in self.pre_tokens.find_iter(text) {
            self.merge(piece.map_err(tokenizer_error)?.as_str().as_bytes(), ids);
        }
        Ok(())
    }

    /// Byte-pair merges of one pre-token: the pair of lowest rank first, the leftmost of
    /// equal ones, until no pair merges (as GPT-2's `bpe`), kept in a heap so that a long
    /// run costs n log n rather than n squared.
    fn merge(&self, bytes: &[u8], ids: &mut Vec<u32>) {
        const GONE: u32 = u32::MAX;
        let mut symbols: Vec<u32> = bytes.iter().map(|&b| self.byte_tokens[usize::from(b)]).collect();
        let count = symbols.len();
        // Neighbours of each live symbol; `count` or `usize::MAX` past either end.
        let mut next: Vec<usize> = (1..=count).collect();
        let mut previous: Vec<usize> = (0..count).map(|i| i.wrapping_sub(1)).collect();
        let rank_at = |symbols: &[u32], left: usize, right: usize| {
            self.merges
                .get(&(symbols[left], symbols[right]))
                .map(|&(rank, _)| rank)
        };
        let mut heap: BinaryHeap<Reverse<(u32, usize)>> = (0..count.saturating_sub(1))
            .filter_map(|i| rank_at(&symbols, i, i + 1).map(|rank| Reverse((rank, i))))
            .collect();
        while let Some(Reverse((rank, left))) = heap.pop() {
            let right = next[left];
            if symbols[left] == GONE || right >= count {
                continue;
            }
            // A stale entry: this pair has changed since it was queued.
            let Some(&(current, merged)) = self.merges.get(&(symbols[left], symbols[right])) else {
                continue;
            };
            if current != rank {
                continue;
            }
            symbols[left] = merged;
            symbols[right] = GONE;
            next[left] = next[right];
            if next[left] < count {
                previous[next[left]] = left;
                if let Some(rank) = rank_at(&symbols, left, next[left]) {
                    heap.push(Reverse((rank, left)));
                }
            }
            let before = previous[left];
            if before < count {
                if let Some(rank) = rank_at(&symbols, before, left) {
                    heap.push(Reverse((rank, before)));
                }
            }
        }
        ids.extend(symbols.into_iter().filter(|&id| id != GONE));
    }

    /// The raw bytes of a token (a token may hold part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.tokens.get(id)
    }

    /// Text of `ids`; bytes that are not valid UTF-8 become U+FFFD, as the reference decodes.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A vocabulary's tokens (JSON object keys, unescaped) end to end in one string, each with
/// its id: read without a `String` per token, whose allocation and freeing were a third of
/// building the tokenizer.
#[derive(Debug, Default)]
struct Vocab {
    text: String,
    /// Each token's end in `text` (its start is the previous one's end) and its id.
    tokens: Vec<(usize, u32)>,
}

impl Vocab {
    /// Token text to id, borrowing the text.
    fn map(&self) -> Map<&str, u32> {
        let mut map = Map::with_capacity_and_hasher(self.tokens.len(), ahash::RandomState::new());
        let mut start = 0;
        for &(end, id) in &self.tokens {
            map.insert(&self.text[start..end], id);
            start = end;
        }
        map
    }
}

impl<'de> Deserialize<'de> for Vocab {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(VocabVisitor)
    }
}

struct VocabVisitor;

impl<'de> serde::de::Visitor<'de> for VocabVisitor {
    type Value = Vocab;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of tokens and their ids")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vocab, A::Error> {
        let mut vocab = Vocab {
            text: String::with_capacity(map.size_hint().unwrap_or(0) * 8),
            tokens: Vec::with_capacity(map.size_hint().unwrap_or(0)),
        };
        while map.next_key_seed(AppendKey(&mut vocab.text))?.is_some() {
            let id: u32 = map.next_value()?;
            vocab.tokens.push((vocab.text.len(), id));
        }
        Ok(vocab)
    }
}

/// A map key appended to a string (escaped or not) rather than allocated.
struct AppendKey<'a>(&'a mut String);

impl<'de> serde::de::DeserializeSeed<'de> for AppendKey<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AppendKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a token")
    }

    fn visit_str<E: serde::de::Error>(self, token: &str) -> Result<(), E> {
        self.0.push_str(token);
        Ok(())
    }
}

/// The parts of a `tokenizer.json` GPT-2's BPE needs.
#[derive(Deserialize)]
struct TokenizerJson<'a> {
    #[serde(borrow)]
    model: BpeJson<'a>,
    #[serde(default)]
    pre_tokenizer: Value,
    #[serde(default, borrow)]
    added_tokens: Vec<AddedToken<'a>>,
}

/// The model part; fields that only a BPE model has default to empty, so that another kind
/// of model is refused by its type rather than by a missing field.
#[derive(Deserialize)]
struct BpeJson<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    vocab: Vocab,
    #[serde(default, borrow)]
    merges: Vec<Merge<'a>>,
}

/// A merge as a `"left right"` string or a `["left", "right"]` pair (both are written).
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge<'a> {
    #[serde(borrow)]
    Line(Cow<'a, str>),
    #[serde(borrow)]
    Pair([Cow<'a, str>; 2]),
}

#[derive(Deserialize)]
struct AddedToken<'a> {
    #[serde(borrow)]
    content: Cow<'a, str>,
    id: u32,
}

/// Every token's raw bytes end to end, and where each one ends: one buffer, not 50,257.
struct TokenBytes {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl TokenBytes {
    /// The tokens' bytes (byte-level characters mapped back to bytes; special tokens as they
    /// are written) and the token of each single byte.
    fn new(
        vocab: &Map<&str, u32>,
        special: &[(String, u32)],
        size: usize,
    ) -> Result<(Self, [u32; 256]), TextError> {
        let mut names: Vec<Option<(&str, bool)>> = vec![None; size];
        for (&token, &id) in vocab {
            names[id as usize] = Some((token, false));
        }
        for (content, id) in special {
            names[*id as usize] = Some((content.as_str(), true));
        }
        let unicode_to_byte = unicode_to_byte();
        let mut bytes = Vec::with_capacity(size * 8);
        let mut ends = Vec::with_capacity(size);
        let mut byte_tokens = [None; 256];
        for (id, name) in names.into_iter().enumerate() {
            match name {
                Some((content, true)) => bytes.extend_from_slice(content.as_bytes()),
                Some((token, false)) => {
                    let mut chars = token.chars();
                    if let (Some(c), None) = (chars.next(), chars.next()) {
                        if let Some(byte) = unicode_to_byte.get(c as usize).copied().flatten() {
                            byte_tokens[usize::from(byte)] = Some(id as u32);
                        }
                    }
                    bytes.extend(token.chars().map(|c| token_byte(&unicode_to_byte, c)));
                }
                None => {}
            }
            ends.push(bytes.len());
        }
        let mut table = [0; 256];
        for (byte, (slot, id)) in table.iter_mut().zip(byte_tokens).enumerate() {
            *slot =
                id.ok_or_else(|| tokenizer_error(format!("the vocabulary has no token for byte {byte}")))?;
        }
        Ok((Self { bytes, ends }, table))
    }

    fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match self.ends.get(id) {
            Some(&end) => &self.bytes[id.checked_sub(1).map_or(0, |before| self.ends[before])..end],
            None => &[],
        }
    }
}

/// The merges' table, from merges in rank order.
fn merge_table(vocab: &Map<&str, u32>, merges: &[(&str, &str)]) -> Result<MergeTable, TextError> {
    let id_of = |token: &str| {
        vocab
            .get(token)
            .copied()
            .ok_or_else(|| tokenizer_error(format!("the merges use `{token}`, which the vocabulary lacks")))
    };
    let mut table = Map::with_capacity_and_hasher(merges.len(), ahash::RandomState::new());
    let mut pair = String::new();
    for (rank, &(left, right)) in merges.iter().enumerate() {
        pair.clear();
        pair.push_str(left);
        pair.push_str(right);
        let merged = id_of(&pair)?;
        let rank = u32::try_from(rank).map_err(tokenizer_error)?;
        table
            .entry((id_of(left)?, id_of(right)?))
            .or_insert((rank, merged));
    }
    Ok(table)
}

/// A merges.txt line or tokenizer.json merge string: two tokens separated by one space.
fn split_merge(line: &str) -> Result<(&str, &str), TextError> {
    line.split_once(' ')
        .ok_or_else(|| tokenizer_error(format!("bad merge line `{line}`")))
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`), inverted and indexed by character
/// code (every character of the table is below U+0144).
fn unicode_to_byte() -> Vec<Option<u8>> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = vec![None; 0x144];
    let mut next = 256usize;
    for b in 0..=255u8 {
        let code = if printable(b) {
            usize::from(b)
        } else {
            next += 1;
            next - 1
        };
        table[code] = Some(b);
    }
    table
}

/// The byte a token character stands for (`?` for a character outside GPT-2's table).
fn token_byte(table: &[Option<u8>], c: char) -> u8 {
    table.get(c as usize).copied().flatten().unwrap_or(b'?')
}

/// Turns token bytes into text as tokens arrive, holding back an incomplete UTF-8 character
/// until the tokens that complete it come.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// The text that `bytes` completes (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let (valid, rest) = self.pending.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending = rest.to_vec();
                            return text;
                        }
                        // An invalid sequence: replace it, as the reference decoder does.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending = rest[bad..].to_vec();
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream (an incomplete character becomes U+FFFD).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_bpe_is_gpt2s() {
        let tokenizer = Gpt2Tokenizer::builtin().unwrap();
        assert_eq!(tokenizer.vocab_size(), 50_257);
        assert_eq!(
            tokenizer.encode("Hello, world!<|endoftext|>").unwrap(),
            [15496, 11, 995, 0, 50256]
        );
        assert_eq!(
            tokenizer.encode("The quick brown fox jumps over the").unwrap(),
            [464, 2068, 7586, 21831, 18045, 625, 262]
        );
    }

    #[test]
    fn stream_decoder_holds_back_split_characters() {
        let emoji = "🦀".as_bytes();
        let mut decoder = StreamDecoder::default();
        assert_eq!(decoder.push(b"a"), "a");
        assert_eq!(decoder.push(&emoji[..1]), "");
        assert_eq!(decoder.push(&emoji[1..3]), "");
        assert_eq!(decoder.push(&[emoji[3], b'b']), "🦀b");
        assert_eq!(decoder.push(&[0xFF, b'c']), "\u{FFFD}c");
        assert_eq!(decoder.push(&emoji[..2]), "");
        assert_eq!(decoder.finish(), "\u{FFFD}");
    }

    #[test]
    fn byte_table_covers_every_byte() {
        let table = unicode_to_byte();
        assert_eq!(table.iter().flatten().count(), 256);
        assert_eq!(token_byte(&table, 'Ġ'), b' ');
        assert_eq!(token_byte(&table, 'Ċ'), b'\n');
        assert_eq!(token_byte(&table, '!'), b'!');
    }
}
