//! The second stage: GPT-2 judges how well each candidate explains the query.
//!
//! The model score of a document is the pointwise mutual information between the query and a
//! passage of the document, in nats, summed over the query's tokens:
//!
//! ```text
//! model(q, d) = log P(q | <|endoftext|> passage(d) "\n\n") - log P(q | <|endoftext|>)
//! ```
//!
//! The first term alone would favour queries that are likely anywhere; subtracting the query's
//! prior leaves the evidence the passage adds. The passage is the window of the document
//! (at most `passage_tokens` GPT-2 tokens) that holds the most query terms, which bounds the
//! cost of a candidate to `passage_tokens + |q| + 2` tokens of forward pass; candidates run in
//! batches, so that the matrix products are large.

use std::collections::HashSet;

use candle_core::Tensor;

use crate::gpt2::Gpt2;
use crate::sampling::log_sum_exp;
use crate::tokenizer::{Gpt2Tokenizer, END_OF_TEXT};
use crate::TextError;

use super::lexical::{words, Analyzer};

/// GPT-2 tokens per word of English text, roughly: turns a token budget into a word window.
const TOKENS_PER_WORD: f32 = 1.4;

/// Tokens per forward pass when scoring candidates: enough rows for the matrix products to run
/// at full speed, few enough to keep activations small and to notice a stop request often.
pub const BATCH_TOKENS: usize = 2048;

/// A query prepared once per search: its tokens, its prior, and its index terms.
#[derive(Debug, Clone)]
pub struct RerankQuery {
    tokens: Vec<u32>,
    /// `log P(q | <|endoftext|>)`.
    prior: f32,
    terms: HashSet<String>,
}

/// Scores documents against queries with GPT-2 (see the module documentation).
#[derive(Debug)]
pub struct Reranker<'a> {
    model: &'a Gpt2,
    tokenizer: &'a Gpt2Tokenizer,
    passage_tokens: usize,
    end_of_text: u32,
    separator: Vec<u32>,
}

impl<'a> Reranker<'a> {
    pub fn new(
        model: &'a Gpt2,
        tokenizer: &'a Gpt2Tokenizer,
        passage_tokens: usize,
    ) -> Result<Self, TextError> {
        let end_of_text = *tokenizer
            .encode(END_OF_TEXT)?
            .first()
            .ok_or_else(|| TextError::Tokenizer("no <|endoftext|> token".into()))?;
        Ok(Self {
            model,
            tokenizer,
            passage_tokens: passage_tokens.max(1),
            end_of_text,
            separator: tokenizer.encode("\n\n")?,
        })
    }

    /// Tokenizes the query and computes its prior; fails when the query alone leaves no room
    /// for a passage in the context.
    pub fn prepare(&self, query: &str) -> Result<RerankQuery, TextError> {
        let tokens = self.tokenizer.encode(query.trim())?;
        let context = self.model.config().n_positions;
        let needed = 2 + self.separator.len() + tokens.len();
        if needed > context {
            return Err(TextError::ContextOverflow {
                tokens: needed,
                context,
            });
        }
        let prior = self.continuation_logprobs(&[&[self.end_of_text]], &tokens)?[0];
        let mut analyzer = Analyzer::default();
        let terms = analyzer.terms(query).into_iter().map(|(_, term)| term).collect();
        Ok(RerankQuery { tokens, prior, terms })
    }

    /// The model score of one document for a prepared query.
    pub fn score(&self, query: &RerankQuery, document: &str) -> Result<f32, TextError> {
        let scores = self.score_all(query, &[document], || false)?;
        Ok(scores.and_then(|s| s.first().copied()).unwrap_or(0.0))
    }

    /// The model scores of `documents`, in order, computed in batches of about
    /// [`BATCH_TOKENS`] tokens; `stop` is asked before each batch, and `Ok(None)` answers a
    /// stop.
    pub fn score_all(
        &self,
        query: &RerankQuery,
        documents: &[&str],
        stop: impl Fn() -> bool,
    ) -> Result<Option<Vec<f32>>, TextError> {
        if query.tokens.is_empty() {
            return Ok(Some(vec![0.0; documents.len()]));
        }
        let budget = self
            .passage_tokens
            .min(self.model.config().n_positions - 1 - self.separator.len() - query.tokens.len());
        let mut scores = Vec::with_capacity(documents.len());
        let mut batch: Vec<Vec<u32>> = Vec::new();
        let mut batch_tokens = 0;
        for (i, document) in documents.iter().enumerate() {
            let passage_tokens = self.tokenizer.encode(passage(document, &query.terms, budget))?;
            let mut context = vec![self.end_of_text];
            context.extend(passage_tokens.iter().take(budget));
            context.extend(&self.separator);
            batch_tokens += context.len() + query.tokens.len();
            batch.push(context);
            if batch_tokens >= BATCH_TOKENS || i + 1 == documents.len() {
                if stop() {
                    return Ok(None);
                }
                let contexts: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
                let logprobs = self.continuation_logprobs(&contexts, &query.tokens)?;
                scores.extend(logprobs.into_iter().map(|l| l - query.prior));
                batch.clear();
                batch_tokens = 0;
            }
        }
        Ok(Some(scores))
    }

    /// `log P(continuation | context)` for each context, summed over the continuation's
    /// tokens, all contexts in one batch.
    fn continuation_logprobs(
        &self,
        contexts: &[&[u32]],
        continuation: &[u32],
    ) -> Result<Vec<f32>, TextError> {
        if continuation.is_empty() {
            return Ok(vec![0.0; contexts.len()]);
        }
        let sequences: Vec<Vec<u32>> = contexts.iter().map(|c| [c, continuation].concat()).collect();
        let sequences: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let hidden = self.model.forward_batch(&sequences)?;
        // The rows that predict the continuation's tokens, of every sequence, through the head
        // at once.
        let predicting = hidden
            .iter()
            .zip(contexts)
            .map(|(h, context)| h.narrow(0, context.len() - 1, continuation.len()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let logits: Vec<Vec<f32>> = self.model.logits(&Tensor::cat(&predicting, 0)?)?.to_vec2()?;
        Ok(logits
            .chunks(continuation.len())
            .map(|rows| {
                rows.iter()
                    .zip(continuation)
                    .map(|(row, &token)| (f64::from(row[token as usize]) - log_sum_exp(row)) as f32)
                    .sum()
            })
            .collect())
    }
}

/// The part of `document` around the window of about `budget` tokens that holds the most
/// query terms (the first such window; the document's start when none matches), with its
/// matches centred. The caller cuts it to `budget` tokens.
pub fn passage<'d>(document: &'d str, query_terms: &HashSet<String>, budget: usize) -> &'d str {
    let window = ((budget as f32 / TOKENS_PER_WORD) as usize).max(1);
    let mut analyzer = Analyzer::default();
    let words: Vec<(usize, bool)> = words(document)
        .map(|word| {
            let hit = analyzer
                .term(&word.lowercase)
                .is_some_and(|t| query_terms.contains(t));
            (word.offset, hit)
        })
        .collect();
    let mut best = (0, 0);
    let mut hits = 0;
    for end in 0..words.len() {
        hits += usize::from(words[end].1);
        if end >= window {
            hits -= usize::from(words[end - window].1);
        }
        let start = (end + 1).saturating_sub(window);
        if hits > best.1 {
            best = (start, hits);
        }
    }
    let (mut start, matches) = best;
    if matches > 0 {
        let in_window = |i: &usize| words[*i].1;
        let end = (start + window).min(words.len());
        let first = (start..end).find(in_window).unwrap_or(start);
        let last = (start..end).rev().find(in_window).unwrap_or(first);
        start = first.saturating_sub((window - (last - first + 1)) / 2);
    }
    let offset = |i: usize| words.get(i).map_or(document.len(), |&(offset, _)| offset);
    // Enough text for the budget and then some; tokenizing the whole rest would be wasted.
    &document[offset(start)..offset(start + 2 * window)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(words: &[&str]) -> HashSet<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn passage_is_the_densest_window_of_query_terms_centred() {
        let document = "alpha beta gamma delta epsilon zeta eta theta fire crew fire iota kappa lambda";
        // A budget of 4 tokens is a window of 2 words; "fire crew" holds two hits.
        let found = passage(document, &terms(&["fire", "crew"]), 4);
        assert_eq!(found, "fire crew fire iota ");
        // A budget of 7 tokens is a window of 5 words, centred on the one match.
        let found = passage(document, &terms(&["zeta"]), 7);
        assert_eq!(found, "delta epsilon zeta eta theta fire crew fire iota kappa ");
        assert_eq!(
            passage(document, &terms(&["absent"]), 4),
            "alpha beta gamma delta "
        );
        assert_eq!(passage("", &terms(&["x"]), 4), "");
    }
}
