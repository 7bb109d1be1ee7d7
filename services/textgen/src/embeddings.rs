//! OpenAI's embeddings API: `input` as a string, strings, tokens or lists of tokens;
//! `encoding_format` `float` (default) or `base64` (little-endian f32 bytes, what the official
//! 1.x client asks for by default).

use base64::Engine as _;
use runtime::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use text::Gpt2Tokenizer;

use crate::error::{api_error, invalid};

/// `input`: one text, several, or already tokenized.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// The request body; unknown fields (`model`, `user`) are accepted and ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    /// Up to `--max-embedding-inputs` inputs, each 1 to the context's tokens.
    pub input: Option<Input>,
    /// `float` (default) or `base64` (little-endian f32 bytes).
    pub encoding_format: Option<EncodingFormat>,
    /// If given, the model's width.
    pub dimensions: Option<u64>,
}

/// The answer: one unit-length vector per input, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmbeddingsAnswer {
    pub object: &'static str,
    pub data: Vec<EmbeddingItem>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmbeddingItem {
    pub object: &'static str,
    pub index: usize,
    /// Floats, or their little-endian f32 bytes in base64.
    #[schema(value_type = serde_json::Value)]
    pub embedding: Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// A validated request: each input's tokens.
#[derive(Debug)]
pub struct Embeddings {
    pub inputs: Vec<Vec<u32>>,
    pub encoding_format: EncodingFormat,
}

impl EmbeddingsRequest {
    /// Tokenizes and checks every input: none empty, none beyond the context, at most
    /// `max_inputs` of them; `dimensions`, when given, must be the model's width.
    pub fn validate(
        self,
        tokenizer: &Gpt2Tokenizer,
        context: usize,
        width: usize,
        max_inputs: usize,
    ) -> Result<Embeddings, ApiError> {
        if let Some(dimensions) = self.dimensions.filter(|&d| d != width as u64) {
            return Err(invalid(format!(
                "this model's embeddings have {width} dimensions; dimensions {dimensions} is not supported"
            )));
        }
        let encode = |text: &String| tokenizer.encode(text).map_err(api_error);
        let inputs: Vec<Vec<u32>> = match self.input {
            None => return Err(invalid("input is required: a string or a list of strings")),
            Some(Input::Text(text)) => vec![encode(&text)?],
            Some(Input::Texts(texts)) => texts.iter().map(encode).collect::<Result<_, _>>()?,
            Some(Input::Tokens(tokens)) => vec![tokens],
            Some(Input::TokenLists(lists)) => lists,
        };
        if inputs.is_empty() {
            return Err(invalid("input is an empty list"));
        }
        if inputs.len() > max_inputs {
            return Err(invalid(format!(
                "input may hold up to {max_inputs} items, got {}",
                inputs.len()
            )));
        }
        let vocab = tokenizer.vocab_size();
        for (i, tokens) in inputs.iter().enumerate() {
            if tokens.is_empty() {
                return Err(invalid(format!("input {i} is empty")));
            }
            if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(invalid(format!(
                    "input {i} has token {bad}, outside the vocabulary of {vocab}"
                )));
            }
            if tokens.len() > context {
                return Err(ApiError::invalid(
                    "context_length_exceeded",
                    format!(
                        "This model's maximum context length is {context} tokens, however input {i} has {} tokens.",
                        tokens.len()
                    ),
                ));
            }
        }
        Ok(Embeddings {
            inputs,
            encoding_format: self.encoding_format.unwrap_or(EncodingFormat::Float),
        })
    }
}

impl Embeddings {
    /// The answer for `vectors` (one per input, in order).
    pub fn answer(&self, model: &str, vectors: &[Vec<f32>]) -> EmbeddingsAnswer {
        let data = vectors
            .iter()
            .enumerate()
            .map(|(index, vector)| {
                let embedding = match self.encoding_format {
                    EncodingFormat::Float => json!(vector),
                    EncodingFormat::Base64 => {
                        let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                };
                EmbeddingItem {
                    object: "embedding",
                    index,
                    embedding,
                }
            })
            .collect();
        let tokens: usize = self.inputs.iter().map(Vec::len).sum();
        EmbeddingsAnswer {
            object: "list",
            data,
            model: model.to_string(),
            usage: EmbeddingsUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        }
    }
}
