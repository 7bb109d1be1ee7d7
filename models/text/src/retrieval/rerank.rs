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
//! cost of a candidate to one forward pass of `passage_tokens + |q| + 2` tokens.

use std::collections::HashSet;

use crate::gpt2::{Gpt2, KvCache};
use crate::tokenizer::{Gpt2Tokenizer, END_OF_TEXT};
use crate::TextError;

use super::lexical::{words, Analyzer};

/// GPT-2 tokens per word of English text, roughly: turns a token budget into a word window.
const TOKENS_PER_WORD: f32 = 1.4;

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
        let prior = self.continuation_logprob(&[self.end_of_text], &tokens)?;
        let mut analyzer = Analyzer::default();
        let terms = analyzer.terms(query).into_iter().map(|(_, term)| term).collect();
        Ok(RerankQuery { tokens, prior, terms })
    }

    /// The model score of one document for a prepared query.
    pub fn score(&self, query: &RerankQuery, document: &str) -> Result<f32, TextError> {
        if query.tokens.is_empty() {
            return Ok(0.0);
        }
        let budget = self
            .passage_tokens
            .min(self.model.config().n_positions - 1 - self.separator.len() - query.tokens.len());
        let mut context = vec![self.end_of_text];
        let passage = passage(document, &query.terms, budget);
        let passage_tokens = self.tokenizer.encode(passage)?;
        context.extend(passage_tokens.iter().take(budget));
        context.extend(&self.separator);
        Ok(self.continuation_logprob(&context, &query.tokens)? - query.prior)
    }

    /// `log P(continuation | context)`, summed over the continuation's tokens.
    fn continuation_logprob(&self, context: &[u32], continuation: &[u32]) -> Result<f32, TextError> {
        if continuation.is_empty() {
            return Ok(0.0);
        }
        let tokens: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let hidden = self.model.forward(&tokens, &mut KvCache::default())?;
        let predicting = hidden.narrow(0, context.len() - 1, continuation.len())?;
        let logits: Vec<Vec<f32>> = self.model.logits(&predicting)?.to_vec2()?;
        Ok(logits
            .iter()
            .zip(continuation)
            .map(|(row, &token)| row[token as usize] - log_sum_exp(row))
            .sum())
    }
}

fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + values.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

/// The part of `document` that starts the window of about `budget` tokens holding the most
/// query terms (the first such window; the document's start when none matches). The caller
/// cuts it to `budget` tokens.
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
    let start = words.get(best.0).map_or(0, |&(offset, _)| offset);
    // Enough text for the budget and then some; tokenizing the whole rest would be wasted.
    let end = words
        .get(best.0 + 2 * window)
        .map_or(document.len(), |&(offset, _)| offset);
    &document[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(words: &[&str]) -> HashSet<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn passage_starts_at_the_densest_window_of_query_terms() {
        let document = "alpha beta gamma delta epsilon zeta eta theta fire crew fire iota kappa lambda";
        // A budget of 4 tokens is a window of 2 words; "fire crew" holds two hits.
        let found = passage(document, &terms(&["fire", "crew"]), 4);
        assert_eq!(found, "fire crew fire iota ");
        assert_eq!(
            passage(document, &terms(&["absent"]), 4),
            "alpha beta gamma delta "
        );
        assert_eq!(passage("", &terms(&["x"]), 4), "");
    }
}
