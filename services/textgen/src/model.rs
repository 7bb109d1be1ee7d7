//! Loading GPT-2 and its tokenizer (each step an init phase), and running completions on the
//! model thread, sending each token as it comes.

use std::sync::Arc;

use runtime::{ComputeArgs, InitPhases, Metrics, ModelCard, ModelWorker};
use serde_json::json;
use text::{FinishReason, GenerateOptions, Generation, Gpt2, Gpt2Tokenizer, Step, TextError, TokenLogprob};
use tokio::sync::mpsc;

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

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] hub::HubError),
    #[error("{0}")]
    Model(#[from] TextError),
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
    args.compute.require_cpu_f32().map_err(LoadError::Unsupported)?;
    let source: hub::ModelSource = args.model.parse()?;
    let (config_path, weights_path) = phases.run("resolve_weights", || -> Result<_, hub::HubError> {
        Ok((source.fetch("config.json")?, source.fetch("model.safetensors")?))
    })?;
    let gpt2 = phases.run("load_weights", || Gpt2::load(&config_path, &weights_path))?;
    let tokenizer = phases.run("load_tokenizer", || -> Result<Gpt2Tokenizer, LoadError> {
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
    })?;
    if tokenizer.vocab_size() != gpt2.config().vocab_size {
        return Err(LoadError::Unsupported(format!(
            "the tokenizer has {} tokens but the model {}",
            tokenizer.vocab_size(),
            gpt2.config().vocab_size
        )));
    }
    phases.run("warm_up", || {
        gpt2.forward(&[0], &mut text::KvCache::default()).map(drop)
    })?;
    let config = gpt2.config();
    let card = ModelCard {
        id: source.model_name(),
        source: source.to_string(),
        device: "cpu".into(),
        dtype: args.compute.dtype.to_string(),
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

/// Every choice of one request, and where their events go.
pub struct Job {
    pub choices: Vec<ChoiceJob>,
    pub events: mpsc::Sender<Event>,
}

/// Starts the model thread; jobs run one after the other, each choice token by token. A
/// closed event channel (the client went away) stops the generation at the next token.
pub fn spawn_worker(
    model: Arc<TextModel>,
    capacity: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<ModelWorker<Job>> {
    let counters = metrics.clone();
    ModelWorker::spawn("textgen-model", capacity, 1, metrics, move |jobs: Vec<Job>| {
        for job in jobs {
            if let Err(cancelled) = run_job(&model, job) {
                counters.increment("generations_cancelled", 1);
                tracing::info!(generated = cancelled, "client went away: generation stopped");
            }
        }
    })
}

/// Runs a job; `Err(tokens generated)` when the client went away.
fn run_job(model: &TextModel, job: Job) -> Result<(), usize> {
    let send = |event: Event| job.events.blocking_send(event).map_err(|_| ());
    for (choice, ChoiceJob { prompt, options }) in job.choices.into_iter().enumerate() {
        let (generation, logprobs) = match Generation::start(&model.gpt2, &model.tokenizer, &prompt, options)
        {
            Ok(started) => started,
            Err(e) => {
                let _ = send(Event::Failed(e.to_string()));
                return Ok(());
            }
        };
        send(Event::Prompt { choice, logprobs }).map_err(|_| 0usize)?;
        let mut generation = generation;
        let mut completion_tokens = 0;
        for step in generation.by_ref() {
            match step {
                Ok(step) => {
                    completion_tokens += 1;
                    send(Event::Token { choice, step }).map_err(|_| completion_tokens)?;
                }
                Err(e) => {
                    let _ = send(Event::Failed(e.to_string()));
                    return Ok(());
                }
            }
        }
        let finish_reason = generation.finish_reason().unwrap_or(FinishReason::Length);
        send(Event::Done {
            choice,
            finish_reason,
            completion_tokens,
        })
        .map_err(|_| completion_tokens)?;
    }
    Ok(())
}
