//! What this machine can do at most: multiply-adds per second and memory read bandwidth, on one
//! thread and on all of them. These are the ceilings the model figures are read against: a
//! decode step cannot beat the read bandwidth, and concurrency cannot multiply throughput by
//! more than the second core adds.

use std::time::Instant;

use rayon::prelude::*;

/// f32 multiply-adds per second (in billions) that `threads` OS threads reach together at the
/// kernels' level of vector instructions ([`simd::level`]), each thread on its own independent
/// chains of vectors in registers (no memory traffic).
pub fn multiply_add_rate(threads: usize) -> f64 {
    const ROUNDS: usize = 20_000_000;
    let level = simd::level();
    let best = (0..3)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| scope.spawn(move || simd::dispatch(level, Chains { rounds: ROUNDS })))
                    .collect();
                for handle in handles {
                    std::hint::black_box(handle.join().unwrap_or_default());
                }
            });
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    (threads * ROUNDS * CHAINS * level.lanes()) as f64 / best / 1e9
}

/// Independent accumulators per thread: enough to cover the multiply-add latency.
const CHAINS: usize = 12;

/// `rounds` multiply-adds on each of [`CHAINS`] vectors, written as a [`simd::Kernel`] so that
/// they compile to the level's instructions (outside one, `f32::mul_add` is a call to libm).
struct Chains {
    rounds: usize,
}

impl simd::Kernel for Chains {
    type Output = f32;

    #[inline(always)]
    unsafe fn run<V: simd::F32x>(self) -> f32 {
        // SAFETY: the level's instructions (the trait's contract); no memory is touched.
        unsafe {
            let (scale, step) = (V::splat(0.999_999), V::splat(1e-7));
            let mut acc = [V::splat(1.0); CHAINS];
            for _ in 0..self.rounds {
                for lanes in acc.iter_mut() {
                    *lanes = lanes.mul_add(scale, step);
                }
            }
            acc.iter().map(|v| v.sum()).sum()
        }
    }
}

/// Bytes per second that the current rayon pool reads from a 1 GiB buffer, best of five sums,
/// each task reading `streams` (1 or more) far-apart parts of its chunk at once.
pub fn read_rate(streams: usize) -> f64 {
    let buffer = vec![1f32; 1 << 28];
    let streams = streams.max(1);
    let sum_chunk = |chunk: &[f32]| {
        // 32 lanes per stream: four vectors of independent additions.
        let mut parts: Vec<_> = chunk
            .chunks_exact(chunk.len() / streams)
            .map(|p| p.chunks_exact(32))
            .collect();
        let mut lanes = vec![[0f32; 32]; streams];
        'blocks: loop {
            for (part, lanes) in parts.iter_mut().zip(lanes.iter_mut()) {
                let Some(block) = part.next() else { break 'blocks };
                lanes.iter_mut().zip(block).for_each(|(l, x)| *l += x);
            }
        }
        lanes.iter().flatten().sum::<f32>()
    };
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let sum: f32 = buffer.par_chunks(1 << 18).map(sum_chunk).sum();
            std::hint::black_box(sum);
            (buffer.len() * 4) as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// The rate at which all cores together read memory: the better of one and four streams per
/// task. The decode products read four far-apart streams, but which of the two patterns
/// this probe reads faster differs between CPUs (docs/performance.md), so the better of the
/// two keeps a floor computed from this from being understated.
pub fn read_bandwidth() -> f64 {
    read_rate(1).max(read_rate(4))
}
