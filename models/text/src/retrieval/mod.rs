//! Search in two stages: BM25 keeps the `max_rerank` best candidates, then GPT-2 reranks them.
//!
//! A hit's score is `lexical + rerank_weight * model`: the BM25 score plus the weighted
//! GPT-2 pointwise mutual information of query and passage (see [`rerank`]). Both are sums of
//! per-term evidence in nats-like units, so a weight of 1 lets neither drown the other; a
//! weight of 0 skips the model altogether.

pub mod corpus;
pub mod lexical;
pub mod rerank;

pub use corpus::{Corpus, CorpusError, Document};
pub use lexical::{Bm25Index, Bm25Params, Candidate};
pub use rerank::{RerankQuery, Reranker, Scoring};

use crate::reading::{read_alone, Piece, PieceOutput, Reading};
use crate::TextError;

/// How one search runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    /// Candidates the lexical stage keeps for the model.
    pub max_rerank: usize,
    /// Weight of the model score; 0 ranks by BM25 alone.
    pub rerank_weight: f32,
}

/// One ranked document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchHit {
    pub document: usize,
    /// `lexical + rerank_weight * model`.
    pub score: f32,
    pub lexical: f32,
    /// The GPT-2 score, when the model took part.
    pub model: Option<f32>,
}

/// Searches the documents of `index` (`text(i)` is document `i`) alone ([`read_alone`]), best
/// first; equal scores in document order. `stop` is asked before each pass of the model over
/// candidates: when it answers true (the client went away), the search ends with `Ok(None)`.
pub fn search<'t>(
    index: &Bm25Index,
    text: impl Fn(usize) -> &'t str,
    query: &str,
    options: SearchOptions,
    reranker: &Reranker,
    stop: impl Fn() -> bool,
) -> Result<Option<Vec<SearchHit>>, TextError> {
    let mut pending = PendingSearch::new(index, text, query, options, reranker)?;
    Ok(read_alone(reranker.model(), &mut pending, stop)?.then(|| pending.hits()))
}

/// A search whose lexical stage has run: its candidates and, unless the model takes no part,
/// their scoring, to be read ([`Reading`]) alone or beside other work; then its hits.
#[derive(Debug)]
pub struct PendingSearch {
    candidates: Vec<Candidate>,
    rerank_weight: f32,
    scoring: Option<Scoring>,
}

impl PendingSearch {
    /// Runs the lexical stage and prepares the model's (tokenizing the candidates' passages):
    /// everything but the model's own work.
    pub fn new<'t>(
        index: &Bm25Index,
        text: impl Fn(usize) -> &'t str,
        query: &str,
        options: SearchOptions,
        reranker: &Reranker,
    ) -> Result<Self, TextError> {
        let candidates = index.top(query, options.max_rerank);
        let scoring = match options.rerank_weight == 0.0 {
            true => None,
            false => {
                let prepared = reranker.prepare(query)?;
                let texts: Vec<&str> = candidates.iter().map(|c| text(c.document)).collect();
                Some(reranker.scoring(&prepared, &texts)?)
            }
        };
        Ok(Self {
            candidates,
            rerank_weight: options.rerank_weight,
            scoring,
        })
    }

    /// The ranked hits, once every row is read.
    pub fn hits(&self) -> Vec<SearchHit> {
        let model_scores: Vec<Option<f32>> = match &self.scoring {
            Some(scoring) => scoring.scores().into_iter().map(Some).collect(),
            None => vec![None; self.candidates.len()],
        };
        let mut hits: Vec<SearchHit> = self
            .candidates
            .iter()
            .zip(model_scores)
            .map(|(&Candidate { document, score }, model)| SearchHit {
                document,
                score: score + model.map_or(0.0, |m| self.rerank_weight * m),
                lexical: score,
                model,
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.document.cmp(&b.document)));
        hits
    }
}

impl Reading for PendingSearch {
    fn unread(&self) -> usize {
        self.scoring.as_ref().map_or(0, Scoring::unread)
    }

    fn claim<'s>(&'s mut self, rows: usize, pieces: &mut Vec<Piece<'s>>) {
        if let Some(scoring) = &mut self.scoring {
            scoring.claim(rows, pieces);
        }
    }

    fn absorb(&mut self, outputs: Vec<PieceOutput>) -> Result<(), TextError> {
        match &mut self.scoring {
            Some(scoring) => scoring.absorb(outputs),
            None => Ok(()),
        }
    }
}
