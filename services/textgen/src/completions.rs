//! OpenAI's completions request: parsing (wrong types are 400) and validation (values out of
//! the documented ranges are 422), all decided before any model work.

use std::collections::HashMap;

use runtime::error::excerpt;
use runtime::ApiError;
use serde::Deserialize;
use text::{GenerateOptions, Gpt2Tokenizer, SamplingParams, END_OF_TEXT};

use crate::error::{api_error, invalid};

/// `prompt`: a string, strings, tokens, or lists of tokens.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `stop`: one string or up to four.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The request body. Unknown fields (`model`, `user`, ...) are accepted and ignored: clients
/// send them, and the service serves one model whatever `model` says.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// A string, strings, token ids or lists of token ids; absent or `""` is `<|endoftext|>`.
    pub prompt: Option<Prompt>,
    /// Default 16; the prompt and `max_tokens` within the context (else 422
    /// `context_length_exceeded`); 0 with `echo` scores the prompt.
    pub max_tokens: Option<u64>,
    /// Default 1; 0 is greedy.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// Choices per prompt (prompts x n at most 128); choice `i` samples with `seed + i`.
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u64>,
    /// Up to 4 strings, matched across token boundaries.
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    /// Alternatives per token in `top_logprobs`.
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: bool,
    /// Server-Sent Events, one chunk per token, then `data: [DONE]`.
    #[serde(default)]
    pub stream: bool,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    /// Token id -> -100..100, added to the logits.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Only equal to `n`.
    pub best_of: Option<u64>,
    /// Only empty: GPT-2 has no suffix.
    pub suffix: Option<String>,
    /// Extension: 0 keeps all.
    pub top_k: Option<u64>,
    /// Extension: CTRL's, over generated tokens; above 0.
    pub repetition_penalty: Option<f32>,
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options` of a streamed completion.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    /// A last chunk, before `[DONE]`, with no choices and the request's `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// A validated request: tokenized prompts and the options of every choice.
#[derive(Debug)]
pub struct Completion {
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    pub options: GenerateOptions,
    /// Base seed; choice `i` samples with `seed + i`.
    pub seed: u64,
    pub echo: bool,
    pub stream: bool,
    /// A streamed answer ends with a `usage` chunk.
    pub include_usage: bool,
}

/// The most choices (`len(prompt) * n`) one request may ask for.
pub const MAX_CHOICES: usize = 128;

fn check_range(name: &str, value: Option<f32>, low: f32, high: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(low..=high).contains(&v) => Err(invalid(format!(
            "{name} must be between {low} and {high}, got {v}"
        ))),
        _ => Ok(()),
    }
}

impl CompletionRequest {
    /// Checks every value and tokenizes the prompts; `context` is the model's length.
    pub fn validate(self, tokenizer: &Gpt2Tokenizer, context: usize) -> Result<Completion, ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if let Some(r) = self.repetition_penalty.filter(|r| !(*r > 0.0 && r.is_finite())) {
            return Err(invalid(format!("repetition_penalty must be positive, got {r}")));
        }
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES as u64 {
            return Err(invalid(format!("n must be between 1 and {MAX_CHOICES}, got {n}")));
        }
        if self.best_of.is_some_and(|b| b != n) {
            return Err(invalid(
                "best_of is not supported (leave it out or set it equal to n)",
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(invalid("suffix is not supported by GPT-2"));
        }
        let logprobs = self.logprobs.map(|l| l as usize);
        if logprobs.is_some_and(|l| l > 5) {
            return Err(invalid(format!(
                "logprobs must be between 0 and 5, got {}",
                logprobs.unwrap_or(0)
            )));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(invalid("stream_options is only allowed when stream is true"));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(list)) => list,
        };
        if stop.len() > 4 {
            return Err(invalid(format!(
                "stop may hold up to 4 sequences, got {}",
                stop.len()
            )));
        }
        let vocab = tokenizer.vocab_size();
        let mut logit_bias = HashMap::new();
        for (token, bias) in self.logit_bias.unwrap_or_default() {
            let id: u32 = token
                .parse()
                .map_err(|_| invalid(format!("logit_bias key `{}` is not a token id", excerpt(&token))))?;
            if id as usize >= vocab {
                return Err(invalid(format!(
                    "logit_bias token {id} is outside the vocabulary of {vocab}"
                )));
            }
            if !(-100.0..=100.0).contains(&bias) {
                return Err(invalid(format!(
                    "logit_bias values must be between -100 and 100, got {bias}"
                )));
            }
            logit_bias.insert(id, bias);
        }
        let encode = |text: &str| -> Result<Vec<u32>, ApiError> {
            let text = if text.is_empty() { END_OF_TEXT } else { text };
            tokenizer.encode(text).map_err(api_error)
        };
        let prompts = match self.prompt {
            None => vec![encode("")?],
            Some(Prompt::Text(text)) => vec![encode(&text)?],
            Some(Prompt::Texts(texts)) => texts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
            Some(Prompt::Tokens(tokens)) => vec![tokens],
            Some(Prompt::TokenLists(lists)) => lists,
        };
        if prompts.is_empty() {
            return Err(invalid("prompt is an empty list"));
        }
        if prompts.len() * n as usize > MAX_CHOICES {
            return Err(invalid(format!(
                "{} prompts x n = {n} is over {MAX_CHOICES} choices",
                prompts.len()
            )));
        }
        let max_tokens = self.max_tokens.unwrap_or(16) as usize;
        for (i, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(invalid(format!("prompt {i} has no tokens")));
            }
            if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(invalid(format!(
                    "prompt {i} has token {bad}, outside the vocabulary of {vocab}"
                )));
            }
            if prompt.len().saturating_add(max_tokens) > context {
                return Err(ApiError::invalid(
                    "context_length_exceeded",
                    format!(
                        "This model's maximum context length is {context} tokens, however you requested {} tokens \
                         ({} in your prompt; {max_tokens} for the completion). Please reduce your prompt or completion length.",
                        prompt.len() + max_tokens,
                        prompt.len()
                    ),
                ));
            }
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0) as usize,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            logit_bias,
            seed: 0,
        };
        Ok(Completion {
            prompts,
            n: n as usize,
            options: GenerateOptions {
                max_tokens,
                sampling,
                stop,
                logprobs,
            },
            seed: self.seed.map_or_else(rand::random, |s| s as u64),
            echo: self.echo,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}
