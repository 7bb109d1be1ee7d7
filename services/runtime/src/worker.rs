//! The model thread: model compute runs on its own OS thread, never on the async runtime, fed by
//! a bounded queue. A full queue is answered with 429 at once rather than growing without bound.
//! Whatever is queued when the thread wakes up is handled as one batch, and a short batching
//! window lets requests that arrive together share a forward pass.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
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

impl<J: Send + 'static> ModelWorker<J> {
    /// Starts the thread. `handle` gets up to `max_batch` jobs at a time: after the first job
    /// of a batch, the thread waits up to `batch_window` for more (zero: it takes only what is
    /// already queued). A panic inside `handle` drops that batch's jobs (their callers see an
    /// error) and the thread carries on.
    pub fn spawn(
        name: &str,
        capacity: usize,
        max_batch: usize,
        batch_window: Duration,
        metrics: Arc<Metrics>,
        mut handle: impl FnMut(Vec<J>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<J>(capacity.max(1));
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let closes = Instant::now() + batch_window;
                    let mut batch = vec![first];
                    while batch.len() < max_batch {
                        let left = closes.saturating_duration_since(Instant::now());
                        match receiver.recv_timeout(left) {
                            Ok(job) => batch.push(job),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    metrics.observe_batch(batch.len());
                    if catch_unwind(AssertUnwindSafe(|| handle(batch))).is_err() {
                        tracing::error!("the model thread panicked on a batch; its requests get 500");
                    }
                }
            })?;
        Ok(Self { sender })
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
