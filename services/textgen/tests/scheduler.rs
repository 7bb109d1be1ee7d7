//! The model thread's scheduler driven step by step, without HTTP, on the trained tiny GPT-2:
//! with a long search and an embeddings request being read, every running generation gets a
//! token in every step, a step reads no more than its budget, and every answer equals the one
//! the same work gets alone; a client that goes away frees its rows at the next step.

use std::path::PathBuf;
use std::sync::Arc;

use runtime::Metrics;
use text::embedding::Embeddings;
use text::retrieval::{SearchHit, SearchOptions};
use text::{embed, GenerateOptions, Generation, Gpt2, Gpt2Tokenizer, SamplingParams, WeightPrecision};
use textgen::model::{prepare_search, run_search, TextModel};
use textgen::scheduler::{ChoiceJob, Event, Job, Scheduler, StepLimits, StepRows, Task};
use textgen::search::{Documents, Search};
use tokio::sync::{mpsc, oneshot};

const STEP_TOKENS: usize = 16;
const PASSAGE_TOKENS: usize = 32;

fn model() -> TextModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gpt2-tiny-trained");
    TextModel {
        gpt2: Gpt2::load(
            &dir.join("config.json"),
            &dir.join("model.safetensors"),
            WeightPrecision::F32,
            simd::level(),
        )
        .expect("the fixture loads"),
        tokenizer: Gpt2Tokenizer::builtin().expect("the built-in BPE"),
    }
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop: Vec::new(),
        logprobs: None,
    }
}

/// Two dozen different short reports, most with some of the query's words.
fn documents() -> Vec<String> {
    let who = [
        "The council",
        "Fire crews",
        "Residents",
        "The mayor",
        "Police",
        "Volunteers",
    ];
    let did = ["met about", "fought", "warned of", "cleaned up after"];
    let what = [
        "the flood",
        "a bushfire",
        "the budget",
        "the storm",
        "a warehouse fire",
        "the river",
    ];
    (0..24)
        .map(|i| {
            format!(
                "{} {} {} on day {i}, and {} said the work went on through the night.",
                who[i % who.len()],
                did[i % did.len()],
                what[(i * 5 + i / 6) % what.len()],
                who[(i + 3) % who.len()].to_lowercase(),
            )
        })
        .collect()
}

fn search() -> Search {
    Search {
        query: "fire crews flood council".into(),
        documents: Documents::Given(Arc::new(documents())),
        options: SearchOptions {
            max_rerank: 24,
            rerank_weight: 1.0,
        },
        return_metadata: false,
    }
}

fn inputs(model: &TextModel) -> Vec<Vec<u32>> {
    documents()
        .iter()
        .map(|text| model.tokenizer.encode(text).expect("tokenizes"))
        .collect()
}

/// A stream's events so far: its text, whether it is done.
#[derive(Default)]
struct Stream {
    text: String,
    tokens: usize,
    done: bool,
}

impl Stream {
    /// Takes what arrived since the last call; answers how many tokens.
    fn drain(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) -> usize {
        let mut tokens = 0;
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Token { step, .. } => {
                    self.text.push_str(&step.text);
                    tokens += 1;
                }
                Event::Done { .. } => self.done = true,
                Event::Prompt { .. } => {}
                Event::Failed(message) => panic!("a generation failed: {message}"),
            }
        }
        self.tokens += tokens;
        tokens
    }
}

fn scheduler(model: &TextModel) -> Scheduler<'_> {
    let limits = StepLimits {
        max_batch: 4,
        step_tokens: STEP_TOKENS,
    };
    Scheduler::new(model, limits, Arc::new(Metrics::default()))
}

/// Hands the scheduler the test's search; answers where its hits come.
fn admit_search(scheduler: &mut Scheduler<'_>, model: &TextModel) -> Answer<Vec<SearchHit>> {
    let (reply, answer) = oneshot::channel();
    let search = prepare_search(model, &search(), PASSAGE_TOKENS).unwrap();
    scheduler.admit(Job::Read(Task::Search { search, reply }));
    answer
}

/// Hands the scheduler the test's inputs to embed; answers where the vectors come.
fn admit_embeddings(scheduler: &mut Scheduler<'_>, model: &TextModel) -> Answer<Vec<Vec<f32>>> {
    let (reply, answer) = oneshot::channel();
    let embeddings = Embeddings::new(inputs(model)).unwrap();
    scheduler.admit(Job::Read(Task::Embed { embeddings, reply }));
    answer
}

type Answer<T> = oneshot::Receiver<Result<T, text::TextError>>;

fn start_stream(
    scheduler: &mut Scheduler<'_>,
    prompt: &[u32],
    max_tokens: usize,
) -> mpsc::UnboundedReceiver<Event> {
    let (events, receiver) = mpsc::unbounded_channel();
    scheduler.admit(Job::Complete {
        choices: vec![ChoiceJob {
            prompt: prompt.to_vec(),
            options: greedy(max_tokens),
        }],
        events,
    });
    receiver
}

fn lone_text(model: &TextModel, prompt: &[u32], max_tokens: usize) -> String {
    let (generation, _) =
        Generation::start(&model.gpt2, &model.tokenizer, prompt, greedy(max_tokens)).unwrap();
    generation.map(|step| step.unwrap().text).collect()
}

#[test]
fn every_running_generation_gets_a_token_in_every_step_while_a_search_and_embeddings_are_read() {
    let model = model();
    let mut scheduler = scheduler(&model);
    let prompts: Vec<Vec<u32>> = ["The fire", "Residents said"]
        .iter()
        .map(|p| model.tokenizer.encode(p).unwrap())
        .collect();
    let max_tokens = 400;
    let mut receivers: Vec<_> = prompts
        .iter()
        .map(|prompt| start_stream(&mut scheduler, prompt, max_tokens))
        .collect();
    let mut streams: Vec<Stream> = (0..2).map(|_| Stream::default()).collect();
    // The prompts are read in the first step, the first tokens sent in the second.
    scheduler.step();
    scheduler.step();
    for (stream, receiver) in streams.iter_mut().zip(&mut receivers) {
        assert_eq!(stream.drain(receiver), 1);
    }

    let mut search_answer = admit_search(&mut scheduler, &model);
    let mut embed_answer = admit_embeddings(&mut scheduler, &model);

    let (mut hits, mut vectors) = (None, None);
    let mut steps = 0;
    let mut search_rows = 0;
    while hits.is_none() || vectors.is_none() {
        let live = streams.iter().filter(|s| !s.done).count();
        let rows: StepRows = scheduler.step();
        steps += 1;
        assert!(live > 0, "the streams ended before the search and embeddings");
        assert_eq!(rows.generate, live, "step {steps}: {rows:?}");
        assert!(
            rows.prompt + rows.search + rows.embed <= STEP_TOKENS,
            "step {steps} read past its budget: {rows:?}"
        );
        search_rows += rows.search;
        for (stream, receiver) in streams.iter_mut().zip(&mut receivers) {
            if !stream.done {
                assert_eq!(stream.drain(receiver), 1, "step {steps}: a stream got no token");
            }
        }
        if let Ok(answer) = search_answer.try_recv() {
            hits = Some(answer.expect("the search succeeds"));
        }
        if let Ok(answer) = embed_answer.try_recv() {
            vectors = Some(answer.expect("the embeddings succeed"));
        }
    }
    assert!(
        steps > 40 && search_rows > 20 * STEP_TOKENS / 2,
        "{steps} steps, {search_rows} search rows: not cut into pieces"
    );

    let alone = run_search(&model, &search(), PASSAGE_TOKENS).unwrap();
    let hits = hits.unwrap();
    let order = |hits: &[SearchHit]| hits.iter().map(|h| h.document).collect::<Vec<_>>();
    assert_eq!(order(&hits), order(&alone));
    for (got, want) in hits.iter().zip(&alone) {
        assert!((got.score - want.score).abs() < 1e-4, "{got:?} vs {want:?}");
        assert!(got.model.is_some());
    }
    let inputs = inputs(&model);
    let lone_vectors = embed(&model.gpt2, &inputs.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    for (got, want) in vectors.unwrap().iter().zip(&lone_vectors) {
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "an embedding differs by {worst}");
    }

    while !scheduler.is_idle() {
        scheduler.step();
    }
    for ((stream, receiver), prompt) in streams.iter_mut().zip(&mut receivers).zip(&prompts) {
        stream.drain(receiver);
        assert!(stream.done);
        assert_eq!(stream.text, lone_text(&model, prompt, max_tokens));
    }
}

#[test]
fn alone_a_search_reads_full_passes_and_a_prompt_beside_it_gets_its_share() {
    let model = model();
    let mut scheduler = scheduler(&model);
    let mut answer = admit_search(&mut scheduler, &model);
    // With nothing generating, all of it fits one pass.
    let rows = scheduler.step();
    assert!(rows.search > 24 * 10 && rows.generate == 0, "{rows:?}");
    assert!(answer.try_recv().is_ok(), "the search took more than one step");

    // A prompt and a search starting together share the pass; the prompt is short, so it
    // takes what it needs and the search the rest.
    let _answer = admit_search(&mut scheduler, &model);
    let prompt = model.tokenizer.encode("The fire crews").unwrap();
    let _events = start_stream(&mut scheduler, &prompt, 50);
    let rows = scheduler.step();
    assert_eq!(rows.prompt, prompt.len());
    assert!(rows.search > 24 * 10, "{rows:?}");
}

#[test]
fn a_client_gone_frees_its_rows_at_the_next_step() {
    let model = model();
    let mut scheduler = scheduler(&model);
    let prompt = model.tokenizer.encode("The fire").unwrap();
    let mut events = start_stream(&mut scheduler, &prompt, 400);
    scheduler.step();
    let search_answer = admit_search(&mut scheduler, &model);
    let embed_answer = admit_embeddings(&mut scheduler, &model);
    let rows = scheduler.step();
    assert!(rows.search > 0 && rows.embed > 0, "{rows:?}");

    drop(search_answer);
    let rows = scheduler.step();
    assert_eq!((rows.search, rows.embed), (0, STEP_TOKENS), "{rows:?}");
    drop(embed_answer);
    let rows = scheduler.step();
    assert_eq!((rows.generate, rows.search, rows.embed), (1, 0, 0), "{rows:?}");

    let mut stream = Stream::default();
    stream.drain(&mut events);
    drop(events);
    scheduler.step();
    assert!(scheduler.is_idle(), "the stream's generation did not leave");
    assert!(!stream.done && stream.tokens > 0);
}
