//! Any bytes as the JSON body of each of textgen's request types, parsed and then validated
//! against GPT-2's tokenizer and the default limits: a request, or a 4xx error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use text::Gpt2Tokenizer;
use textgen::completions::CompletionRequest;
use textgen::embeddings::EmbeddingsRequest;
use textgen::search::{RerankArgs, SearchRequest};

fn tokenizer() -> &'static Gpt2Tokenizer {
    static TOKENIZER: OnceLock<Gpt2Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Gpt2Tokenizer::builtin().expect("the built-in tokenizer"))
}

fn client_error(error: &runtime::ApiError) {
    assert!(error.status.is_client_error(), "{error}");
}

fuzz_target!(|body: &[u8]| {
    let tokenizer = tokenizer();
    if let Ok(request) = serde_json::from_slice::<CompletionRequest>(body) {
        if let Err(e) = request.validate(tokenizer, 1024) {
            client_error(&e);
        }
    }
    if let Ok(request) = serde_json::from_slice::<EmbeddingsRequest>(body) {
        if let Err(e) = request.validate(tokenizer, 1024, 768, 256) {
            client_error(&e);
        }
    }
    if let Ok(request) = serde_json::from_slice::<SearchRequest>(body) {
        let rerank = RerankArgs {
            rerank_weight: 1.0,
            passage_tokens: 32,
        };
        if let Err(e) = request.validate(None, tokenizer, 1024, 200, &rerank) {
            client_error(&e);
        }
    }
});
