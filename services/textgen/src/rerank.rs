//! Reranking in the two shapes peers serve it: text-embeddings-inference's `/rerank` and the
//! Cohere / Jina `/v1/rerank`. Both are a search over the request's texts with every text
//! scored by the model: the same stage, scores and order as `/v1/search` over those texts.

use runtime::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use text::retrieval::SearchHit;

use crate::error::invalid;
use crate::search::SearchRequest;

/// text-embeddings-inference: `{"query", "texts", "return_text"?}`; its other fields
/// (`truncate`, `raw_scores`) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct TeiRerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    #[serde(default)]
    pub return_text: bool,
}

/// A document of a Cohere-shaped request: a string, or `{"text": ...}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object { text: String },
}

/// Cohere / Jina: `{"query", "documents", "top_n"?, "return_documents"?}`; `model` is accepted
/// and ignored.
#[derive(Debug, Deserialize)]
pub struct CohereRerankRequest {
    pub query: String,
    pub documents: Vec<RerankDocument>,
    pub top_n: Option<u64>,
    #[serde(default)]
    pub return_documents: bool,
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

    /// `[{"index", "score", "text"?}]`, best first.
    pub fn answer(&self, hits: &[SearchHit]) -> Value {
        let ranked: Vec<Value> = hits
            .iter()
            .map(|hit| {
                let mut item = json!({"index": hit.document, "score": hit.score});
                if self.return_text {
                    item["text"] = json!(self.texts[hit.document]);
                }
                item
            })
            .collect();
        Value::Array(ranked)
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

    /// `{"model", "results": [{"index", "relevance_score", "document"?: {"text"}}]}`, best
    /// first, the first `top_n`.
    pub fn answer(&self, model: &str, hits: &[SearchHit]) -> Value {
        let texts = self.texts();
        let top_n = self.top_n.map_or(hits.len(), |n| n as usize);
        let results: Vec<Value> = hits
            .iter()
            .take(top_n)
            .map(|hit| {
                let mut item = json!({"index": hit.document, "relevance_score": hit.score});
                if self.return_documents {
                    item["document"] = json!({"text": texts[hit.document]});
                }
                item
            })
            .collect();
        json!({"model": model, "results": results})
    }
}
