//! Loading GPT-2, its tokenizer and the search corpus (each step an init phase), and the model
//! thread: completions token by token, searches, and embeddings.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use runtime::{ComputeArgs, DTypeArg, InitPhases, JobQueue, Metrics, ModelCard, ModelWorker};
use serde_json::json;
use text::retrieval::{Bm25Index, Bm25Params, Corpus, CorpusError, Reranker, SearchHit};
use text::{
    FinishReason, GenerateOptions, Generation, Gpt2, Gpt2Tokenizer, KvCache, Step, TextError, TokenLogprob,
    WeightPrecision,
};
use tokio::sync::{mpsc, oneshot};

use crate::search::{Documents, Search};

/// Default weights: OpenAI's GPT-2 (124M) on the Hugging Face Hub.
pub const DEFAULT_MODEL: &str = "openai-community/gpt2";

/// Where the weights come from and how they run; shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A local directory (config.json, model.safetensors, tokenizer.json or vocab.json +
    /// merges.txt) or a hub repo id (owner/name[@revision]).
    #[arg(long, env = "MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// How long after start the weights wait to be packed: a cold start's first requests come in
/// its first moments, and packing meanwhile would slow them (it competes for memory bandwidth
/// and the kernel's page allocator, whatever its priority).
const PACK_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Packs the model's f32 weights for the kernels ([`text::Gpt2::pack_weights`]) on a thread of
/// its own at idle priority, [`PACK_DELAY`] after start, so that it costs the cold start and
/// the requests nothing; logs when done.
pub fn pack_weights_in_background(model: Arc<TextModel>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pack-weights".into())
        .spawn(move || {
            std::thread::sleep(PACK_DELAY);
            if let Err(e) = runtime::run_at_idle_priority() {
                tracing::warn!(error = %e, "cannot lower the packing thread's priority");
            }
            let started = std::time::Instant::now();
            model.gpt2.pack_weights();
            tracing::info!(ms = started.elapsed().as_secs_f64() * 1e3, "weights packed");
        })
        .map(drop)
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] hub::HubError),
    #[error("{0}")]
    Model(#[from] TextError),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("{0}")]
    Unsupported(String),
}

/// GPT-2 with its tokenizer.
#[derive(Debug)]
pub struct TextModel {
    pub gpt2: Gpt2,
    pub tokenizer: Gpt2Tokenizer,
}

/// Resolves, loads and warms up the model, timing each step.
pub fn load(args: &ModelArgs, phases: &mut InitPhases) -> Result<(TextModel, ModelCard), LoadError> {
    let level = args
        .compute
        .cpu_kernels(&[DTypeArg::F32, DTypeArg::Bf16])
        .map_err(LoadError::Unsupported)?;
    let precision = match args.compute.dtype {
        DTypeArg::Bf16 => WeightPrecision::Bf16,
        _ => WeightPrecision::F32,
    };
    let source: hub::ModelSource = args.model.parse()?;
    let (config_path, weights_path) = phases.run("resolve_weights", || -> Result<_, hub::HubError> {
        Ok((source.fetch("config.json")?, source.fetch("model.safetensors")?))
    })?;
    // The tokenizer is built while the weights load and warm up: the two are independent, so
    // overlapping them shortens every cold start. Both run on the thread pool (rayon's join),
    // so the build takes one worker for its length instead of a third thread competing with
    // the pool. Each phase is recorded with the time it took; they overlap. The warm-up runs
    // one token through the network, which also maps the pages of the weights it reads; the
    // LM head's (the token embedding's) are left to the first request, which reads them once
    // either way, so that the port opens sooner.
    let (weights, (tokenizer, tokenizer_took)) = rayon::join(
        || -> Result<_, LoadError> {
            let started = std::time::Instant::now();
            let gpt2 = Gpt2::load(&config_path, &weights_path, precision, level)?;
            let loaded = started.elapsed();
            gpt2.forward(&[0], &mut text::KvCache::default())?;
            Ok((gpt2, loaded, started.elapsed() - loaded))
        },
        || {
            let started = std::time::Instant::now();
            let tokenizer = catch_unwind(AssertUnwindSafe(|| load_tokenizer(&source)))
                .unwrap_or_else(|_| Err(LoadError::Unsupported("building the tokenizer panicked".into())));
            (tokenizer, started.elapsed())
        },
    );
    let (gpt2, weights_took, warm_up_took) = weights?;
    phases.record("load_weights", weights_took);
    phases.record("load_tokenizer", tokenizer_took);
    phases.record("warm_up", warm_up_took);
    let tokenizer = tokenizer?;
    if tokenizer.vocab_size() != gpt2.config().vocab_size {
        return Err(LoadError::Unsupported(format!(
            "the tokenizer has {} tokens but the model {}",
            tokenizer.vocab_size(),
            gpt2.config().vocab_size
        )));
    }
    let config = gpt2.config();
    let card = ModelCard {
        id: source.model_name(),
        source: source.to_string(),
        device: "cpu".into(),
        dtype: args.compute.dtype.to_string(),
        kernels: level.name().into(),
        details: json!({
            "architecture": "gpt2",
            "vocab_size": config.vocab_size,
            "context_length": config.n_positions,
            "n_layer": config.n_layer,
            "n_embd": config.n_embd,
            "n_head": config.n_head,
        }),
        weights_path,
    };
    Ok((TextModel { gpt2, tokenizer }, card))
}

/// GPT-2's tokenizer from the model's files: tokenizer.json, else vocab.json + merges.txt,
/// else the BPE built into the binary.
fn load_tokenizer(source: &hub::ModelSource) -> Result<Gpt2Tokenizer, LoadError> {
    if let Ok(path) = source.fetch("tokenizer.json") {
        return Ok(Gpt2Tokenizer::from_tokenizer_json(&path)?);
    }
    match (source.fetch("vocab.json"), source.fetch("merges.txt")) {
        (Ok(vocab), Ok(merges)) => Ok(Gpt2Tokenizer::from_vocab_and_merges(&vocab, &merges)?),
        _ => {
            tracing::info!("no tokenizer files next to the weights: using GPT-2's built-in BPE");
            Ok(Gpt2Tokenizer::builtin()?)
        }
    }
}

/// Reads and indexes a search corpus (the `load_corpus` init phase), logging its size.
pub fn load_corpus(path: &Path, phases: &mut InitPhases) -> Result<Corpus, LoadError> {
    let corpus = phases.run("load_corpus", || Corpus::load(path))?;
    tracing::info!(
        corpus = corpus.name(),
        documents = corpus.documents().len(),
        terms = corpus.index().vocabulary_size(),
        "corpus indexed"
    );
    Ok(corpus)
}

/// What the model thread reports about one choice.
#[derive(Debug)]
pub enum Event {
    /// The prompt's own token log-probabilities (first token has none), for `echo`.
    Prompt {
        choice: usize,
        logprobs: Vec<TokenLogprob>,
    },
    Token {
        choice: usize,
        step: Step,
    },
    Done {
        choice: usize,
        finish_reason: FinishReason,
        completion_tokens: usize,
    },
    Failed(String),
}

/// One choice to generate: a prompt, its options, and its seed.
#[derive(Debug)]
pub struct ChoiceJob {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
}

/// Work for the model thread; each kind carries where its answer goes.
pub enum Job {
    /// Every choice of one completion request; events stream back as tokens come.
    Complete {
        choices: Vec<ChoiceJob>,
        events: mpsc::UnboundedSender<Event>,
    },
    /// A search; `None` when the client went away before it finished.
    Search {
        search: Search,
        passage_tokens: usize,
        reply: oneshot::Sender<Result<Option<Vec<SearchHit>>, TextError>>,
    },
    /// One embedding per input, in order.
    Embed {
        inputs: Vec<Vec<u32>>,
        reply: oneshot::Sender<Result<Vec<Vec<f32>>, TextError>>,
    },
}

/// Starts the model thread. Generations run with continuous batching: each step decodes one
/// token of every running generation in one batched pass (up to `max_batch` of them); new
/// requests join between steps and read their prompts inside them, finished ones leave.
/// Searches and embeddings run between steps.
/// A client that goes away (its event channel closed) leaves at the next step; a search stops
/// at its next batch of candidates.
pub fn spawn_worker(
    model: Arc<TextModel>,
    capacity: usize,
    max_batch: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<ModelWorker<Job>> {
    ModelWorker::spawn_scheduler("textgen-model", capacity, move |queue| {
        Scheduler {
            model: &model,
            max_batch: max_batch.max(1),
            metrics,
            running: Vec::new(),
        }
        .run(&queue);
    })
}

/// Prompt tokens a step reads while other generations are generating: a long prompt is read
/// over several steps, so that the others' next tokens wait for at most this many rows.
const PROMPT_TOKENS_PER_STEP: usize = 128;

/// One choice being generated.
struct Running<'m> {
    generation: Generation<'m>,
    choice: usize,
    events: mpsc::UnboundedSender<Event>,
    completion_tokens: usize,
}

/// The model thread's loop: admit jobs, then step every running generation at once.
struct Scheduler<'m> {
    model: &'m TextModel,
    max_batch: usize,
    metrics: Arc<Metrics>,
    running: Vec<Running<'m>>,
}

impl<'m> Scheduler<'m> {
    fn run(mut self, queue: &JobQueue<Job>) {
        loop {
            if self.running.is_empty() {
                match queue.wait() {
                    Some(job) => self.guarded("admitting a job", |s| s.admit(job)),
                    None => return,
                }
            }
            while self.running.len() < self.max_batch {
                match queue.poll() {
                    Some(job) => self.guarded("admitting a job", |s| s.admit(job)),
                    None => break,
                }
            }
            if !self.running.is_empty() {
                self.metrics.observe_batch(self.running.len());
                self.guarded("a decode step", Self::step);
            }
        }
    }

    /// Runs `work`; a panic drops the running generations (their clients see an error) and
    /// the thread carries on.
    fn guarded(&mut self, what: &str, work: impl FnOnce(&mut Self)) {
        if catch_unwind(AssertUnwindSafe(|| work(self))).is_err() {
            tracing::error!("the model thread panicked in {what}; its requests get 500");
            self.running.clear();
        }
    }

    fn cancelled(&self, generated: usize) {
        self.metrics.increment("generations_cancelled", 1);
        tracing::info!(generated, "client went away: generation stopped");
    }

    fn admit(&mut self, job: Job) {
        let model = self.model;
        match job {
            Job::Complete { choices, events } => {
                for (choice, ChoiceJob { prompt, options }) in choices.into_iter().enumerate() {
                    match Generation::new(&model.gpt2, &model.tokenizer, prompt, options) {
                        Ok(generation) => self.running.push(Running {
                            generation,
                            choice,
                            events: events.clone(),
                            completion_tokens: 0,
                        }),
                        Err(e) => {
                            let _ = events.send(Event::Failed(e.to_string()));
                            return;
                        }
                    }
                }
            }
            Job::Search {
                search,
                passage_tokens,
                reply,
            } => {
                let hits = run_search(model, &search, passage_tokens, || reply.is_closed());
                if matches!(hits, Ok(None)) {
                    self.metrics.increment("searches_cancelled", 1);
                    tracing::info!("client went away: search stopped");
                }
                let _ = reply.send(hits);
            }
            Job::Embed { inputs, reply } => {
                let inputs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
                let _ = reply.send(text::embed(&model.gpt2, &inputs));
            }
        }
    }

    /// One step of every running generation: those generating sample a token and send it,
    /// those starting read (a piece of) their prompt, and the model reads all of it in one
    /// batched pass. A new prompt thus joins the step instead of stopping the running
    /// generations for a pass of its own.
    fn step(&mut self) {
        let count = self.running.len();
        let mut inputs: Vec<Vec<u32>> = vec![Vec::new(); count];
        let mut reading_prompt = vec![false; count];
        let mut leaving = vec![false; count];
        let mut prompt_budget = match self
            .running
            .iter()
            .any(|run| run.generation.unread_prompt().is_empty())
        {
            true => PROMPT_TOKENS_PER_STEP,
            false => usize::MAX,
        };
        for (i, run) in self.running.iter_mut().enumerate() {
            let unread = run.generation.unread_prompt();
            if !unread.is_empty() {
                // A client gone while its long prompt is read in pieces stops it here.
                if run.events.is_closed() {
                    leaving[i] = true;
                    continue;
                }
                let take = unread.len().min(prompt_budget);
                prompt_budget -= take;
                inputs[i] = unread[..take].to_vec();
                reading_prompt[i] = true;
                continue;
            }
            let (step, token) = run.generation.advance();
            run.completion_tokens += 1;
            let choice = run.choice;
            if run.events.send(Event::Token { choice, step }).is_err() {
                leaving[i] = true;
                continue;
            }
            match token {
                Some(token) => inputs[i] = vec![token],
                None => {
                    let finish_reason = run.generation.finish_reason().unwrap_or(FinishReason::Length);
                    let _ = run.events.send(Event::Done {
                        choice,
                        finish_reason,
                        completion_tokens: run.completion_tokens,
                    });
                    leaving[i] = true;
                }
            }
        }
        for (i, run) in self.running.iter().enumerate() {
            if leaving[i] && !run.generation.is_finished() {
                self.cancelled(run.completion_tokens);
            }
        }
        let fed: Vec<usize> = (0..count).filter(|&i| !inputs[i].is_empty()).collect();
        if !fed.is_empty() {
            match self.read(&fed, &inputs, &reading_prompt) {
                Ok(mut logits) => {
                    for &i in &fed {
                        let rows = std::mem::take(&mut logits[i]);
                        if reading_prompt[i] {
                            leaving[i] = self.prompt_read(i, inputs[i].len(), rows);
                        } else if let Some(row) = rows.into_iter().next() {
                            self.running[i].generation.set_logits(row);
                        }
                    }
                }
                Err(e) => {
                    for &i in &fed {
                        let run = &mut self.running[i];
                        let _ = run.events.send(Event::Failed(e.to_string()));
                        run.generation.abort();
                        leaving[i] = true;
                    }
                }
            }
        }
        let mut index = 0;
        self.running.retain(|_| {
            index += 1;
            !leaving[index - 1]
        });
    }

    /// Runs the `fed` generations' inputs in one batched pass; answers, per running generation,
    /// the logits it needs: every position of a prompt piece whose log-probabilities are asked
    /// for, the last position of anything else (none for a prompt piece that is not the last
    /// and not scored).
    fn read(
        &mut self,
        fed: &[usize],
        inputs: &[Vec<u32>],
        reading_prompt: &[bool],
    ) -> Result<Vec<Vec<Vec<f32>>>, TextError> {
        let mut scored = Vec::new();
        let mut counts = vec![0; self.running.len()];
        let mut offset = 0;
        for &i in fed {
            let generation = &self.running[i].generation;
            let len = inputs[i].len();
            let (first, rows) = if reading_prompt[i] && generation.scores_prompt() {
                (offset, len)
            } else if reading_prompt[i] && len < generation.unread_prompt().len() {
                (offset, 0)
            } else {
                (offset + len - 1, 1)
            };
            scored.extend((first..first + rows).map(|row| row as u32));
            counts[i] = rows;
            offset += len;
        }
        let sequences: Vec<&[u32]> = fed.iter().map(|&i| inputs[i].as_slice()).collect();
        let mut caches: Vec<&mut KvCache> = self
            .running
            .iter_mut()
            .zip(inputs)
            .filter(|(_, input)| !input.is_empty())
            .map(|(run, _)| run.generation.cache_mut())
            .collect();
        let gpt2 = &self.model.gpt2;
        let hidden = gpt2.extend_batch(&sequences, &mut caches)?;
        let mut rows = gpt2.logits_of_rows(&hidden, &scored)?.into_iter();
        Ok(counts.iter().map(|&n| rows.by_ref().take(n).collect()).collect())
    }

    /// Hands generation `i` the logits of the prompt piece it read; once the whole prompt is
    /// in, sends its log-probabilities, and the end when nothing is to be generated. Answers
    /// whether the generation leaves.
    fn prompt_read(&mut self, i: usize, count: usize, logits: Vec<Vec<f32>>) -> bool {
        let run = &mut self.running[i];
        let Some(logprobs) = run.generation.prompt_read(count, logits) else {
            return false;
        };
        let choice = run.choice;
        if run.events.send(Event::Prompt { choice, logprobs }).is_err() {
            self.cancelled(0);
            return true;
        }
        if !run.generation.is_finished() {
            return false;
        }
        let finish_reason = run.generation.finish_reason().unwrap_or(FinishReason::Length);
        let _ = run.events.send(Event::Done {
            choice,
            finish_reason,
            completion_tokens: 0,
        });
        true
    }
}

/// Runs a search: BM25 over the corpus index (or an index of the request's documents built
/// here), then GPT-2 on the candidates; `Ok(None)` when `stop` says the client went away.
pub fn run_search(
    model: &TextModel,
    search: &Search,
    passage_tokens: usize,
    stop: impl Fn() -> bool,
) -> Result<Option<Vec<SearchHit>>, TextError> {
    let reranker = Reranker::new(&model.gpt2, &model.tokenizer, passage_tokens)?;
    let document_text = |i| search.documents.text(i);
    match &search.documents {
        Documents::Corpus(corpus) => text::retrieval::search(
            corpus.index(),
            document_text,
            &search.query,
            search.options,
            &reranker,
            stop,
        ),
        Documents::Given(documents) => {
            let index = Bm25Index::build(documents.iter().map(String::as_str), Bm25Params::default());
            text::retrieval::search(
                &index,
                document_text,
                &search.query,
                search.options,
                &reranker,
                stop,
            )
        }
    }
}
