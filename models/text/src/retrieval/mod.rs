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
pub use rerank::{RerankQuery, Reranker};

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

/// Searches the documents of `index` (`text(i)` is document `i`), best first; equal scores in
/// document order. `stop` is asked before each batch of candidates goes through the model:
/// when it answers true (the client went away), the search ends with `Ok(None)`.
pub fn search<'t>(
    index: &Bm25Index,
    text: impl Fn(usize) -> &'t str,
    query: &str,
    options: SearchOptions,
    reranker: &Reranker,
    stop: impl Fn() -> bool,
) -> Result<Option<Vec<SearchHit>>, TextError> {
    let candidates = index.top(query, options.max_rerank);
    let model_scores: Vec<Option<f32>> = if options.rerank_weight == 0.0 {
        vec![None; candidates.len()]
    } else {
        let prepared = reranker.prepare(query)?;
        let texts: Vec<&str> = candidates.iter().map(|c| text(c.document)).collect();
        match reranker.score_all(&prepared, &texts, stop)? {
            Some(scores) => scores.into_iter().map(Some).collect(),
            None => return Ok(None),
        }
    };
    let mut hits: Vec<SearchHit> = candidates
        .iter()
        .zip(model_scores)
        .map(|(&Candidate { document, score }, model)| SearchHit {
            document,
            score: score + model.map_or(0.0, |m| options.rerank_weight * m),
            lexical: score,
            model,
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.document.cmp(&b.document)));
    Ok(Some(hits))
}
