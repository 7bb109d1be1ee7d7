//! GPT-2's byte-level BPE, through Hugging Face's `tokenizers` (the reference implementation),
//! from `tokenizer.json` or from `vocab.json` + `merges.txt`, with `<|endoftext|>` as a special
//! token; plus a streaming decoder that never emits a broken UTF-8 character.

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::TextError;

/// GPT-2's end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A GPT-2 tokenizer and the raw bytes of every token.
pub struct Gpt2Tokenizer {
    inner: Tokenizer,
    token_bytes: Vec<Vec<u8>>,
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
    /// From a Hugging Face `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TextError> {
        Self::new(Tokenizer::from_file(path).map_err(tokenizer_error)?)
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
        // Parsed straight into the map the BPE keeps (it hashes with aHash, not std's SipHash).
        let vocab: std::collections::HashMap<String, u32, ahash::RandomState> =
            serde_json::from_slice(vocab_json).map_err(tokenizer_error)?;
        let merges_txt = std::str::from_utf8(merges_txt).map_err(tokenizer_error)?;
        let merges = merges_txt
            .lines()
            .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
            .map(|line| {
                line.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tokenizer_error(format!("bad merge line `{line}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The byte table comes from the vocabulary in hand: asking the built tokenizer for each
        // of its 50,257 tokens (a lookup and a copy each) was a fifth of the tokenizer's build.
        let unicode_to_byte = unicode_to_byte();
        let size = vocab.values().max().map_or(0, |&id| id as usize + 1);
        let mut token_bytes = vec![Vec::new(); size];
        for (token, &id) in &vocab {
            token_bytes[id as usize] = token.chars().map(|c| token_byte(&unicode_to_byte, c)).collect();
        }
        let bpe = BPE::builder()
            .vocab_and_merges(ahash::AHashMap::from(vocab), merges)
            .build()
            .map_err(tokenizer_error)?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
        tokenizer
            .add_special_tokens([AddedToken::from(END_OF_TEXT, true)])
            .map_err(tokenizer_error)?;
        if tokenizer.get_vocab_size(true) != size {
            // `<|endoftext|>` was not in the vocabulary: rebuild the table from the tokenizer.
            return Self::new(tokenizer);
        }
        Ok(Self {
            inner: tokenizer,
            token_bytes,
        })
    }

    fn new(inner: Tokenizer) -> Result<Self, TextError> {
        let unicode_to_byte = unicode_to_byte();
        let size = inner.get_vocab_size(true) as u32;
        let token_bytes = (0..size)
            .map(|id| {
                let token = inner.id_to_token(id).unwrap_or_default();
                if inner.get_added_vocabulary().is_special_token(&token) {
                    return token.into_bytes();
                }
                token.chars().map(|c| token_byte(&unicode_to_byte, c)).collect()
            })
            .collect();
        Ok(Self { inner, token_bytes })
    }

    /// Tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Token ids of `text`; `<|endoftext|>` in the text is the special token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tokenizer_error)?
            .get_ids()
            .to_vec())
    }

    /// The raw bytes of a token (a token may hold part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
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
