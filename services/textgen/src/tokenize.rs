//! vLLM's `/tokenize` and `/detokenize`: a text's GPT-2 token ids, and the text of token ids.

use runtime::ApiError;
use serde::{Deserialize, Serialize};
use text::Gpt2Tokenizer;

use crate::error::{api_error, invalid};

/// `{"prompt": "..."}`; other fields (`model`, `add_special_tokens`) are accepted and ignored:
/// GPT-2 adds no special tokens.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenizeRequest {
    pub prompt: String,
}

/// `{"tokens": [...]}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u64>,
}

/// `/tokenize`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenizeAnswer {
    pub tokens: Vec<u32>,
    pub count: usize,
    /// The model's context, in tokens.
    pub max_model_len: usize,
}

/// `/detokenize`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DetokenizeAnswer {
    pub prompt: String,
}

impl TokenizeRequest {
    /// The tokens; `<|endoftext|>` in the text is the special token, as in completions' prompts.
    pub fn answer(&self, tokenizer: &Gpt2Tokenizer, context: usize) -> Result<TokenizeAnswer, ApiError> {
        let tokens = tokenizer.encode(&self.prompt).map_err(api_error)?;
        Ok(TokenizeAnswer {
            count: tokens.len(),
            tokens,
            max_model_len: context,
        })
    }
}

impl DetokenizeRequest {
    /// `{"prompt"}`: the tokens' bytes as text, any bytes that are not UTF-8 (a character cut
    /// between tokens) as U+FFFD.
    pub fn answer(&self, tokenizer: &Gpt2Tokenizer) -> Result<DetokenizeAnswer, ApiError> {
        let vocab = tokenizer.vocab_size();
        let ids = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < vocab)
                    .ok_or_else(|| invalid(format!("tokens[{i}] is {id}, outside the vocabulary of {vocab}")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        Ok(DetokenizeAnswer {
            prompt: tokenizer.decode(&ids),
        })
    }
}
