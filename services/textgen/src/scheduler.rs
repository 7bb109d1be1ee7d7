//! The model thread: every request's model work in batched steps, so that none of it stops
//! the streams already running.
//!
//! # Policy
//!
//! A step is one batched pass of the model ([`text::Gpt2::read_pieces`]) over rows of three
//! kinds:
//!
//! 1. **Generating sequences**, one row each (the token each sampled last), every step: each
//!    running generation gets a token per step, whatever else is running. At most
//!    `max_batch` sequences run; more wait in the queue.
//! 2. **Reading**: prompts not yet read, search candidates being scored and inputs being
//!    embedded, cut into pieces ([`text::reading`]). While any sequence is generating, they
//!    get `step_tokens` rows per step in all, which is what bounds a step's time: at most
//!    `max_batch + step_tokens` rows, whatever was asked. When none is generating, they get
//!    [`PASS_ROWS`] rows, so that work alone runs in passes as large as before.
//! 3. **Sharing**: the reading rows are shared equally between the jobs reading (each prompt,
//!    each search, each embeddings request); one that needs less than its share leaves the
//!    rest to the others. A search thus never holds up a new stream's prompt for more than
//!    its share, nor a prompt a search.
//!
//! A client that goes away frees its rows at once: a stream's generation leaves at the next
//! step (its next token finds the channel closed, or its prompt is dropped unread), and a search
//! or embeddings request whose reply channel is closed is dropped, with its caches, before the
//! next step takes any of its rows. Every step is counted in `/metrics` (rows by kind, time).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use runtime::{JobQueue, Metrics, ModelWorker};
use text::embedding::Embeddings;
use text::reading::PASS_ROWS;
use text::retrieval::{PendingSearch, SearchHit};
use text::{
    FinishReason, GenerateOptions, Generation, Piece, PieceOutput, Reading, Step, TextError, TokenLogprob,
};
use tokio::sync::{mpsc, oneshot};

use crate::model::TextModel;

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

/// Where a search's or an embeddings request's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, TextError>>;

/// Work for the model thread; each kind carries where its answer goes.
pub enum Job {
    /// Every choice of one completion request; events stream back as tokens come.
    Complete {
        choices: Vec<ChoiceJob>,
        events: mpsc::UnboundedSender<Event>,
    },
    /// A search or an embeddings request, read in pieces beside the generations.
    Read(Task),
}

/// How much one step may take.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Most sequences generating together.
    pub max_batch: usize,
    /// Rows of reading per step while sequences are generating.
    pub step_tokens: usize,
}

/// Rows of each kind in one step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepRows {
    pub generate: usize,
    pub prompt: usize,
    pub search: usize,
    pub embed: usize,
}

impl StepRows {
    fn total(&self) -> usize {
        self.generate + self.prompt + self.search + self.embed
    }

    fn by_kind(&self) -> [(&'static str, usize); 4] {
        [
            ("generate", self.generate),
            ("prompt", self.prompt),
            ("search", self.search),
            ("embeddings", self.embed),
        ]
    }
}

/// Starts the model thread (see the module documentation for what a step holds).
pub fn spawn_worker(
    model: Arc<TextModel>,
    capacity: usize,
    limits: StepLimits,
    metrics: Arc<Metrics>,
) -> std::io::Result<ModelWorker<Job>> {
    ModelWorker::spawn_scheduler("textgen-model", capacity, move |queue| {
        Scheduler::new(&model, limits, metrics).run(&queue);
    })
}

/// One choice being generated.
struct Running<'m> {
    generation: Generation<'m>,
    choice: usize,
    events: mpsc::UnboundedSender<Event>,
    completion_tokens: usize,
}

/// Work read in pieces beside the generations, with where its answer goes.
pub enum Task {
    /// A search whose lexical stage has run ([`crate::model::prepare_search`]).
    Search {
        search: PendingSearch,
        reply: Reply<Vec<SearchHit>>,
    },
    /// One embedding per input, in order.
    Embed {
        embeddings: Embeddings,
        reply: Reply<Vec<Vec<f32>>>,
    },
}

impl Task {
    fn reading(&mut self) -> &mut dyn Reading {
        match self {
            Task::Search { search, .. } => search,
            Task::Embed { embeddings, .. } => embeddings,
        }
    }

    fn unread(&self) -> usize {
        match self {
            Task::Search { search, .. } => search.unread(),
            Task::Embed { embeddings, .. } => embeddings.unread(),
        }
    }

    fn client_gone(&self) -> bool {
        match self {
            Task::Search { reply, .. } => reply.is_closed(),
            Task::Embed { reply, .. } => reply.is_closed(),
        }
    }

    /// The counter of its cancellations.
    fn cancelled_counter(&self) -> &'static str {
        match self {
            Task::Search { .. } => "searches_cancelled",
            Task::Embed { .. } => "embeddings_cancelled",
        }
    }

    fn rows(&self, rows: usize, into: &mut StepRows) {
        match self {
            Task::Search { .. } => into.search += rows,
            Task::Embed { .. } => into.embed += rows,
        }
    }

    /// Sends the answer.
    fn finish(self) {
        match self {
            Task::Search { search, reply } => drop(reply.send(Ok(search.hits()))),
            Task::Embed { embeddings, reply } => drop(reply.send(Ok(embeddings.vectors()))),
        }
    }

    fn fail(self, message: &str) {
        let error = || TextError::Step(message.to_string());
        match self {
            Task::Search { reply, .. } => drop(reply.send(Err(error()))),
            Task::Embed { reply, .. } => drop(reply.send(Err(error()))),
        }
    }
}

/// What a step asks of one running generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Nothing this step.
    Idle,
    /// Reads the token it sampled.
    Decode,
    /// Reads the next piece of its prompt.
    Prompt,
}

/// The model thread's state: the running generations and the searches and embeddings being
/// read, stepped together.
pub struct Scheduler<'m> {
    model: &'m TextModel,
    limits: StepLimits,
    metrics: Arc<Metrics>,
    running: Vec<Running<'m>>,
    tasks: Vec<Task>,
}

impl<'m> Scheduler<'m> {
    pub fn new(model: &'m TextModel, limits: StepLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            model,
            limits: StepLimits {
                max_batch: limits.max_batch.max(1),
                step_tokens: limits.step_tokens.max(1),
            },
            metrics,
            running: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Steps until every handle to the queue is gone and no work is left.
    fn run(mut self, queue: &JobQueue<Job>) {
        loop {
            if self.is_idle() {
                match queue.wait() {
                    Some(job) => self.guarded("admitting a job", |s| s.admit(job)),
                    None => return,
                }
            }
            while self.running.len() < self.limits.max_batch {
                match queue.poll() {
                    Some(job) => self.guarded("admitting a job", |s| s.admit(job)),
                    None => break,
                }
            }
            self.guarded("a model step", |s| {
                s.step();
            });
        }
    }

    /// No generation running and nothing being read.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.tasks.is_empty()
    }

    /// Runs `work`; a panic drops the running work (its clients see an error) and the thread
    /// carries on.
    fn guarded(&mut self, what: &str, work: impl FnOnce(&mut Self)) {
        if catch_unwind(AssertUnwindSafe(|| work(self))).is_err() {
            tracing::error!("the model thread panicked in {what}; its requests get 500");
            self.running.clear();
            self.tasks.clear();
        }
    }

    fn cancelled(&self, generated: usize) {
        self.metrics.increment("generations_cancelled", 1);
        tracing::info!(generated, "client went away: generation stopped");
    }

    /// Takes a job in: its generations start reading their prompts at the next step, a
    /// search or an embeddings request its rows.
    pub fn admit(&mut self, job: Job) {
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
            // One with nothing for the model (a search that ranks by BM25 alone) is answered
            // at once.
            Job::Read(task) if task.unread() == 0 => task.finish(),
            Job::Read(task) => self.tasks.push(task),
        }
    }

    /// One step: the generating sequences sample a token and send it, then the model reads
    /// their tokens, pieces of prompts, candidates and inputs in one batched pass (see the
    /// module documentation for the shares). Answers the rows it read.
    pub fn step(&mut self) -> StepRows {
        let started = Instant::now();
        self.drop_cancelled_tasks();
        let count = self.running.len();
        let mut roles = vec![Role::Idle; count];
        let mut inputs: Vec<Vec<u32>> = vec![Vec::new(); count];
        let mut leaving = vec![false; count];
        for (i, run) in self.running.iter_mut().enumerate() {
            if !run.generation.unread_prompt().is_empty() {
                // A client gone while its long prompt is read in pieces stops it here.
                match run.events.is_closed() {
                    true => leaving[i] = true,
                    false => roles[i] = Role::Prompt,
                }
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
                Some(token) => {
                    inputs[i] = vec![token];
                    roles[i] = Role::Decode;
                }
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

        let mut rows = StepRows {
            generate: roles.iter().filter(|&&role| role == Role::Decode).count(),
            ..StepRows::default()
        };
        let budget = match rows.generate {
            0 => PASS_ROWS,
            _ => self.limits.step_tokens,
        };
        let prompts: Vec<usize> = (0..count).filter(|&i| roles[i] == Role::Prompt).collect();
        let demands: Vec<usize> = prompts
            .iter()
            .map(|&i| self.running[i].generation.unread_prompt().len())
            .chain(self.tasks.iter().map(Task::unread))
            .collect();
        let shares = share(budget, &demands);
        for (&i, &share) in prompts.iter().zip(&shares) {
            inputs[i] = self.running[i].generation.unread_prompt()[..share].to_vec();
            rows.prompt += share;
        }
        for (task, &share) in self.tasks.iter().zip(&shares[prompts.len()..]) {
            task.rows(share, &mut rows);
        }

        if rows.total() > 0 {
            let sequences = inputs.iter().filter(|input| !input.is_empty()).count();
            self.metrics.observe_batch(sequences);
            let finished = self.read(&roles, &inputs, &shares[prompts.len()..], &mut leaving);
            // Counted before the answers go out: a client that reads /metrics after its answer
            // finds the step that made it.
            self.metrics.observe_step(&rows.by_kind(), started.elapsed());
            for (task, failure) in finished {
                match failure {
                    None => task.finish(),
                    Some(message) => task.fail(&message),
                }
            }
        }
        let mut index = 0;
        self.running.retain(|_| {
            index += 1;
            !leaving[index - 1]
        });
        rows
    }

    /// Drops the searches and embeddings requests whose clients went away.
    fn drop_cancelled_tasks(&mut self) {
        let metrics = &self.metrics;
        self.tasks.retain(|task| {
            let gone = task.client_gone();
            if gone {
                metrics.increment(task.cancelled_counter(), 1);
                tracing::info!(
                    counter = task.cancelled_counter(),
                    "client went away: its reading stopped"
                );
            }
            !gone
        });
    }

    /// The batched pass of a step: the generations' `inputs` as their `roles` say, and
    /// `task_rows[t]` rows of task `t`; hands every piece its output, marks in `leaving` the
    /// generations that are done, and takes out the tasks that are, each with its failure if
    /// it failed, for the caller to answer.
    fn read(
        &mut self,
        roles: &[Role],
        inputs: &[Vec<u32>],
        task_rows: &[usize],
        leaving: &mut [bool],
    ) -> Vec<(Task, Option<String>)> {
        let fed: Vec<usize> = (0..roles.len()).filter(|&i| !inputs[i].is_empty()).collect();
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        for (i, run) in self.running.iter_mut().enumerate() {
            if inputs[i].is_empty() {
                continue;
            }
            let len = inputs[i].len();
            let generation = &run.generation;
            let logits = match roles[i] {
                Role::Prompt if generation.scores_prompt() => 0..len,
                Role::Prompt if len < generation.unread_prompt().len() => 0..0,
                _ => len - 1..len,
            };
            pieces.push(Piece {
                tokens: &inputs[i],
                cache: Some(run.generation.cache_mut()),
                logits,
            });
        }
        let mut claimed = Vec::with_capacity(self.tasks.len());
        for (task, &rows) in self.tasks.iter_mut().zip(task_rows) {
            let before = pieces.len();
            task.reading().claim(rows, &mut pieces);
            claimed.push(pieces.len() - before);
        }
        let outputs = self.model.gpt2.read_pieces(&mut pieces);
        drop(pieces);
        let mut outputs = match outputs {
            Ok(outputs) => outputs.into_iter(),
            Err(e) => {
                self.fail_step(&fed, &claimed, &e.to_string(), leaving);
                return Vec::new();
            }
        };
        for (&i, output) in fed.iter().zip(outputs.by_ref()) {
            match roles[i] {
                Role::Prompt => leaving[i] = self.prompt_read(i, inputs[i].len(), output.logits),
                _ => {
                    if let Some(row) = output.logits.into_iter().next() {
                        self.running[i].generation.set_logits(row);
                    }
                }
            }
        }
        let mut finished = Vec::new();
        for (t, (task, &count)) in self.tasks.iter_mut().zip(&claimed).enumerate() {
            let mine: Vec<PieceOutput> = outputs.by_ref().take(count).collect();
            if count == 0 {
                continue;
            }
            match task.reading().absorb(mine) {
                Ok(()) if task.unread() == 0 => finished.push((t, None)),
                Ok(()) => {}
                Err(e) => finished.push((t, Some(e.to_string()))),
            }
        }
        finished
            .into_iter()
            .rev()
            .map(|(t, failure)| (self.tasks.remove(t), failure))
            .collect()
    }

    /// A failed pass: every generation and task that had rows in it gets the error.
    fn fail_step(&mut self, fed: &[usize], claimed: &[usize], message: &str, leaving: &mut [bool]) {
        tracing::error!(error = message, "a model step failed");
        for &i in fed {
            let run = &mut self.running[i];
            let _ = run.events.send(Event::Failed(message.to_string()));
            run.generation.abort();
            leaving[i] = true;
        }
        for t in (0..self.tasks.len()).rev() {
            if claimed[t] > 0 {
                self.tasks.remove(t).fail(message);
            }
        }
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

/// Shares `budget` rows between jobs that need `demands` rows each: equal shares, a job
/// needing less than its share leaving the rest to the others (the smallest demands are served
/// first, each taking at most an equal share of what is left); of equal demands, the earliest
/// job gets what does not divide evenly.
fn share(budget: usize, demands: &[usize]) -> Vec<usize> {
    let mut shares = vec![0; demands.len()];
    let mut by_demand: Vec<usize> = (0..demands.len()).collect();
    by_demand.sort_by_key(|&j| (demands[j], std::cmp::Reverse(j)));
    let mut left = budget;
    for (served, &j) in by_demand.iter().enumerate() {
        shares[j] = demands[j].min(left / (demands.len() - served));
        left -= shares[j];
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn rows_are_shared_equally_and_what_one_leaves_goes_to_the_others() {
        assert_eq!(share(64, &[]), Vec::<usize>::new());
        assert_eq!(share(64, &[1000]), [64]);
        assert_eq!(share(64, &[1000, 1000]), [32, 32]);
        assert_eq!(share(64, &[10, 1000, 1000]), [10, 27, 27]);
        assert_eq!(share(65, &[1000, 1000]), [33, 32]);
        assert_eq!(share(64, &[5, 7]), [5, 7]);
        assert_eq!(share(3, &[1000, 1000, 1000, 1000]), [1, 1, 1, 0]);
        assert_eq!(share(2048, &[300, 40_000]), [300, 1748]);
    }
}
