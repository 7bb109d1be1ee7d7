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
//! cost of a candidate to `passage_tokens + |q| + 2` tokens of forward pass. The candidates
//! are read as pieces ([`crate::reading`]): alone, in passes large enough for the matrix
//! products to run at full speed; beside generations, a bounded number of rows per step.

use std::collections::HashSet;

use crate::gpt2::Gpt2;
use crate::reading::{read_alone, Piece, PieceOutput, Reading, Sequences};
use crate::sampling::log_sum_exp;
use crate::tokenizer::{Gpt2Tokenizer, END_OF_TEXT};
use crate::TextError;

use super::lexical::{words, Analyzer};

/// GPT-2 tokens per word of English text, roughly: turns a token budget into a word window.
const TOKENS_PER_WORD: f32 = 1.4;

/// A query prepared once per search: its tokens and its index terms.
#[derive(Debug, Clone)]
pub struct RerankQuery {
    tokens: Vec<u32>,
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

    /// The model it scores with.
    pub fn model(&self) -> &'a Gpt2 {
        self.model
    }

    /// Tokenizes the query and finds its index terms; fails when the query alone leaves no
    /// room for a passage in the context.
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
        let mut analyzer = Analyzer::default();
        let terms = analyzer.terms(query).into_iter().map(|(_, term)| term).collect();
        Ok(RerankQuery { tokens, terms })
    }

    /// The model score of one document for a prepared query.
    pub fn score(&self, query: &RerankQuery, document: &str) -> Result<f32, TextError> {
        let scores = self.score_all(query, &[document], || false)?;
        Ok(scores.and_then(|s| s.first().copied()).unwrap_or(0.0))
    }

    /// The model scores of `documents`, in order, read alone ([`read_alone`]); `stop` is asked
    /// before each pass, and `Ok(None)` answers a stop.
    pub fn score_all(
        &self,
        query: &RerankQuery,
        documents: &[&str],
        stop: impl Fn() -> bool,
    ) -> Result<Option<Vec<f32>>, TextError> {
        let mut scoring = self.scoring(query, documents)?;
        Ok(read_alone(self.model, &mut scoring, stop)?.then(|| scoring.scores()))
    }

    /// The scoring of `documents` for `query`, to be read ([`Reading`]): the passages are
    /// chosen and tokenized here, so that what is left is the model's work alone.
    pub fn scoring(&self, query: &RerankQuery, documents: &[&str]) -> Result<Scoring, TextError> {
        if query.tokens.is_empty() {
            return Ok(Scoring {
                sequences: Sequences::new(Vec::new()),
                predicting: Vec::new(),
                logprobs: Vec::new(),
                documents: documents.len(),
            });
        }
        let budget = self
            .passage_tokens
            .min(self.model.config().n_positions - 1 - self.separator.len() - query.tokens.len());
        // The first context is `<|endoftext|>` alone: the query's prior.
        let mut contexts = vec![vec![self.end_of_text]];
        for document in documents {
            let passage_tokens = self.tokenizer.encode(passage(document, &query.terms, budget))?;
            let mut context = vec![self.end_of_text];
            context.extend(passage_tokens.iter().take(budget));
            context.extend(&self.separator);
            contexts.push(context);
        }
        // The row at a position predicts the next token: the query's come after the context's
        // last row up to the one before the sequence's end.
        let predicting = contexts
            .iter()
            .map(|context| context.len() - 1..context.len() - 1 + query.tokens.len())
            .collect();
        let sequences = contexts
            .into_iter()
            .map(|context| [context, query.tokens.clone()].concat())
            .collect();
        Ok(Scoring {
            logprobs: vec![0.0; documents.len() + 1],
            sequences: Sequences::new(sequences),
            predicting,
            documents: documents.len(),
        })
    }
}

/// A search's model stage being read: `<|endoftext|> passage "\n\n" query` per candidate,
/// after `<|endoftext|> query` for the prior, each scored on the query's tokens.
#[derive(Debug)]
pub struct Scoring {
    sequences: Sequences,
    /// The positions of each sequence whose rows predict the query's tokens.
    predicting: Vec<std::ops::Range<usize>>,
    /// `log P(query | context)` of each sequence so far.
    logprobs: Vec<f32>,
    documents: usize,
}

impl Scoring {
    /// The model score of each document, in order, once every row is read.
    pub fn scores(&self) -> Vec<f32> {
        match self.logprobs.split_first() {
            Some((prior, logprobs)) => logprobs.iter().map(|l| l - prior).collect(),
            None => vec![0.0; self.documents],
        }
    }
}

impl Reading for Scoring {
    fn unread(&self) -> usize {
        self.sequences.unread()
    }

    fn claim<'s>(&'s mut self, rows: usize, pieces: &mut Vec<Piece<'s>>) {
        let predicting = &self.predicting;
        self.sequences.claim(rows, |i| predicting[i].clone(), pieces);
    }

    fn absorb(&mut self, outputs: Vec<PieceOutput>) -> Result<(), TextError> {
        for ((i, positions, _), output) in self.sequences.absorbed().into_iter().zip(outputs) {
            let first = positions.start.max(self.predicting[i].start);
            let tokens = self.sequences.tokens(i);
            for (row, &token) in output.logits.iter().zip(&tokens[first + 1..]) {
                self.logprobs[i] += (f64::from(row[token as usize]) - log_sum_exp(row)) as f32;
            }
        }
        Ok(())
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
