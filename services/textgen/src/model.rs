//! Loading GPT-2, its tokenizer and the search corpus (each step an init phase), and preparing
//! a search's work for the model thread ([`crate::scheduler`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use runtime::{ComputeArgs, DTypeArg, InitPhases, ModelCard};
use serde_json::json;
use text::retrieval::{Bm25Index, Bm25Params, Corpus, CorpusError, PendingSearch, Reranker, SearchHit};
use text::{Gpt2, Gpt2Tokenizer, TextError, WeightPrecision};

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

/// A search's lexical stage and the preparation of its model stage (BM25 over the corpus
/// index, or over an index of the request's documents built here; the candidates' passages
/// tokenized): everything but the model's own work, which the scheduler reads beside the rest.
pub fn prepare_search(
    model: &TextModel,
    search: &Search,
    passage_tokens: usize,
) -> Result<PendingSearch, TextError> {
    let reranker = Reranker::new(&model.gpt2, &model.tokenizer, passage_tokens)?;
    let document_text = |i| search.documents.text(i);
    match &search.documents {
        Documents::Corpus(corpus) => PendingSearch::new(
            corpus.index(),
            document_text,
            &search.query,
            search.options,
            &reranker,
        ),
        Documents::Given(documents) => {
            let index = Bm25Index::build(documents.iter().map(String::as_str), Bm25Params::default());
            PendingSearch::new(&index, document_text, &search.query, search.options, &reranker)
        }
    }
}

/// Runs a search to its end on this thread, alone (the command line's `search`).
pub fn run_search(
    model: &TextModel,
    search: &Search,
    passage_tokens: usize,
) -> Result<Vec<SearchHit>, TextError> {
    let mut pending = prepare_search(model, search, passage_tokens)?;
    text::read_alone(&model.gpt2, &mut pending, || false)?;
    Ok(pending.hits())
}
