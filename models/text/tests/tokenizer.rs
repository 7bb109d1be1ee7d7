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

/// GPT-2's BPE as Hugging Face's `tokenizers` builds it (the old implementation of this crate),
/// saved as the `tokenizer.json` a model directory carries.
fn huggingface_tokenizer() -> tokenizers::Tokenizer {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let gunzip = |name: &str| {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(data.join(name)).unwrap()),
            &mut text,
        )
        .unwrap();
        text
    };
    let vocab: ahash::AHashMap<String, u32> = serde_json::from_str(&gunzip("gpt2-vocab.json.gz")).unwrap();
    let merges = gunzip("gpt2-merges.txt.gz")
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.is_empty())
        .map(|line| {
            let (a, b) = line.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().unwrap();
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
    tokenizer
        .add_special_tokens([tokenizers::AddedToken::from(text::END_OF_TEXT, true)])
        .unwrap();
    tokenizer
}

/// A `tokenizer.json` written by `tokenizers` reads back into the same tokenizer: the same ids
/// as `tokenizers` gives, on the corpus and on a 20,000-character run of one symbol (one
/// pre-token, which the merges must not take quadratic time over).
#[test]
fn tokenizer_json_written_by_tokenizers_encodes_as_tokenizers_does() {
    let reference = huggingface_tokenizer();
    let dir = std::env::temp_dir().join(format!("tokenizer-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    reference.save(&path, false).unwrap();
    let ours = Gpt2Tokenizer::from_tokenizer_json(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ours.vocab_size(), 50_257);
    let corpus = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer-corpus.jsonl"),
    )
    .unwrap();
    let long_run = "!".repeat(20_000) + " and the end";
    let texts = corpus
        .lines()
        .take(2_000)
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .chain([long_run, "a<|endoftext|>b<|endoftext|>".to_string()]);
    for text in texts {
        let want = reference.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(ours.encode(&text).unwrap(), want, "encoding {text:?}");
    }
}

#[test]
fn a_tokenizer_json_that_is_not_gpt2s_bpe_is_refused() {
    let dir = std::env::temp_dir().join(format!("tokenizer-json-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, r#"{"model": {"type": "WordPiece", "vocab": {}}}"#).unwrap();
    let error = Gpt2Tokenizer::from_tokenizer_json(&path).unwrap_err().to_string();
    assert!(error.contains("not a BPE model"), "{error}");
    std::fs::write(
        &path,
        r#"{"model": {"type": "BPE", "vocab": {"a": 4000000000}, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}}"#,
    )
    .unwrap();
    let error = Gpt2Tokenizer::from_tokenizer_json(&path).unwrap_err().to_string();
    assert!(error.contains("the vocabulary has gaps"), "{error}");
    std::fs::write(&path, "{not json").unwrap();
    assert!(Gpt2Tokenizer::from_tokenizer_json(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
