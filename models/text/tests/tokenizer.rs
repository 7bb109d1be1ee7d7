//! The tokenizer against OpenAI's own (`tiktoken`, r50k_base) on 10,000 strings with Unicode,
//! emoji, runs of spaces, tabs, newlines and `<|endoftext|>`: byte-exact both ways, and the
//! streaming decoder rebuilds every string without a broken character
//! (`scripts/make_tokenizer_corpus.py` wrote the corpus). Both the built-in BPE and the one read
//! from GPT-2's files (where ../shared/data has them) are checked.

use std::path::PathBuf;

use serde_json::Value;
use text::{Gpt2Tokenizer, StreamDecoder};

/// The built-in BPE (always there) and, where ../shared/data has them, GPT-2's files.
fn all_tokenizers() -> Vec<Gpt2Tokenizer> {
    let mut all = vec![Gpt2Tokenizer::builtin().unwrap()];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/gpt2-tokenizer");
    if dir.is_dir() {
        all.push(
            Gpt2Tokenizer::from_vocab_and_merges(&dir.join("encoder.json"), &dir.join("vocab.bpe")).unwrap(),
        );
    } else {
        eprintln!("skipped GPT-2's files: {} is absent", dir.display());
    }
    all
}

#[test]
fn corpus_is_byte_exact_both_ways() {
    let corpus = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer-corpus.jsonl"),
    )
    .unwrap();
    for tokenizer in all_tokenizers() {
        assert_eq!(tokenizer.vocab_size(), 50_257);
        let mut checked = 0;
        for line in corpus.lines() {
            let case: Value = serde_json::from_str(line).unwrap();
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .map(|t| t.parse().unwrap())
                .collect();
            let got = tokenizer.encode(text).unwrap();
            assert_eq!(got, want, "encoding {text:?}");
            assert_eq!(tokenizer.decode(&got), text, "decoding {want:?}");

            let mut stream = StreamDecoder::default();
            let mut streamed: String = got
                .iter()
                .map(|&id| stream.push(tokenizer.token_bytes(id)))
                .collect();
            streamed.push_str(&stream.finish());
            assert_eq!(streamed, text, "streaming {want:?}");
            checked += 1;
        }
        assert_eq!(checked, 10_000);
    }
}

#[test]
fn end_of_text_is_one_special_token() {
    for tokenizer in all_tokenizers() {
        assert_eq!(tokenizer.encode("a<|endoftext|>b").unwrap(), [64, 50256, 65]);
        assert_eq!(tokenizer.token_bytes(50256), b"<|endoftext|>");
        assert_eq!(tokenizer.decode(&[15496, 11, 995, 0]), "Hello, world!");
    }
}
