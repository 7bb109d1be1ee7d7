//! The model thread: model compute runs on its own OS thread, never on the async runtime, fed by
//! a bounded queue. A full queue is answered with 429 at once rather than growing without bound.
//! Either the thread takes batches of queued jobs ([`ModelWorker::spawn`]: whatever is queued,
//! plus what arrives within a short batching window from requests already being prepared), or a
//! scheduler owns the queue and mixes new jobs into running work
//! ([`ModelWorker::spawn_scheduler`], continuous batching).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a batching thread that waits for announced jobs checks that they are still coming.
const ARRIVAL_CHECK: Duration = Duration::from_micros(200);

use crate::error::ApiError;
use crate::metrics::Metrics;

/// A handle to submit jobs to a model thread. Jobs carry their own reply channel.
#[derive(Debug)]
pub struct ModelWorker<J> {
    sender: SyncSender<J>,
    arriving: Arc<AtomicUsize>,
}

impl<J> Clone for ModelWorker<J> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            arriving: self.arriving.clone(),
        }
    }
}

/// A job on its way to the queue: its request is still being prepared (images decoded, say).
/// The batching thread waits for announced jobs, within its window, and for no others, so a lone
/// request never waits for company that is not coming. Drop it just before submitting the job
/// (or when the request fails).
#[derive(Debug)]
pub struct Arrival {
    arriving: Arc<AtomicUsize>,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.arriving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The model thread's end of the queue.
pub struct JobQueue<J> {
    receiver: Receiver<J>,
    arriving: Arc<AtomicUsize>,
}

impl<J> JobQueue<J> {
    /// Jobs announced ([`ModelWorker::arriving`]) and not yet submitted.
    pub fn arriving(&self) -> usize {
        self.arriving.load(Ordering::SeqCst)
    }

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
        let arriving = Arc::new(AtomicUsize::new(0));
        let queue = JobQueue {
            receiver,
            arriving: arriving.clone(),
        };
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || schedule(queue))?;
        Ok(Self { sender, arriving })
    }

    /// Starts a thread that hands `handle` batches of jobs costing up to `max_batch_cost`
    /// together (`cost`: a job's inputs, images say, not one per request): after the first job
    /// of a batch, it takes what is queued and, up to `batch_window` (zero: never), waits for
    /// announced jobs ([`ModelWorker::arriving`]). A job that would take the batch past the
    /// limit starts the next one; a job costing more than the limit alone runs as a batch of
    /// its own. A panic inside `handle` drops that batch's jobs (their callers see an error) and
    /// the thread carries on.
    pub fn spawn(
        name: &str,
        capacity: usize,
        max_batch_cost: usize,
        batch_window: Duration,
        metrics: Arc<Metrics>,
        cost: impl Fn(&J) -> usize + Send + 'static,
        mut handle: impl FnMut(Vec<J>) + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::spawn_scheduler(name, capacity, move |queue| {
            let mut carried: Option<J> = None;
            while let Some(first) = carried.take().or_else(|| queue.wait()) {
                let closes = Instant::now() + batch_window;
                let mut batch_cost = cost(&first);
                let mut batch = vec![first];
                while batch_cost < max_batch_cost {
                    let job = match queue.poll() {
                        Some(job) => job,
                        None => {
                            let now = Instant::now();
                            if queue.arriving() == 0 || now >= closes {
                                break;
                            }
                            match queue.poll_until(closes.min(now + ARRIVAL_CHECK)) {
                                Some(job) => job,
                                None => continue,
                            }
                        }
                    };
                    let job_cost = cost(&job);
                    if batch_cost + job_cost > max_batch_cost {
                        carried = Some(job);
                        break;
                    }
                    batch_cost += job_cost;
                    batch.push(job);
                }
                metrics.observe_batch(batch_cost);
                if catch_unwind(AssertUnwindSafe(|| handle(batch))).is_err() {
                    tracing::error!("the model thread panicked on a batch; its requests get 500");
                }
            }
        })
    }

    /// Announces a job that will be submitted once its request is prepared.
    pub fn arriving(&self) -> Arrival {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        Arrival {
            arriving: self.arriving.clone(),
        }
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    /// A worker whose jobs cost their own value, at most 8 a batch.
    fn worker(window: Duration) -> (ModelWorker<u32>, Receiver<Vec<u32>>) {
        let (batches, received) = channel();
        let metrics = Arc::new(Metrics::default());
        let cost = |job: &u32| *job as usize;
        let worker = ModelWorker::spawn(
            "test-model",
            8,
            8,
            window,
            metrics,
            cost,
            move |batch: Vec<u32>| {
                let _ = batches.send(batch);
            },
        )
        .unwrap();
        (worker, received)
    }

    /// Batches are cut by cost, not by count: a job that would go past the limit starts the
    /// next batch, and one over the limit alone runs by itself.
    #[test]
    fn batches_are_limited_by_cost() {
        let (batches, received) = channel();
        let metrics = Arc::new(Metrics::default());
        let (started, start) = channel::<()>();
        let handle = move |batch: Vec<u32>| {
            if batch == [1] {
                // Hold the thread until the other jobs are queued behind this one.
                let _ = start.recv();
            }
            let _ = batches.send(batch);
        };
        let cost = |job: &u32| *job as usize;
        let worker = ModelWorker::spawn("test-model", 16, 8, Duration::ZERO, metrics, cost, handle).unwrap();
        worker.submit(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for job in [3, 4, 2, 12, 5] {
            worker.submit(job).unwrap();
        }
        started.send(()).unwrap();
        let got: Vec<Vec<u32>> = (0..5)
            .map(|_| received.recv_timeout(Duration::from_secs(2)).unwrap())
            .collect();
        assert_eq!(got, [vec![1], vec![3, 4], vec![2], vec![12], vec![5]]);
    }

    /// With nothing announced, a lone job runs at once, not after the window.
    #[test]
    fn a_lone_job_does_not_wait_for_the_window() {
        let (worker, batches) = worker(Duration::from_secs(5));
        let sent = Instant::now();
        worker.submit(1).unwrap();
        assert_eq!(batches.recv_timeout(Duration::from_secs(2)).unwrap(), vec![1]);
        assert!(sent.elapsed() < Duration::from_secs(2));
    }

    /// A job announced before the first is queued joins its batch when it comes within the
    /// window.
    #[test]
    fn an_announced_job_joins_the_batch() {
        let (worker, batches) = worker(Duration::from_secs(5));
        let arrival = worker.arriving();
        worker.submit(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(arrival);
        worker.submit(2).unwrap();
        assert_eq!(batches.recv_timeout(Duration::from_secs(2)).unwrap(), vec![1, 2]);
    }

    /// An announcement withdrawn without a job (its request failed) stops the wait.
    #[test]
    fn a_withdrawn_announcement_ends_the_wait() {
        let (worker, batches) = worker(Duration::from_secs(5));
        let arrival = worker.arriving();
        let sent = Instant::now();
        worker.submit(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(arrival);
        assert_eq!(batches.recv_timeout(Duration::from_secs(2)).unwrap(), vec![1]);
        assert!(sent.elapsed() < Duration::from_secs(2));
    }
}
