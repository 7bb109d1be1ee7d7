//! The textgen HTTP routes: OpenAI's completions API, as one JSON answer or as Server-Sent
//! Events (one chunk per token, then `data: [DONE]`); the legacy search API; embeddings; the
//! reranking and tokenizer routes of peer servers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use runtime::openapi::ErrorBody;
use runtime::{ApiError, ModelWorker};
use serde::Serialize;
use serde_json::{json, Map, Value};
use text::embedding::Embeddings;
use text::retrieval::{Corpus, SearchHit};
use text::{GenerateOptions, TokenLogprob};
use tokio::sync::{mpsc, oneshot};

use crate::completions::{Completion, CompletionRequest};
use crate::embeddings::{EmbeddingsAnswer, EmbeddingsRequest};
use crate::error::api_error;
use crate::model::{prepare_search, TextModel};
use crate::rerank::{CohereRerankAnswer, CohereRerankRequest, TeiRank, TeiRerankRequest};
use crate::scheduler::{ChoiceJob, Event, Job, StepLimits, Task};
use crate::search::{RerankArgs, Search, SearchAnswer, SearchRequest};
use crate::tokenize::{DetokenizeAnswer, DetokenizeRequest, TokenizeAnswer, TokenizeRequest};

/// What the routes share.
pub struct AppState {
    pub model: Arc<TextModel>,
    pub worker: ModelWorker<Job>,
    pub model_id: String,
    pub corpus: Option<Arc<Corpus>>,
    pub rerank: RerankArgs,
    pub limits: ApiLimits,
}

/// Limits of the generation, search and embeddings work one request or one step may take.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiLimits {
    /// Most documents one search may send, and most candidates it may rerank (`max_rerank`).
    #[arg(long, env = "MAX_SEARCH_DOCUMENTS", default_value_t = 200)]
    pub max_search_documents: usize,

    /// Most inputs one embeddings request may send.
    #[arg(long, env = "MAX_EMBEDDING_INPUTS", default_value_t = 256)]
    pub max_embedding_inputs: usize,

    /// Most generations decoded together in one step (continuous batching); more wait in the
    /// queue.
    #[arg(long, env = "MAX_BATCH", default_value_t = 16)]
    pub max_batch: usize,

    /// Tokens of prompts, search candidates and embedding inputs one step reads while
    /// generations are running, shared between those requests: what bounds how long a running
    /// stream waits for its next token (more: the others finish sooner, streams slow more).
    #[arg(long, env = "STEP_TOKENS", default_value_t = 192)]
    pub step_tokens: usize,
}

impl ApiLimits {
    /// What bounds one step of the model thread.
    pub fn step_limits(&self) -> StepLimits {
        StepLimits {
            max_batch: self.max_batch,
            step_tokens: self.step_tokens,
        }
    }
}

/// Completions, search and embeddings under `/v1` and `/v1/engines/{engine}` (the engine is
/// whatever the client names: one model is served), and `/` and `/invocations` (what FaaS
/// wrappers call) for completions; reranking in text-embeddings-inference's shape (`/rerank`)
/// and Cohere's (`/v1/rerank`); vLLM's `/tokenize` and `/detokenize`.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/engines/{engine}/completions", post(completions))
        .route("/", post(completions))
        .route("/invocations", post(completions))
        .route("/v1/search", post(search))
        .route("/v1/engines/{engine}/search", post(search))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/engines/{engine}/embeddings", post(embeddings))
        .route("/rerank", post(rerank))
        .route("/v1/rerank", post(rerank_v1))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .with_state(state)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Waits for the model thread's answer to a job.
async fn reply<T>(receiver: oneshot::Receiver<Result<T, text::TextError>>) -> Result<T, ApiError> {
    receiver
        .await
        .map_err(|_| ApiError::internal("the model thread dropped the request"))?
        .map_err(api_error)
}

/// OpenAI's legacy search: BM25 keeps the `max_rerank` best candidates of the request's
/// `documents` or the loaded corpus, GPT-2 reranks them. Also at `/v1/engines/{engine}/search`.
#[utoipa::path(post, path = "/v1/search", tag = "textgen", request_body = SearchRequest,
    responses(
        (status = 200, description = "the results, best first", body = SearchAnswer),
        (status = 400, description = "malformed JSON or a wrong type", body = ErrorBody),
        (status = 404, description = "an unknown `file`", body = ErrorBody),
        (status = 422, description = "an empty query, no documents or too many, both documents and file, max_rerank out of range, a query longer than the context", body = ErrorBody),
    ))]
async fn search(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<SearchAnswer>, ApiError> {
    let (search, hits) = run_search(&state, parse(&body)?).await?;
    Ok(Json(crate::search::answer(&state.model_id, &search, &hits)))
}

/// text-embeddings-inference's `/rerank`: every text scored for the query, best first (a
/// search over the texts).
#[utoipa::path(post, path = "/rerank", tag = "textgen", request_body = TeiRerankRequest,
    responses(
        (status = 200, description = "every text, best first", body = Vec<TeiRank>),
        (status = 400, description = "malformed JSON or a wrong type", body = ErrorBody),
        (status = 422, description = "an empty query, no texts or more than --max-search-documents", body = ErrorBody),
    ))]
async fn rerank(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<Vec<TeiRank>>, ApiError> {
    let request: TeiRerankRequest = parse(&body)?;
    let (_, hits) = run_search(&state, request.search()).await?;
    Ok(Json(request.answer(&hits)))
}

/// Cohere's and Jina's `/v1/rerank`: the `top_n` best documents (a search over them).
#[utoipa::path(post, path = "/v1/rerank", tag = "textgen", request_body = CohereRerankRequest,
    responses(
        (status = 200, description = "the best documents first", body = CohereRerankAnswer),
        (status = 400, description = "malformed JSON or a wrong type", body = ErrorBody),
        (status = 422, description = "an empty query, no documents or too many, top_n out of range", body = ErrorBody),
    ))]
async fn rerank_v1(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<CohereRerankAnswer>, ApiError> {
    let request: CohereRerankRequest = parse(&body)?;
    let (_, hits) = run_search(&state, request.search()?).await?;
    Ok(Json(request.answer(&state.model_id, &hits)))
}

/// vLLM's `/tokenize`: a text's GPT-2 tokens (worked out off the async runtime: a long text
/// takes a while).
#[utoipa::path(post, path = "/tokenize", tag = "textgen", request_body = TokenizeRequest,
    responses(
        (status = 200, description = "the tokens", body = TokenizeAnswer),
        (status = 400, description = "malformed JSON or a wrong type", body = ErrorBody),
    ))]
async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<TokenizeAnswer>, ApiError> {
    let request: TokenizeRequest = parse(&body)?;
    let model = state.model.clone();
    tokio::task::spawn_blocking(move || request.answer(&model.tokenizer, model.gpt2.config().n_positions))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing task failed: {e}")))?
        .map(Json)
}

/// vLLM's `/detokenize`: the text of tokens (bytes that are not UTF-8 as U+FFFD).
#[utoipa::path(post, path = "/detokenize", tag = "textgen", request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "the text", body = DetokenizeAnswer),
        (status = 400, description = "malformed JSON or a wrong type", body = ErrorBody),
        (status = 422, description = "a token outside the vocabulary", body = ErrorBody),
    ))]
async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<DetokenizeAnswer>, ApiError> {
    let request: DetokenizeRequest = parse(&body)?;
    request.answer(&state.model.tokenizer).map(Json)
}

/// Validates a search, runs it on the model thread, and answers it with its hits, best first.
async fn run_search(state: &AppState, request: SearchRequest) -> Result<(Search, Vec<SearchHit>), ApiError> {
    let search = request.validate(
        state.corpus.as_ref(),
        &state.model.tokenizer,
        state.model.gpt2.config().n_positions,
        state.limits.max_search_documents,
        &state.rerank,
    )?;
    // The lexical stage and the passages' tokenizing run here, off the model thread, which
    // then has only the model's work to fit between the generations' steps.
    let model = state.model.clone();
    let passage_tokens = state.rerank.passage_tokens;
    let prepared = search.clone();
    let pending = tokio::task::spawn_blocking(move || prepare_search(&model, &prepared, passage_tokens))
        .await
        .map_err(|_| ApiError::internal("preparing the search panicked"))?
        .map_err(api_error)?;
    let (sender, receiver) = oneshot::channel();
    state.worker.submit(Job::Read(Task::Search {
        search: pending,
        reply: sender,
    }))?;
    let hits = reply(receiver).await?;
    Ok((search, hits))
}

/// OpenAI's embeddings: the mean of GPT-2's last hidden states over each input's tokens, unit
/// length. Also at `/v1/engines/{engine}/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", tag = "textgen", request_body = EmbeddingsRequest,
    responses(
        (status = 200, description = "one vector per input", body = EmbeddingsAnswer),
        (status = 400, description = "malformed JSON or a wrong type", body = ErrorBody),
        (status = 422, description = "no input, too many, an empty or over-long input, a token outside the vocabulary, dimensions other than the model's", body = ErrorBody),
    ))]
async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<EmbeddingsAnswer>, ApiError> {
    let request: EmbeddingsRequest = parse(&body)?;
    let config = state.model.gpt2.config();
    let embeddings = request.validate(
        &state.model.tokenizer,
        config.n_positions,
        config.n_embd,
        state.limits.max_embedding_inputs,
    )?;
    let (sender, receiver) = oneshot::channel();
    state.worker.submit(Job::Read(Task::Embed {
        embeddings: Embeddings::new(embeddings.inputs.clone()).map_err(api_error)?,
        reply: sender,
    }))?;
    let vectors = reply(receiver).await?;
    Ok(Json(embeddings.answer(&state.model_id, &vectors)))
}

/// OpenAI's completions, as one answer or, with `stream`, as Server-Sent Events: one chunk per
/// token (the shape of the answer, one choice each), a last chunk per choice with its
/// `finish_reason`, with `stream_options.include_usage` a chunk with no choices and the
/// `usage`, then `data: [DONE]`. Also at `/`, `/invocations` and
/// `/v1/engines/{engine}/completions`.
#[utoipa::path(post, path = "/v1/completions", tag = "textgen", request_body = CompletionRequest,
    responses(
        (status = 200, description = "the completion; with `stream`, `text/event-stream` of chunks of this shape", content(
            (CompletionAnswer = "application/json"), (CompletionAnswer = "text/event-stream"))),
        (status = 400, description = "malformed JSON or a wrong type", body = ErrorBody),
        (status = 422, description = "a value out of its range, a token outside the vocabulary, the prompt and max_tokens over the context (`context_length_exceeded`)", body = ErrorBody),
    ))]
async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse(&body)?;
    let completion = request.validate(&state.model.tokenizer, state.model.gpt2.config().n_positions)?;
    // Unbounded: a request's events are bounded by its own tokens, and a slow reader must
    // never stall the model thread, which steps every generation together.
    let (events, receiver) = mpsc::unbounded_channel();
    let choices = choice_jobs(&completion);
    state.worker.submit(Job::Complete { choices, events })?;
    let answer = Answer::new(&state, &completion);
    if completion.stream {
        Ok(Sse::new(answer.stream(receiver)).into_response())
    } else {
        Ok(Json(answer.collect(receiver).await?).into_response())
    }
}

/// Every (prompt, i < n) pair as a choice, in OpenAI's order, each with its own seed.
fn choice_jobs(completion: &Completion) -> Vec<ChoiceJob> {
    let mut jobs = Vec::new();
    for prompt in &completion.prompts {
        for _ in 0..completion.n {
            let mut options: GenerateOptions = completion.options.clone();
            options.sampling.seed = completion.seed.wrapping_add(jobs.len() as u64);
            jobs.push(ChoiceJob {
                prompt: prompt.clone(),
                options,
            });
        }
    }
    jobs
}

/// A completion, or one chunk of a streamed one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionAnswer {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// The whole answer's; a stream's, with `include_usage`, in its last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    /// With `logprobs`: `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`, one
    /// entry per token; `null` otherwise.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Value,
    /// `length` or `stop`; `null` on a stream's chunks before the choice's last.
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// textgen's own routes, for its OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(completions, search, embeddings, rerank, rerank_v1, tokenize, detokenize))]
pub struct Routes;

/// Builds the answer from the model thread's events.
struct Answer {
    model: Arc<TextModel>,
    id: String,
    created: u64,
    model_id: String,
    echo: bool,
    logprobs: bool,
    prompts: Vec<Vec<u32>>,
    n: usize,
    include_usage: bool,
}

/// One choice's text and logprobs as they accumulate.
#[derive(Default)]
struct Choice {
    text: String,
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
    finish_reason: Option<&'static str>,
    completion_tokens: usize,
}

impl Answer {
    fn new(state: &AppState, completion: &Completion) -> Self {
        Self {
            model: state.model.clone(),
            id: format!("cmpl-{:024x}", rand::random::<u128>() >> 32),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model_id: state.model_id.clone(),
            echo: completion.echo,
            logprobs: completion.options.logprobs.is_some(),
            prompts: completion.prompts.clone(),
            n: completion.n,
            include_usage: completion.include_usage,
        }
    }

    fn token_text(&self, token: u32) -> String {
        String::from_utf8_lossy(self.model.tokenizer.token_bytes(token)).into_owned()
    }

    /// Adds text (and, with logprobs, the token it came from) to a choice; answers the
    /// logprobs object for just this piece, as a stream chunk carries it.
    fn add(&self, choice: &mut Choice, text: &str, token: u32, logprob: Option<&TokenLogprob>) -> Value {
        let offset = choice.text.chars().count();
        choice.text.push_str(text);
        if !self.logprobs {
            return Value::Null;
        }
        let token_logprob = logprob.map_or(Value::Null, |l| json!(l.logprob));
        let top = logprob.map_or(Value::Null, |l| {
            Value::Object(
                l.top
                    .iter()
                    .map(|&(t, lp)| (self.token_text(t), json!(lp)))
                    .collect::<Map<_, _>>(),
            )
        });
        let piece = json!({
            "tokens": [self.token_text(token)],
            "token_logprobs": [token_logprob],
            "top_logprobs": [top],
            "text_offset": [offset],
        });
        choice.tokens.push(piece["tokens"][0].clone());
        choice.token_logprobs.push(piece["token_logprobs"][0].clone());
        choice.top_logprobs.push(piece["top_logprobs"][0].clone());
        choice.text_offset.push(piece["text_offset"][0].clone());
        piece
    }

    /// Echo: the prompt's tokens, each with its log-probability (none for the first).
    fn add_prompt(&self, choice: &mut Choice, index: usize, logprobs: &[TokenLogprob]) -> Option<Value> {
        if !self.echo {
            return None;
        }
        let prompt = &self.prompts[index / self.n];
        if !self.logprobs {
            choice.text.push_str(&self.model.tokenizer.decode(prompt));
            return Some(Value::Null);
        }
        let mut pieces = Vec::new();
        for (i, &token) in prompt.iter().enumerate() {
            let text = self.token_text(token);
            pieces.push(self.add(
                choice,
                &text,
                token,
                i.checked_sub(1).and_then(|j| logprobs.get(j)),
            ));
        }
        let merge = |field: &str| Value::Array(pieces.iter().map(|p| p[field][0].clone()).collect());
        Some(json!({
            "tokens": merge("tokens"),
            "token_logprobs": merge("token_logprobs"),
            "top_logprobs": merge("top_logprobs"),
            "text_offset": merge("text_offset"),
        }))
    }

    fn envelope(&self, choices: Vec<CompletionChoice>) -> CompletionAnswer {
        CompletionAnswer {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model_id.clone(),
            choices,
            usage: None,
        }
    }

    /// A stream's chunk of one choice.
    fn chunk(
        &self,
        text: String,
        index: usize,
        logprobs: Value,
        finish_reason: Option<&'static str>,
    ) -> String {
        let chunk = self.envelope(vec![CompletionChoice {
            text,
            index,
            logprobs,
            finish_reason,
        }]);
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    /// OpenAI's `usage` of the whole request, from its choices' completion tokens.
    fn usage(&self, choices: &[Choice]) -> Usage {
        let prompt_tokens: usize = self.prompts.iter().map(Vec::len).sum::<usize>() * self.n;
        let completion_tokens: usize = choices.iter().map(|c| c.completion_tokens).sum();
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }

    /// Waits for every choice and answers the whole completion.
    async fn collect(
        self,
        mut receiver: mpsc::UnboundedReceiver<Event>,
    ) -> Result<CompletionAnswer, ApiError> {
        let count = self.prompts.len() * self.n;
        let mut choices: Vec<Choice> = (0..count).map(|_| Choice::default()).collect();
        while let Some(event) = receiver.recv().await {
            match event {
                Event::Prompt { choice, logprobs } => {
                    self.add_prompt(&mut choices[choice], choice, &logprobs);
                }
                Event::Token { choice, step } => {
                    let c = &mut choices[choice];
                    c.completion_tokens += 1;
                    self.add(c, &step.text, step.token, step.logprob.as_ref());
                }
                Event::Done {
                    choice,
                    finish_reason,
                    completion_tokens,
                } => {
                    choices[choice].finish_reason = Some(finish_reason.as_str());
                    choices[choice].completion_tokens = completion_tokens;
                }
                Event::Failed(message) => {
                    return Err(ApiError::internal(format!("generation failed: {message}")))
                }
            }
        }
        if choices.iter().any(|c| c.finish_reason.is_none()) {
            return Err(ApiError::internal("the model thread stopped before finishing"));
        }
        let usage = self.usage(&choices);
        let choices = choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let logprobs = if self.logprobs {
                    json!({"tokens": c.tokens, "token_logprobs": c.token_logprobs, "top_logprobs": c.top_logprobs, "text_offset": c.text_offset})
                } else {
                    Value::Null
                };
                CompletionChoice {
                    text: c.text,
                    index,
                    logprobs,
                    finish_reason: c.finish_reason,
                }
            })
            .collect();
        let mut answer = self.envelope(choices);
        answer.usage = Some(usage);
        Ok(answer)
    }

    /// One SSE chunk per event as the model produces it, then, with `include_usage`, a chunk
    /// with no choices and the `usage`, then `[DONE]`. Dropping the stream
    /// (the client went away) closes the channel, which stops the generation. A prompt piece
    /// that adds nothing to the answer (no `echo`) sends nothing, not even an SSE comment: the
    /// 0.x `openai` clients read every non-empty line as a chunk.
    fn stream(
        self,
        receiver: mpsc::UnboundedReceiver<Event>,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        let count = self.prompts.len() * self.n;
        let choices: Vec<Choice> = (0..count).map(|_| Choice::default()).collect();
        stream::unfold(Some((self, receiver, choices)), |state| async move {
            let (mut answer, mut receiver, mut choices) = state?;
            let chunk = loop {
                match receiver.recv().await {
                    None if answer.include_usage => {
                        answer.include_usage = false;
                        let mut chunk = answer.envelope(Vec::new());
                        chunk.usage = Some(answer.usage(&choices));
                        break serde_json::to_string(&chunk).unwrap_or_default();
                    }
                    None => return Some((Ok(SseEvent::default().data("[DONE]")), None)),
                    Some(Event::Prompt { choice, logprobs }) => {
                        let before = choices[choice].text.len();
                        if let Some(logprobs) = answer.add_prompt(&mut choices[choice], choice, &logprobs) {
                            let text = choices[choice].text[before..].to_string();
                            break answer.chunk(text, choice, logprobs, None);
                        }
                    }
                    Some(Event::Token { choice, step }) => {
                        let logprobs = answer.add(
                            &mut choices[choice],
                            &step.text,
                            step.token,
                            step.logprob.as_ref(),
                        );
                        break answer.chunk(step.text, choice, logprobs, None);
                    }
                    Some(Event::Done {
                        choice,
                        finish_reason,
                        completion_tokens,
                    }) => {
                        choices[choice].completion_tokens = completion_tokens;
                        break answer.chunk(String::new(), choice, Value::Null, Some(finish_reason.as_str()));
                    }
                    Some(Event::Failed(message)) => {
                        let error = ApiError::internal(format!("generation failed: {message}"));
                        break serde_json::to_string(&error.body()).unwrap_or_default();
                    }
                }
            };
            Some((
                Ok(SseEvent::default().data(chunk)),
                Some((answer, receiver, choices)),
            ))
        })
    }
}
