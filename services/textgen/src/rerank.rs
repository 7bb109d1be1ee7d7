//! Reranking in the two shapes peers serve it: text-embeddings-inference's `/rerank` and the
//! Cohere / Jina `/v1/rerank`. Both are a search over the request's texts with every text
//! scored by the model: the same stage, scores and order as `/v1/search` over those texts.

use runtime::ApiError;
use serde::{Deserialize, Serialize};
use text::retrieval::SearchHit;

use crate::error::invalid;
use crate::search::SearchRequest;

/// text-embeddings-inference: `{"query", "texts", "return_text"?}`; its other fields
/// (`truncate`, `raw_scores`) are accepted and ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TeiRerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    #[serde(default)]
    pub return_text: bool,
}

/// A document of a Cohere-shaped request: a string, or `{"text": ...}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object { text: String },
}

/// Cohere / Jina: `{"query", "documents", "top_n"?, "return_documents"?}`; `model` is accepted
/// and ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CohereRerankRequest {
    pub query: String,
    pub documents: Vec<RerankDocument>,
    pub top_n: Option<u64>,
    #[serde(default)]
    pub return_documents: bool,
}

/// One text of `/rerank`'s answer; its `text` with `return_text`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeiRank {
    pub index: usize,
    /// `bm25 + rerank_weight * model`, as in search.
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `/v1/rerank`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CohereRerankAnswer {
    pub model: String,
    pub results: Vec<CohereRank>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CohereRank {
    pub index: usize,
    /// `bm25 + rerank_weight * model`, as in search.
    pub relevance_score: f32,
    /// With `return_documents`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<RankedText>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RankedText {
    pub text: String,
}

/// The search that scores every one of `texts` for `query`.
fn search_over(query: String, texts: Vec<String>) -> SearchRequest {
    let every_text = Some(texts.len() as u64);
    SearchRequest {
        query: Some(query),
        documents: Some(texts),
        file: None,
        max_rerank: every_text,
        return_metadata: false,
        rerank_weight: None,
    }
}

impl TeiRerankRequest {
    pub fn search(&self) -> SearchRequest {
        search_over(self.query.clone(), self.texts.clone())
    }

    /// Every text, best first.
    pub fn answer(&self, hits: &[SearchHit]) -> Vec<TeiRank> {
        hits.iter()
            .map(|hit| TeiRank {
                index: hit.document,
                score: hit.score,
                text: self.return_text.then(|| self.texts[hit.document].clone()),
            })
            .collect()
    }
}

impl CohereRerankRequest {
    fn texts(&self) -> Vec<String> {
        self.documents
            .iter()
            .map(|d| match d {
                RerankDocument::Text(text) | RerankDocument::Object { text } => text.clone(),
            })
            .collect()
    }

    /// The search, once `top_n` is checked against the documents.
    pub fn search(&self) -> Result<SearchRequest, ApiError> {
        if let Some(top_n) = self.top_n {
            if top_n == 0 || top_n > self.documents.len() as u64 {
                return Err(invalid(format!(
                    "top_n must be between 1 and the {} documents, got {top_n}",
                    self.documents.len()
                )));
            }
        }
        Ok(search_over(self.query.clone(), self.texts()))
    }

    /// The first `top_n`, best first.
    pub fn answer(&self, model: &str, hits: &[SearchHit]) -> CohereRerankAnswer {
        let texts = self.texts();
        let top_n = self.top_n.map_or(hits.len(), |n| n as usize);
        let results = hits
            .iter()
            .take(top_n)
            .map(|hit| CohereRank {
                index: hit.document,
                relevance_score: hit.score,
                document: self.return_documents.then(|| RankedText {
                    text: texts[hit.document].clone(),
                }),
            })
            .collect();
        CohereRerankAnswer {
            model: model.to_string(),
            results,
        }
    }
}
