//! The model thread: model compute runs on its own OS thread, never on the async runtime, fed by
//! a bounded queue. A full queue is answered with 429 at once rather than growing without bound.
//! Either the thread takes batches of queued jobs ([`ModelWorker::spawn`]: whatever is queued,
//! plus what arrives within a short batching window), or a scheduler owns the queue and mixes
//! new jobs into running work ([`ModelWorker::spawn_scheduler`], continuous batching).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// A handle to submit jobs to a model thread. Jobs carry their own reply channel.
#[derive(Debug)]
pub struct ModelWorker<J> {
    sender: SyncSender<J>,
}

impl<J> Clone for ModelWorker<J> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
        }
    }
}

/// The model thread's end of the queue.
pub struct JobQueue<J> {
    receiver: Receiver<J>,
}

impl<J> JobQueue<J> {
    /// Blocks until a job arrives; `None` once every handle is gone (the service is stopping).
    pub fn wait(&self) -> Option<J> {
        self.receiver.recv().ok()
    }

    /// A job if one is queued now.
    pub fn poll(&self) -> Option<J> {
        self.receiver.try_recv().ok()
    }

    /// A job if one arrives before `deadline`.
    pub fn poll_until(&self, deadline: Instant) -> Option<J> {
        self.receiver
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }
}

impl<J: Send + 'static> ModelWorker<J> {
    /// Starts a thread that runs `schedule` with the queue; it decides when to take jobs.
    pub fn spawn_scheduler(
        name: &str,
        capacity: usize,
        schedule: impl FnOnce(JobQueue<J>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<J>(capacity.max(1));
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || schedule(JobQueue { receiver }))?;
        Ok(Self { sender })
    }

    /// Starts a thread that hands `handle` up to `max_batch` jobs at a time: after the first
    /// job of a batch, it waits up to `batch_window` for more (zero: only what is already
    /// queued). A panic inside `handle` drops that batch's jobs (their callers see an error) and
    /// the thread carries on.
    pub fn spawn(
        name: &str,
        capacity: usize,
        max_batch: usize,
        batch_window: Duration,
        metrics: Arc<Metrics>,
        mut handle: impl FnMut(Vec<J>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let max_batch = max_batch.max(1);
        Self::spawn_scheduler(name, capacity, move |queue| {
            while let Some(first) = queue.wait() {
                let closes = Instant::now() + batch_window;
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match queue.poll_until(closes) {
                        Some(job) => batch.push(job),
                        None => break,
                    }
                }
                metrics.observe_batch(batch.len());
                if catch_unwind(AssertUnwindSafe(|| handle(batch))).is_err() {
                    tracing::error!("the model thread panicked on a batch; its requests get 500");
                }
            }
        })
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: J) -> Result<(), ApiError> {
        self.sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::overloaded("the model queue is full; retry shortly"),
            TrySendError::Disconnected(_) => {
                ApiError::unavailable("worker_stopped", "the model thread has stopped")
            }
        })
    }
}
