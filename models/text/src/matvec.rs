//! Matrix products for a few rows (decode steps, short prompts, batched decoding), with f32 or
//! bf16 weights. With one row such a product is bound by memory: every weight is read once per
//! call and used once, so the kernel is built around reading the weights at full bandwidth.
//! With several rows the arithmetic costs as much, and the rows run as register tiles.
//!
//! A general GEMM packs the whole weight matrix for each call, which for one row costs more than
//! the product itself. Splitting the work by output column is no better: each thread then reads
//! a short piece of every weight row and the hardware prefetchers lose the stream (about half
//! the machine's read bandwidth, docs/performance.md). So [`rows_times_matrix`] splits the
//! *inputs* between threads: each reads its own block of the matrix (for one row, four
//! far-apart streams of it) into its own partial sums, added at the end. Products of many rows
//! go through [`simd::gemm`].

use std::ops::Range;

use simd::dot::dots;
use simd::gemm::Weight;
use simd::{dispatch, team, F32x, Kernel, Level};

/// Weight rows per chunk of the several-row product: a thread's sums for a tile of columns
/// stay in registers across the chunk, and its prefetches run one chunk ahead (longer and
/// shorter chunks measured slower: docs/performance.md, tuning notes).
const INPUT_CHUNK: usize = 8;

/// Weight rows a thread reads at once in a one-row product, each from its own quarter of the
/// thread's block: the weights then arrive as four streams far apart, which the prefetchers
/// serve faster than one (four adjacent rows, one row at a time and eight streams all measured
/// slower: docs/performance.md, tuning notes).
const STREAMS: usize = 4;

/// Parallel tasks per thread of [`rows_times_transposed`]: equal blocks of rows, a few per thread
/// so that a thread slowed by the machine can hand some on. Fixed blocks of 512 rows would
/// split a 768-row matrix 512:256 between two threads, one doing twice the other's work.
const TASKS_PER_THREAD: usize = 4;

/// The inner loops, written once for every level of vector instructions: the compiler's own
/// vectorisation of them kept mul and add apart and reloaded each weight for every activation
/// row.
mod kernels {
    use std::ops::Range;

    use simd::gemm::Weight;
    use simd::F32x;

    use super::INPUT_CHUNK;

    /// `sum[j] += x[0] * w[0][j] + ... + x[3] * w[3][j]`: one activation row, the decode step
    /// of a lone generation, which is bound by the weight stream. The activations are
    /// broadcast once per call and held in registers, so each weight vector costs a load, four
    /// multiply-adds and the load and store of its sum (a version shared with several rows
    /// spent twice the instructions per weight, and decoding was slower for it).
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions.
    #[inline(always)]
    pub unsafe fn accumulate4<V: F32x, W: Weight>(x: [f32; 4], w: [&[W]; 4], sum: &mut [f32]) {
        let len = sum.len();
        assert!(w.iter().all(|row| row.len() >= len));
        let vectors = len / V::LANES * V::LANES;
        // SAFETY: the caller's level; every access is one vector at `j < vectors <= len`,
        // within each weight row and the sum row.
        unsafe {
            let mut xs = [V::zero(); 4];
            for (xv, &v) in xs.iter_mut().zip(&x) {
                *xv = V::splat(v);
            }
            let out = sum.as_mut_ptr();
            for j in (0..vectors).step_by(V::LANES) {
                let mut acc = V::load(out.add(j));
                for (row, &xv) in w.iter().zip(&xs) {
                    acc = xv.mul_add(W::load::<V>(row.as_ptr().add(j)), acc);
                }
                acc.store(out.add(j));
            }
        }
        for (j, y) in sum.iter_mut().enumerate().skip(vectors) {
            *y += x[0] * w[0][j].to_f32()
                + x[1] * w[1][j].to_f32()
                + x[2] * w[2][j].to_f32()
                + x[3] * w[3][j].to_f32();
        }
    }

    /// `sums[r][j] += Σ x[r][k] * w[k][j]` over the weight rows `k` in `inputs`, for several
    /// activation rows: `x` is (rows, x.len() / rows), `w` (x.len() / rows, outputs), `sums`
    /// (rows, outputs). Here the arithmetic costs as much as the weight stream, so the work
    /// runs as a small matrix product: chunks of [`INPUT_CHUNK`] weight rows, each cut in tiles
    /// of two vectors of columns whose sums for four activation rows stay in registers across
    /// the chunk; the first row group of a tile prefetches the same columns of the next chunk,
    /// so the weight stream runs on while the tile computes, which measured faster than summing
    /// four weight rows at a time into every sum row.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions.
    #[inline(always)]
    pub unsafe fn accumulate_rows<V: F32x, W: Weight>(
        x: &[f32],
        w: &[W],
        outputs: usize,
        inputs: Range<usize>,
        sums: &mut [f32],
    ) {
        let rows = sums.len().checked_div(outputs).unwrap_or(0);
        let width = x.len().checked_div(rows).unwrap_or(0);
        assert!(
            rows * outputs == sums.len()
                && rows * width == x.len()
                && width * outputs == w.len()
                && inputs.start <= inputs.end
                && inputs.end <= width
        );
        let tile = 2 * V::LANES;
        let tiles = outputs / tile * tile;
        let vectors = outputs / V::LANES * V::LANES;
        let (x, w, sums) = (x.as_ptr(), w.as_ptr(), sums.as_mut_ptr());
        for first in inputs.clone().step_by(INPUT_CHUNK) {
            let count = INPUT_CHUNK.min(inputs.end - first);
            for j in (0..tiles).step_by(tile) {
                // SAFETY: the caller's level; the tile reads weight rows `first..first + count
                // <= width` at columns `j..j + tile <= outputs`, and activation and sum rows
                // below `rows` (asserted above).
                unsafe { row_groups::<V, W, 2>(x, width, w, outputs, first, count, j, sums, rows) };
            }
            if vectors > tiles {
                // SAFETY: as above, columns `tiles..tiles + LANES <= outputs`.
                unsafe { row_groups::<V, W, 1>(x, width, w, outputs, first, count, tiles, sums, rows) };
            }
            for j in vectors..outputs {
                for r in 0..rows {
                    // SAFETY: `r < rows`, `j < outputs`, `k < first + count <= width`.
                    unsafe {
                        let mut total = *sums.add(r * outputs + j);
                        for k in first..first + count {
                            total += *x.add(r * width + k) * (*w.add(k * outputs + j)).to_f32();
                        }
                        *sums.add(r * outputs + j) = total;
                    }
                }
            }
        }
    }

    /// One tile's columns `j..j + NV` vectors for every activation row, four rows at a time.
    ///
    /// # Safety
    /// As [`tile`], for each group of rows.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn row_groups<V: F32x, W: Weight, const NV: usize>(
        x: *const f32,
        width: usize,
        w: *const W,
        outputs: usize,
        first: usize,
        count: usize,
        j: usize,
        sums: *mut f32,
        rows: usize,
    ) {
        let mut row = 0;
        while row < rows {
            let group = (rows - row).min(4);
            // SAFETY: forwarded from the caller.
            unsafe {
                let x = x.add(row * width + first);
                let w = w.add(first * outputs + j);
                let s = sums.add(row * outputs + j);
                let prefetch = row == 0;
                match group {
                    4 => tile::<V, W, 4, NV>(x, width, w, outputs, count, s, prefetch),
                    3 => tile::<V, W, 3, NV>(x, width, w, outputs, count, s, prefetch),
                    2 => tile::<V, W, 2, NV>(x, width, w, outputs, count, s, prefetch),
                    _ => tile::<V, W, 1, NV>(x, width, w, outputs, count, s, prefetch),
                }
            }
            row += group;
        }
    }

    /// `s[r][..NV vectors] += Σ_k x[r][k] * w[k][..NV vectors]` for `k < count`, rows `r < R`
    /// `stride` apart in `x` and `outputs` apart in `w` and `s`, the sums held in registers
    /// throughout. With `prefetch`, asks for the same columns [`INPUT_CHUNK`] weight rows on.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions; `x` must hold `R` rows of `count` readable values,
    /// `w` `count` rows of `NV` readable vectors, and `s` `R` rows of `NV` writable vectors.
    #[inline(always)]
    unsafe fn tile<V: F32x, W: Weight, const R: usize, const NV: usize>(
        x: *const f32,
        stride: usize,
        w: *const W,
        outputs: usize,
        count: usize,
        s: *mut f32,
        prefetch: bool,
    ) {
        // SAFETY: every access is within the rows and columns the caller vouches for; a
        // prefetch may name any address.
        unsafe {
            let mut acc = [[V::zero(); NV]; R];
            for (r, sums) in acc.iter_mut().enumerate() {
                for (v, sum) in sums.iter_mut().enumerate() {
                    *sum = V::load(s.add(r * outputs + v * V::LANES));
                }
            }
            for k in 0..count {
                let weights = w.add(k * outputs);
                if prefetch {
                    let ahead = weights.wrapping_add(INPUT_CHUNK * outputs);
                    simd::prefetch(ahead);
                    simd::prefetch(ahead.wrapping_add(NV * V::LANES - 1));
                }
                let mut ws = [V::zero(); NV];
                for (v, wv) in ws.iter_mut().enumerate() {
                    *wv = W::load::<V>(weights.add(v * V::LANES));
                }
                for (r, sums) in acc.iter_mut().enumerate() {
                    let xv = V::splat(*x.add(r * stride + k));
                    for (sum, &wv) in sums.iter_mut().zip(&ws) {
                        *sum = xv.mul_add(wv, *sum);
                    }
                }
            }
            for (r, sums) in acc.iter().enumerate() {
                for (v, &sum) in sums.iter().enumerate() {
                    sum.store(s.add(r * outputs + v * V::LANES));
                }
            }
        }
    }
}

/// `x` (rows, inputs) @ `w` (inputs, outputs) + `bias`, `w` row-major f32 or bf16: each
/// thread sums its own block of input rows, the bias added where the partial sums are (which
/// saves a pass and an allocation per layer).
pub(crate) fn rows_times_matrix<W: Weight>(
    level: Level,
    x: &[f32],
    w: &[W],
    bias: &[f32],
    rows: usize,
    inputs: usize,
) -> Vec<f32> {
    let outputs = bias.len();
    let per_thread = inputs
        .div_ceil(rayon::current_num_threads().max(1))
        .next_multiple_of(INPUT_CHUNK);
    if rows * outputs == 0 {
        return Vec::new();
    }
    let mut partials = vec![0f32; inputs.div_ceil(per_thread) * rows * outputs];
    team::for_each_chunk_mut(&mut partials, rows * outputs, |part, sums| {
        let start = part * per_thread;
        let end = (start + per_thread).min(inputs);
        dispatch(
            level,
            InputBlock {
                x,
                w,
                outputs,
                inputs: start..end,
                sums,
            },
        );
    });
    let mut y = bias.repeat(rows);
    for partial in partials.chunks_exact(rows * outputs) {
        y.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
    }
    y
}

/// One thread's share of [`rows_times_matrix`]: the partial sums over a block of input rows.
struct InputBlock<'a, W> {
    x: &'a [f32],
    w: &'a [W],
    outputs: usize,
    inputs: Range<usize>,
    sums: &'a mut [f32],
}

impl<W: Weight> Kernel for InputBlock<'_, W> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let InputBlock {
            x,
            w,
            outputs,
            inputs,
            sums,
        } = self;
        // SAFETY: the level's instructions (the trait's contract).
        unsafe {
            if sums.len() == outputs {
                one_row::<V, W>(
                    &x[inputs.clone()],
                    &w[inputs.start * outputs..inputs.end * outputs],
                    sums,
                );
            } else {
                kernels::accumulate_rows::<V, W>(x, w, outputs, inputs, sums);
            }
        }
    }
}

/// `sum += x @ w` for one activation row `x` and the matching block of weight rows `w`. Each
/// pass over the sums takes one weight row from each quarter of the block.
///
/// # Safety
/// The CPU must have `V`'s instructions.
#[inline(always)]
unsafe fn one_row<V: F32x, W: Weight>(x: &[f32], w: &[W], sum: &mut [f32]) {
    let outputs = sum.len();
    let quarter = x.len() / STREAMS;
    let row = |k: usize| &w[k * outputs..(k + 1) * outputs];
    for g in 0..quarter {
        let rows: [usize; STREAMS] = [0, 1, 2, 3].map(|s| s * quarter + g);
        // SAFETY: the caller's level.
        unsafe { kernels::accumulate4::<V, W>(rows.map(|k| x[k]), rows.map(row), sum) };
    }
    // The last inputs of a width that is not a multiple of four.
    for (k, &xv) in x.iter().enumerate().skip(STREAMS * quarter) {
        sum.iter_mut()
            .zip(row(k))
            .for_each(|(y, wv)| *y += xv * wv.to_f32());
    }
}

/// `x` (rows, d) @ `e`^T for `e` (vocab, d) row-major f32 or bf16: one dot product per
/// vocabulary row, blocks of rows in parallel.
pub(crate) fn rows_times_transposed<W: Weight>(
    level: Level,
    x: &[f32],
    e: &[W],
    rows: usize,
    d: usize,
    vocab: usize,
) -> Vec<f32> {
    let block_rows = vocab
        .div_ceil(TASKS_PER_THREAD * rayon::current_num_threads())
        .max(1);
    let mut by_token = vec![0f32; vocab * rows];
    team::for_each_chunk_mut(&mut by_token, rows * block_rows, |block, out| {
        let first = block * block_rows;
        let count = out.len() / rows;
        let e = &e[first * d..(first + count) * d];
        dispatch(level, TransposedBlock { x, e, d, out });
    });
    if rows == 1 {
        return by_token;
    }
    let mut y = vec![0f32; rows * vocab];
    for (v, slot) in by_token.chunks_exact(rows).enumerate() {
        for (r, &value) in slot.iter().enumerate() {
            y[r * vocab + v] = value;
        }
    }
    y
}

/// A block of weight rows of [`rows_times_transposed`] against every activation row, into
/// `out` (weight row after weight row, each with a value per activation row).
struct TransposedBlock<'a, W> {
    x: &'a [f32],
    e: &'a [W],
    d: usize,
    out: &'a mut [f32],
}

impl<W: Weight> Kernel for TransposedBlock<'_, W> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let TransposedBlock { x, e, d, out } = self;
        let rows = x.len() / d;
        let count = e.len() / d;
        let e_row = |v: usize| &e[v * d..(v + 1) * d];
        let x_row = |r: usize| &x[r * d..(r + 1) * d];
        // One weight row from each quarter of the block at a time, against the activation
        // rows two at a time (then one, for an odd count).
        let quarter = count / STREAMS;
        // SAFETY: the level's instructions (the trait's contract).
        unsafe {
            for i in 0..quarter {
                let weights: [&[W]; STREAMS] = [0, 1, 2, 3].map(|s| e_row(s * quarter + i));
                let slot = |s: usize, r: usize| (s * quarter + i) * rows + r;
                for r in (0..rows / 2 * 2).step_by(2) {
                    let totals = dots::<V, W, STREAMS, 2>(weights, [x_row(r), x_row(r + 1)]);
                    for (s, [a, b]) in totals.into_iter().enumerate() {
                        out[slot(s, r)] = a;
                        out[slot(s, r + 1)] = b;
                    }
                }
                if rows % 2 == 1 {
                    let totals = dots::<V, W, STREAMS, 1>(weights, [x_row(rows - 1)]);
                    for (s, [value]) in totals.into_iter().enumerate() {
                        out[slot(s, rows - 1)] = value;
                    }
                }
            }
            for k in STREAMS * quarter..count {
                for r in 0..rows {
                    let [[value]] = dots::<V, W, 1, 1>([e_row(k)], [x_row(r)]);
                    out[k * rows + r] = value;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{what}: {diff}");
    }

    /// Row counts from one to many, input widths that are and are not a multiple of the row
    /// group, f32 and bf16 weights, every level this CPU has: the plain sums of the same
    /// (widened) weights.
    #[test]
    fn products_match_plain_sums() {
        let outputs = 1001;
        for level in Level::supported() {
            for inputs in [37, 64] {
                for rows in [1, 2, 3, 4, 5, 8, 17, 64, 65] {
                    let x = values(rows * inputs, 1);
                    let w = values(inputs * outputs, 2);
                    let narrow: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                    let bias = values(outputs, 4);
                    let want = |w: &dyn Fn(usize) -> f32| -> Vec<f32> {
                        (0..rows * outputs)
                            .map(|i| {
                                let (r, c) = (i / outputs, i % outputs);
                                bias[c]
                                    + (0..inputs)
                                        .map(|k| x[r * inputs + k] * w(k * outputs + c))
                                        .sum::<f32>()
                            })
                            .collect()
                    };
                    let what = format!("{level} {inputs} inputs, rows {rows}");
                    let got = rows_times_matrix(level, &x, &w, &bias, rows, inputs);
                    assert_close(&got, &want(&|i| w[i]), &what);
                    let got = rows_times_matrix(level, &x, &narrow, &bias, rows, inputs);
                    assert_close(&got, &want(&|i| narrow[i].to_f32()), &what);

                    // The same weights as (outputs, inputs) rows, against each activation row.
                    let e: Vec<f32> = (0..outputs * inputs)
                        .map(|i| w[(i % inputs) * outputs + i / inputs])
                        .collect();
                    let got = rows_times_transposed(level, &x, &e, rows, inputs, outputs);
                    let no_bias: Vec<f32> = want(&|i| w[i])
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v - bias[i % outputs])
                        .collect();
                    assert_close(&got, &no_bias, &what);
                }
            }
        }
    }
}
