//! `textgen`: a GPT-2 text service with OpenAI's completions, legacy search and embeddings
//! APIs (`serve`), and its command-line twins (`generate`, `search`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use clap::{Parser, Subcommand};
use runtime::{InitPhases, Metrics, ModelCard, ServeArgs};
use serde_json::json;
use text::retrieval::Corpus;
use text::{GenerateOptions, Generation, SamplingParams};

use textgen::model::{self, ModelArgs};
use textgen::routes::{self, ApiLimits};
use textgen::scheduler;
use textgen::search::{self, RerankArgs, SearchRequest};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "GPT-2 text generation: an OpenAI-compatible HTTP service and a command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 when the server on this machine is ready (a container health check).
    Probe(runtime::ProbeArgs),
    /// Load the model, warm it up, then answer HTTP requests until SIGTERM.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// A JSON Lines corpus (`{"id", "text", "metadata"}` a line) to load and index at
        /// start-up; searches name it by its file name in `file`, or leave `file` out.
        #[arg(long, env = "CORPUS")]
        corpus: Option<PathBuf>,
        #[command(flatten)]
        rerank: RerankArgs,
        #[command(flatten)]
        limits: ApiLimits,
        #[command(flatten)]
        serve: ServeArgs,
        /// Once serving, move the f32 weights from the mapped file into memory laid out for
        /// the kernels (a background thread at idle priority, a second after start; about the
        /// file's size again in memory): long prompts and decode steps then run at full
        /// speed. `false` keeps them mapped.
        #[arg(long, env = "PACK_WEIGHTS", default_value_t = true, action = clap::ArgAction::Set)]
        pack_weights: bool,
    },
    /// Complete a prompt and print the text as it is generated.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Tokens to generate.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// 0 keeps every token.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Same seed, same text.
        #[arg(long)]
        seed: Option<u64>,
        prompt: String,
    },
    /// Search a corpus and print the results, best first.
    Search {
        #[command(flatten)]
        model: ModelArgs,
        /// The JSON Lines corpus to search.
        #[arg(long, env = "CORPUS")]
        corpus: PathBuf,
        /// Candidates BM25 keeps for GPT-2 to rerank.
        #[arg(long, default_value_t = 200)]
        max_rerank: usize,
        #[command(flatten)]
        rerank: RerankArgs,
        /// Print the answer the HTTP API gives (with text and metadata) instead of a table.
        #[arg(long)]
        json: bool,
        query: String,
    },
}

fn main() -> ExitCode {
    let cli: Cli = runtime::start(|cli: &Cli| matches!(cli.command, Command::Serve { .. }));
    match cli.command {
        Command::Probe(probe) => runtime::probe::run(&probe),
        Command::Serve {
            model,
            corpus,
            rerank,
            limits,
            serve,
            pack_weights,
        } => {
            let textgen = Textgen {
                model: &model,
                corpus: corpus.as_deref(),
                rerank,
                limits,
                pack_weights,
            };
            runtime::service::serve(textgen, &serve)
        }
        Command::Search {
            model,
            corpus,
            max_rerank,
            rerank,
            json,
            query,
        } => search(&model, &corpus, max_rerank, &rerank, json, query),
        Command::Generate {
            model,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            prompt,
        } => {
            let sampling = SamplingParams {
                temperature,
                top_p,
                top_k,
                seed: seed.unwrap_or_else(rand::random),
                ..Default::default()
            };
            generate(
                &model,
                &prompt,
                GenerateOptions {
                    max_tokens,
                    sampling,
                    ..Default::default()
                },
            )
        }
    }
}

/// textgen in the shared `serve` sequence.
struct Textgen<'a> {
    model: &'a ModelArgs,
    corpus: Option<&'a std::path::Path>,
    rerank: RerankArgs,
    limits: ApiLimits,
    pack_weights: bool,
}

impl runtime::Service for Textgen<'_> {
    const NAME: &'static str = "textgen";
    const PLAYGROUND: &'static str = include_str!("playground.html");
    type Model = (model::TextModel, Option<Arc<Corpus>>);
    type Error = String;

    /// The model, then the corpus (its own init phase) when one is named.
    fn openapi() -> utoipa::openapi::OpenApi {
        use utoipa::OpenApi;
        let mut doc = routes::Routes::openapi();
        let aliases = [
            (
                "/v1/completions",
                &["/", "/invocations", "/v1/engines/{engine}/completions"][..],
            ),
            ("/v1/search", &["/v1/engines/{engine}/search"][..]),
            ("/v1/embeddings", &["/v1/engines/{engine}/embeddings"][..]),
        ];
        for (path, also) in aliases {
            runtime::openapi::alias(&mut doc, path, also);
        }
        doc
    }

    fn load(&self, phases: &mut InitPhases) -> Result<(Self::Model, ModelCard), String> {
        let (model, mut card) = model::load(self.model, phases).map_err(|e| e.to_string())?;
        let corpus = self
            .corpus
            .map(|path| model::load_corpus(path, phases))
            .transpose()
            .map_err(|e| e.to_string())?
            .map(Arc::new);
        if let Some(corpus) = &corpus {
            card.details["corpus"] = json!({
                "file": corpus.name(),
                "documents": corpus.documents().len(),
                "terms": corpus.index().vocabulary_size(),
            });
        }
        Ok(((model, corpus), card))
    }

    fn routes(
        self,
        (model, corpus): Self::Model,
        card: &ModelCard,
        metrics: Arc<Metrics>,
        serve: &ServeArgs,
    ) -> Result<Router, String> {
        let model = Arc::new(model);
        if self.pack_weights {
            model::pack_weights_in_background(model.clone())
                .map_err(|e| format!("cannot start the weight-packing thread: {e}"))?;
        }
        let worker = scheduler::spawn_worker(
            model.clone(),
            serve.max_concurrency,
            self.limits.step_limits(),
            metrics,
        )
        .map_err(|e| format!("cannot start the model thread: {e}"))?;
        let state = Arc::new(routes::AppState {
            model,
            worker,
            model_id: card.id.clone(),
            corpus,
            rerank: self.rerank,
            limits: self.limits,
        });
        Ok(routes::routes(state))
    }
}

fn generate(args: &ModelArgs, prompt: &str, options: GenerateOptions) -> ExitCode {
    let mut phases = InitPhases::new();
    let (model, _) = match model::load(args, &mut phases) {
        Ok(loaded) => loaded,
        Err(e) => return runtime::startup_failure(&e),
    };
    let context = model.gpt2.config().n_positions;
    let tokens = match model.tokenizer.encode(if prompt.is_empty() {
        text::END_OF_TEXT
    } else {
        prompt
    }) {
        Ok(tokens) if tokens.len() + options.max_tokens <= context => tokens,
        Ok(tokens) => {
            eprintln!(
                "error: {} prompt tokens + {} to generate exceed the context of {context}",
                tokens.len(),
                options.max_tokens
            );
            return ExitCode::from(runtime::EXIT_CONFIG);
        }
        Err(e) => return runtime::startup_failure(&e),
    };
    let generation = match Generation::start(&model.gpt2, &model.tokenizer, &tokens, options) {
        Ok((generation, _)) => generation,
        Err(e) => return runtime::startup_failure(&e),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{prompt}");
    for step in generation {
        match step {
            Ok(step) => {
                let _ = write!(stdout, "{}", step.text);
                let _ = stdout.flush();
            }
            Err(e) => {
                eprintln!("\nerror: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = writeln!(stdout);
    ExitCode::SUCCESS
}

fn search(
    args: &ModelArgs,
    corpus: &std::path::Path,
    max_rerank: usize,
    rerank: &RerankArgs,
    as_json: bool,
    query: String,
) -> ExitCode {
    let mut phases = InitPhases::new();
    let (model, card) = match model::load(args, &mut phases) {
        Ok(loaded) => loaded,
        Err(e) => return runtime::startup_failure(&e),
    };
    let corpus = match model::load_corpus(corpus, &mut phases) {
        Ok(corpus) => Arc::new(corpus),
        Err(e) => return runtime::startup_failure(&e),
    };
    let request = SearchRequest {
        query: Some(query),
        documents: None,
        file: None,
        max_rerank: Some(max_rerank as u64),
        return_metadata: true,
        rerank_weight: None,
    };
    let context = model.gpt2.config().n_positions;
    let search = match request.validate(
        Some(&corpus),
        &model.tokenizer,
        context,
        max_rerank.max(1),
        rerank,
    ) {
        Ok(search) => search,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return ExitCode::from(runtime::EXIT_CONFIG);
        }
    };
    let hits = match model::run_search(&model, &search, rerank.passage_tokens) {
        Ok(hits) => hits,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string(&search::answer(&card.id, &search, &hits)).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:>4}  {:>9}  {:>9}  {:>9}  {:<12}  text",
        "rank", "score", "bm25", "gpt2", "id"
    );
    for (rank, hit) in hits.iter().enumerate() {
        let document = &corpus.documents()[hit.document];
        let snippet: String = document.text.chars().take(60).collect();
        let model_score = hit.model.map_or("-".to_string(), |m| format!("{m:.3}"));
        println!(
            "{:>4}  {:>9.3}  {:>9.3}  {:>9}  {:<12}  {snippet}",
            rank + 1,
            hit.score,
            hit.lexical,
            model_score,
            document.id
        );
    }
    ExitCode::SUCCESS
}
