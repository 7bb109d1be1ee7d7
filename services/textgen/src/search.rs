//! OpenAI's legacy search API: parsing and validation of a request (all decided before any
//! model work), and the answer, written once for HTTP and the command line.

use std::sync::Arc;

use axum::http::StatusCode;
use runtime::error::excerpt;
use runtime::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use text::retrieval::{Corpus, SearchHit, SearchOptions};
use text::Gpt2Tokenizer;

use crate::error::{api_error, invalid};

/// How searches rerank, for `serve` and `search` alike.
#[derive(Debug, Clone, clap::Args)]
pub struct RerankArgs {
    /// Weight of GPT-2's score against BM25's in a result's score (0: BM25 alone, no model).
    #[arg(long, env = "RERANK_WEIGHT", default_value_t = 1.0)]
    pub rerank_weight: f32,

    /// GPT-2 tokens of each candidate the reranker reads: the window with the most query terms
    /// (about a sentence; the rerank's cost grows with it).
    #[arg(long, env = "RERANK_PASSAGE_TOKENS", default_value_t = 32)]
    pub passage_tokens: usize,
}

/// The request body. Unknown fields (`search_model`, `sort`, `model`, `user`, ...) are
/// accepted and ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SearchRequest {
    /// Non-empty, shorter than the context.
    pub query: Option<String>,
    /// 1 to `--max-search-documents`; or `file`, never both.
    pub documents: Option<Vec<String>>,
    /// The corpus loaded with `--corpus`, by its file name.
    pub file: Option<String>,
    /// Candidates the model reranks: 1 to `--max-search-documents`, default 200.
    #[schema(minimum = 1)]
    pub max_rerank: Option<u64>,
    /// `document` is then the document itself, and the result has `text` and `metadata`.
    #[serde(default)]
    pub return_metadata: bool,
    /// Extension: this request's weight of the model score (default: `--rerank-weight`).
    pub rerank_weight: Option<f32>,
}

/// The answer, best first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchAnswer {
    pub object: &'static str,
    pub model: String,
    pub data: Vec<SearchResult>,
}

/// A result: OpenAI's shape (`document` the index), or with `return_metadata` the document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SearchResult {
    Index {
        object: &'static str,
        document: usize,
        score: f32,
    },
    Document {
        object: &'static str,
        document: FoundDocument,
        score: f32,
        text: String,
        /// A corpus document's metadata plus its `id`; `null` for the request's own.
        #[schema(value_type = Option<Object>)]
        metadata: Value,
    },
}

/// A document as the search example this service grew from reads it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FoundDocument {
    /// The corpus id, or the position for the request's own documents.
    pub _id: String,
    pub _score: f32,
    pub content: String,
    /// The corpus line's own metadata; `null` for the request's own documents.
    #[schema(value_type = Option<Object>)]
    pub metadata: Value,
    pub index: usize,
}

/// What a search runs over.
#[derive(Debug, Clone)]
pub enum Documents {
    /// The corpus loaded at start-up.
    Corpus(Arc<Corpus>),
    /// The request's own documents.
    Given(Arc<Vec<String>>),
}

impl Documents {
    pub fn text(&self, index: usize) -> &str {
        match self {
            Documents::Corpus(corpus) => &corpus.documents()[index].text,
            Documents::Given(documents) => &documents[index],
        }
    }
}

/// A validated search.
#[derive(Debug, Clone)]
pub struct Search {
    pub query: String,
    pub documents: Documents,
    pub options: SearchOptions,
    pub return_metadata: bool,
}

impl SearchRequest {
    /// Checks the request against the loaded corpus and the limits; `max_documents` bounds
    /// both `documents` and `max_rerank`.
    pub fn validate(
        self,
        corpus: Option<&Arc<Corpus>>,
        tokenizer: &Gpt2Tokenizer,
        context: usize,
        max_documents: usize,
        rerank: &RerankArgs,
    ) -> Result<Search, ApiError> {
        let query = self.query.unwrap_or_default();
        if query.trim().is_empty() {
            return Err(invalid("query must be a non-empty string"));
        }
        let query_tokens = tokenizer.encode(query.trim()).map_err(api_error)?.len();
        // The reranker reads <|endoftext|>, at least one passage token and a separator first.
        if query_tokens + 3 > context {
            return Err(ApiError::invalid(
                "context_length_exceeded",
                format!("the query has {query_tokens} tokens; this model's context of {context} leaves room for {}", context - 3),
            ));
        }
        let documents = match (self.documents, self.file) {
            (Some(_), Some(_)) => return Err(invalid("give either documents or file, not both")),
            (Some(documents), None) => {
                if documents.is_empty() {
                    return Err(invalid("documents is empty: give at least one document"));
                }
                if documents.len() > max_documents {
                    return Err(invalid(format!(
                        "documents may hold up to {max_documents} documents, got {}",
                        documents.len()
                    )));
                }
                Documents::Given(Arc::new(documents))
            }
            (None, file) => {
                let corpus =
                    match (corpus, file) {
                        (Some(corpus), None) => corpus,
                        (Some(corpus), Some(file)) if file == corpus.name() => corpus,
                        (Some(corpus), Some(file)) => {
                            return Err(ApiError::new(
                                StatusCode::NOT_FOUND,
                                "file_not_found",
                                format!(
                                    "no file `{}`: this service has loaded `{}` (--corpus)",
                                    excerpt(&file),
                                    corpus.name()
                                ),
                            ))
                        }
                        (None, Some(file)) => {
                            return Err(ApiError::new(
                                StatusCode::NOT_FOUND,
                                "file_not_found",
                                format!(
                                    "no file `{}`: this service was started without --corpus",
                                    excerpt(&file)
                                ),
                            ))
                        }
                        (None, None) => return Err(invalid(
                            "give documents (a list of strings) or file (the corpus loaded with --corpus)",
                        )),
                    };
                Documents::Corpus(corpus.clone())
            }
        };
        let max_rerank = self.max_rerank.unwrap_or(200);
        if max_rerank == 0 || max_rerank > max_documents as u64 {
            return Err(invalid(format!(
                "max_rerank must be between 1 and {max_documents}, got {max_rerank}"
            )));
        }
        let rerank_weight = self.rerank_weight.unwrap_or(rerank.rerank_weight);
        if !rerank_weight.is_finite() {
            return Err(invalid(format!(
                "rerank_weight must be a finite number, got {rerank_weight}"
            )));
        }
        Ok(Search {
            query,
            documents,
            options: SearchOptions {
                max_rerank: max_rerank as usize,
                rerank_weight,
            },
            return_metadata: self.return_metadata,
        })
    }
}

/// The answer: `{"object": "list", "model", "data": [{"object": "search_result", "document",
/// "score", "text"?, "metadata"?}]}`, best first.
///
/// Without `return_metadata`, `document` is the index (OpenAI's shape). With it, `document` is
/// the document itself, `{"_id", "_score", "content", "metadata", "index"}`, because the search
/// example this service grew from reads `response["data"][0]["document"]["content"]`; the
/// top-level `text` and `metadata` (a corpus document's metadata plus its `id`) stay for
/// clients that read OpenAI's shape. A request's own documents have no metadata (`null`) and
/// their position as `_id`.
pub fn answer(model: &str, search: &Search, hits: &[SearchHit]) -> SearchAnswer {
    let data = hits
        .iter()
        .map(|hit| {
            if !search.return_metadata {
                return SearchResult::Index {
                    object: "search_result",
                    document: hit.document,
                    score: hit.score,
                };
            }
            let content = search.documents.text(hit.document);
            let (id, own_metadata, metadata) = match &search.documents {
                Documents::Corpus(corpus) => {
                    let document = &corpus.documents()[hit.document];
                    let mut with_id = document.metadata.clone();
                    with_id.insert("id".into(), json!(document.id));
                    (
                        document.id.clone(),
                        Value::Object(document.metadata.clone()),
                        Value::Object(with_id),
                    )
                }
                Documents::Given(_) => (hit.document.to_string(), Value::Null, Value::Null),
            };
            SearchResult::Document {
                object: "search_result",
                document: FoundDocument {
                    _id: id,
                    _score: hit.score,
                    content: content.to_string(),
                    metadata: own_metadata,
                    index: hit.document,
                },
                score: hit.score,
                text: content.to_string(),
                metadata,
            }
        })
        .collect();
    SearchAnswer {
        object: "list",
        model: model.to_string(),
        data,
    }
}
