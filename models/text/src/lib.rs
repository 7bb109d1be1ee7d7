//! GPT-2 in candle, its byte-level BPE tokenizer, sampling, retrieval (BM25 then GPT-2
//! reranking) and embeddings, with no HTTP in it.

mod activation;
mod attention;
mod dense;
pub mod embedding;
pub mod generate;
pub mod gpt2;
mod matvec;
mod norm;
pub mod reading;
pub mod retrieval;
pub mod sampling;
pub mod tokenizer;

pub use attention::KvCache;
pub use embedding::embed;
pub use generate::{FinishReason, GenerateOptions, Generation, Step, StopMatcher, TokenLogprob};
pub use gpt2::{Gpt2, Gpt2Config, WeightPrecision};
pub use reading::{read_alone, Piece, PieceOutput, Reading};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{Gpt2Tokenizer, StreamDecoder, END_OF_TEXT};

/// What can go wrong loading or running GPT-2.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("invalid weights: {0}")]
    Weights(String),
    #[error("invalid config.json: {0}")]
    Config(String),
    #[error("{tokens} tokens do not fit the context of {context}")]
    ContextOverflow { tokens: usize, context: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A batched step failed; everything that had rows in it gets this.
    #[error("a batched model step failed: {0}")]
    Step(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
