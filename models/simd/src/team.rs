//! Parallel loops for work made of many short loops, such as a decode step: about fifty matrix
//! products of a lone row, each a few tens of microseconds, with a little serial work between.
//!
//! Run on rayon, each such loop hands half its tasks to the other worker. That worker has
//! usually gone to sleep since the last loop (rayon's workers yield, then block in the kernel,
//! a few microseconds after they run out of work), so every loop pays for waking it, and in a
//! decode step that showed as the scheduler's share of the profile (docs/performance.md). Inside
//! [`with_team`], the other workers instead spin on a shared counter for the whole of the
//! work, and [`for_each`] hands out its tasks through that counter: a task costs an atomic
//! increment, a loop's end a wait on another, and no thread sleeps in between.
//!
//! Outside a team, [`for_each`] is rayon's parallel loop, so a kernel is written once either
//! way.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

/// How this thread runs the parallel loops it starts.
#[derive(Clone, Copy)]
enum Mode {
    /// On rayon's pool: outside any team.
    Pool,
    /// On the team this thread leads, inside [`with_team`].
    Lead(*const Team),
    /// In place, one task after another: inside a task of a team's loop, where every other
    /// thread of the team is busy with that loop. Handing the inner loop to rayon instead could
    /// deadlock: a helper waiting for a stolen rayon job may pick up a second helper's job and
    /// spin in it until the leader's work is over, which waits for the first.
    InTask,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Pool) };
}

/// This thread's [`Mode`] for as long as the value lives, then the one before.
struct ModeGuard(Mode);

impl ModeGuard {
    fn set(mode: Mode) -> Self {
        Self(MODE.with(|current| current.replace(mode)))
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        MODE.with(|current| current.set(self.0));
    }
}

/// One parallel loop's task, on its leader's stack while the loop runs.
struct Region<'a> {
    task: &'a (dyn Fn(usize) + Sync),
}

/// Tasks a loop on a team may have: the count shares a word with the loop's generation and
/// its next unclaimed task. A loop of more runs on rayon.
const MAX_TEAM_TASKS: usize = u16::MAX as usize;

/// The `claims` word of a loop: generation, task count, next unclaimed task.
fn claims_word(generation: u64, tasks: usize, next: usize) -> u64 {
    (generation << 32) | ((tasks as u64) << 16) | next as u64
}

/// The state the leader and its helpers share.
struct Team {
    /// The loop now running, as [`claims_word`]: its generation, its task count and its next
    /// unclaimed task. A task is claimed by moving the word from (generation, tasks, i) to
    /// (generation, tasks, i + 1) while i < tasks, so a claim succeeds only while the loop's
    /// leader is still waiting for it, and only for that loop: a helper that read an older or
    /// newer loop's region cannot claim a task it does not hold.
    claims: AtomicU64,
    /// The loop of `claims`' generation; written before that generation is published, and
    /// read through only after a claim of it succeeds.
    region: AtomicPtr<Region<'static>>,
    /// Tasks of the current loop finished (or abandoned by a panic).
    done: AtomicUsize,
    /// A task of the current loop panicked on a helper.
    panicked: AtomicBool,
    /// Set when the leader's work is over: the helpers return to rayon.
    over: AtomicBool,
    /// The leader's rayon index: a helper job that the leader itself picks up (while it waits
    /// inside a nested rayon call) returns at once rather than spinning on its own thread.
    leader: Option<usize>,
}

impl Team {
    /// Claims the next task of generation `generation`, if that loop has one left.
    fn claim(&self, generation: u64) -> Option<usize> {
        let mut current = self.claims.load(Ordering::Acquire);
        loop {
            let (tasks, next) = ((current >> 16) & 0xffff, current & 0xffff);
            if current >> 32 != generation || next >= tasks {
                return None;
            }
            match self
                .claims
                .compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(next as usize),
                Err(now) => current = now,
            }
        }
    }

    /// A helper's life: run the tasks of every loop the leader starts until its work is over.
    fn help(&self) {
        if rayon::current_thread_index() == self.leader {
            return;
        }
        let _in_task = ModeGuard::set(Mode::InTask);
        // Generation 0 is the state before the first loop.
        let mut seen = 0;
        while !self.over.load(Ordering::Acquire) {
            let generation = self.claims.load(Ordering::Acquire) >> 32;
            if generation == seen {
                std::hint::spin_loop();
                continue;
            }
            seen = generation;
            let region = self.region.load(Ordering::Acquire);
            while let Some(index) = self.claim(generation) {
                // SAFETY: the claim succeeded, so the loop of `generation` waits for this task
                // and its region, which `region` is (written before the generation was), lives.
                let task = unsafe { (*region).task };
                if catch_unwind(AssertUnwindSafe(|| task(index))).is_err() {
                    self.panicked.store(true, Ordering::Release);
                }
                self.done.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// The leader's side of a loop: publish it, take tasks alongside the helpers, wait for the
    /// last. A panic in any task is raised here once every task has finished.
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let region = Region { task };
        self.done.store(0, Ordering::Relaxed);
        self.panicked.store(false, Ordering::Relaxed);
        self.region
            .store(std::ptr::from_ref(&region).cast_mut().cast(), Ordering::Release);
        let generation = (self.claims.load(Ordering::Relaxed) >> 32) + 1;
        self.claims
            .store(claims_word(generation, tasks, 0), Ordering::Release);
        let mut failure = None;
        while let Some(index) = self.claim(generation) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(index))) {
                failure = Some(payload);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
        while self.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        if let Some(payload) = failure {
            resume_unwind(payload);
        }
        if self.panicked.load(Ordering::Acquire) {
            panic!("a parallel task panicked on a helper thread");
        }
    }
}

/// Runs `work` with every other rayon worker spinning as its helper, so that the [`for_each`]
/// loops inside it start and end without waking a sleeping thread. Meant for work of a few
/// milliseconds made of many short loops; other rayon parallelism inside `work` runs on the
/// calling thread alone while the helpers are held. Inside a team already, `work` runs on it.
pub fn with_team<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if !matches!(MODE.with(Cell::get), Mode::Pool) {
        return work();
    }
    let team = Team {
        claims: AtomicU64::new(0),
        region: AtomicPtr::new(std::ptr::null_mut()),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        over: AtomicBool::new(false),
        leader: rayon::current_thread_index(),
    };
    let team = &team;
    rayon::in_place_scope(|scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(move |_| team.help());
        }
        let result = {
            let _lead = ModeGuard::set(Mode::Lead(team));
            catch_unwind(AssertUnwindSafe(work))
        };
        team.over.store(true, Ordering::Release);
        result.unwrap_or_else(|payload| resume_unwind(payload))
    })
}

/// `task(i)` for every `i < tasks`, in parallel: on the team of the enclosing [`with_team`]
/// where there is one, on rayon's pool otherwise. A loop of one task runs in place, so the
/// loops inside it still have the team; a loop inside a task of a team's loop of several runs
/// in place on that task's thread ([`Mode::InTask`]). A task must not start rayon work of its
/// own, for the reason [`Mode::InTask`] gives.
pub fn for_each(tasks: usize, task: impl Fn(usize) + Sync + Send) {
    match MODE.with(Cell::get) {
        _ if tasks == 1 => task(0),
        Mode::InTask => (0..tasks).for_each(task),
        Mode::Lead(team) if tasks <= MAX_TEAM_TASKS => {
            let _in_task = ModeGuard::set(Mode::InTask);
            // SAFETY: the mode holds the team only while `with_team` keeps it alive.
            unsafe { &*team }.run(tasks, &task);
        }
        Mode::Pool | Mode::Lead(_) => (0..tasks).into_par_iter().for_each(task),
    }
}

/// `task(item)` for every item of `items`, in parallel, as [`for_each`] runs its tasks: each
/// item goes to one task, so a task may write through it (a row of an output, say).
pub fn for_each_mut<T: Send>(items: &mut [T], task: impl Fn(&mut T) + Sync + Send) {
    match MODE.with(Cell::get) {
        Mode::Pool => items.par_iter_mut().for_each(task),
        Mode::InTask => items.iter_mut().for_each(task),
        Mode::Lead(_) => {
            let items: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
            for_each(items.len(), |i| {
                task(&mut items[i].lock().unwrap_or_else(PoisonError::into_inner));
            });
        }
    }
}

/// `task(index, chunk)` for every `chunk_len` items of `items` in turn (the last chunk may be
/// shorter), in parallel as [`for_each`] runs its tasks: the rows of an output, a few at a time.
pub fn for_each_chunk_mut<T: Send>(
    items: &mut [T],
    chunk_len: usize,
    task: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if items.is_empty() {
        return;
    }
    match MODE.with(Cell::get) {
        Mode::Pool => items
            .par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(index, chunk)| task(index, chunk)),
        Mode::Lead(_) | Mode::InTask => {
            let mut chunks: Vec<(usize, &mut [T])> = items.chunks_mut(chunk_len).enumerate().collect();
            for_each_mut(&mut chunks, |(index, chunk)| task(*index, chunk));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Every task runs exactly once, loop after loop, in a team and outside one.
    #[test]
    fn every_task_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for teamed in [false, true] {
            let counts: Vec<AtomicUsize> = (0..97).map(|_| AtomicUsize::new(0)).collect();
            let loops = || {
                for tasks in [0, 1, 2, 5, 97] {
                    for_each(tasks, |i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
            };
            pool.install(|| if teamed { with_team(loops) } else { loops() });
            let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let want: Vec<usize> = (0..97)
                .map(|i| 1 + usize::from(i < 1) + usize::from(i < 2) + usize::from(i < 5))
                .collect();
            assert_eq!(got, want, "teamed: {teamed}");
        }
    }

    /// Each item, and each chunk of items, is handed to exactly one task, in a team and outside
    /// one.
    #[test]
    fn every_item_is_written_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for teamed in [false, true] {
            let mut rows = vec![[0usize; 3]; 50];
            let mut items: Vec<(usize, &mut [usize; 3])> = rows.iter_mut().enumerate().collect();
            let fill = |items: &mut [(usize, &mut [usize; 3])]| {
                for_each_mut(items, |(i, row)| row.iter_mut().for_each(|v| *v += *i));
            };
            let mut chunked = vec![0usize; 50];
            let fill_chunks = |values: &mut [usize]| {
                for_each_chunk_mut(values, 7, |index, chunk| {
                    chunk.iter_mut().for_each(|v| *v += index)
                });
            };
            pool.install(|| {
                if teamed {
                    with_team(|| {
                        fill(&mut items);
                        fill_chunks(&mut chunked);
                        fill_chunks(&mut []);
                    })
                } else {
                    fill(&mut items);
                    fill_chunks(&mut chunked);
                    fill_chunks(&mut []);
                }
            });
            assert!(
                rows.iter().enumerate().all(|(i, row)| *row == [i; 3]),
                "teamed: {teamed}"
            );
            assert!(
                chunked.iter().enumerate().all(|(i, &v)| v == i / 7),
                "teamed: {teamed}"
            );
        }
    }

    /// A panic in a task reaches the caller of the loop, after the other tasks, and the team
    /// goes on serving later loops.
    #[test]
    fn a_panicking_task_panics_the_loop() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let finished = AtomicUsize::new(0);
        pool.install(|| {
            with_team(|| {
                let failed = catch_unwind(AssertUnwindSafe(|| {
                    for_each(8, |i| {
                        assert!(i != 3, "task 3");
                        finished.fetch_add(1, Ordering::Relaxed);
                    })
                }));
                assert!(failed.is_err());
                assert_eq!(finished.load(Ordering::Relaxed), 7);
                for_each(8, |_| {
                    finished.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(finished.load(Ordering::Relaxed), 15);
            })
        });
    }

    /// Loops inside the tasks of a loop, and teams inside a team, run every task once.
    #[test]
    fn nested_loops_run_every_task_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let counts: Vec<AtomicUsize> = (0..6 * 7).map(|_| AtomicUsize::new(0)).collect();
        pool.install(|| {
            with_team(|| {
                for_each(1, |_| {
                    for_each(6, |outer| {
                        with_team(|| {
                            for_each(7, |inner| {
                                counts[outer * 7 + inner].fetch_add(1, Ordering::Relaxed);
                            })
                        })
                    })
                })
            })
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    /// Nested rayon work inside a team finishes (on the leader) rather than deadlocking.
    #[test]
    fn rayon_inside_a_team_finishes() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let total: usize = pool.install(|| {
            with_team(|| {
                let inner: usize = (0..1000usize).into_par_iter().sum();
                let outer = AtomicUsize::new(0);
                for_each(4, |i| {
                    outer.fetch_add(i, Ordering::Relaxed);
                });
                inner + outer.load(Ordering::Relaxed)
            })
        });
        assert_eq!(total, 499_500 + 6);
    }
}
