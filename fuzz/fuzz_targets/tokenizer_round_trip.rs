//! Any bytes, as text, through GPT-2's tokenizer and back: decoding the ids gives the text
//! again, and every id is in the vocabulary.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use text::Gpt2Tokenizer;

fn tokenizer() -> &'static Gpt2Tokenizer {
    static TOKENIZER: OnceLock<Gpt2Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Gpt2Tokenizer::builtin().expect("the built-in tokenizer"))
}

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let tokenizer = tokenizer();
    let ids = tokenizer.encode(&text).expect("any text encodes");
    assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
    assert_eq!(tokenizer.decode(&ids), text);
});
