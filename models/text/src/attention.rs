//! Causal self-attention, and the KV cache it reads.
//!
//! A decode step attends one new row per sequence. Through candle that was a dozen small tensor
//! operations per layer and sequence (splitting heads, writing the cache, two matrix products,
//! softmax), each with its own allocation: a millisecond of a lone decode step and a tenth of
//! a step of 16 sequences. Here every sequence's new row writes its keys and values straight
//! into its cache and attends in one pass per head, all heads of all sequences in one parallel
//! loop; so do the rows of a prompt, each over the cache up to its own position. Rows without
//! a cache (a passage read whole) attend through candle's matrix products, with the scale, the
//! causal mask and the softmax between them in one vectorised pass over the scores
//! ([`CausalSoftmax`]).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor};
use simd::dot::dots;
use simd::{dispatch, team, F32x, Kernel, Level};

/// Keys and values of every layer for the tokens seen so far; one per generation.
#[derive(Debug, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) len: usize,
    /// Positions to allocate at once, when known.
    pub(crate) reserved: usize,
}

impl KvCache {
    /// Makes the first allocation hold `positions` positions: a sequence whose length is known
    /// (a search candidate, an input to embed) then takes exactly its room, where growing by
    /// doubling from a minimum would take up to twice as much.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = positions;
    }

    /// Gives the cache its `count` layers, if it has none yet.
    pub(crate) fn ensure_layers(&mut self, count: usize) {
        let reserved = self.reserved;
        self.layers.resize_with(count, || LayerCache {
            reserved,
            ..Default::default()
        });
    }

    /// Tokens already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One layer's keys and values, each (heads, capacity, head_dim), of which the first positions
/// are filled. New positions are written in place and the buffers grow by doubling: appending
/// by concatenation copied the whole cache at every decode step.
#[derive(Debug, Default)]
pub(crate) struct LayerCache {
    keys: Vec<f32>,
    values: Vec<f32>,
    capacity: usize,
    /// Positions of the first allocation, when it is enough ([`KvCache::reserve`]).
    reserved: usize,
}

/// Positions a layer cache starts with.
const MIN_CACHE_CAPACITY: usize = 64;

/// How a row of `n_embd` values splits into heads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub count: usize,
    pub dim: usize,
}

impl Heads {
    fn width(self) -> usize {
        self.count * self.dim
    }
}

impl LayerCache {
    /// Writes the keys and values of `new` rows of `qkv` (each `q | k | v`, n_embd values
    /// apiece) at the positions after `past`, growing the buffers as needed.
    fn write(&mut self, past: usize, qkv: &[f32], heads: Heads) {
        let d = heads.width();
        let new = qkv.len() / (3 * d);
        let total = past + new;
        if total > self.capacity {
            let capacity = match self.capacity == 0 && total <= self.reserved {
                true => self.reserved,
                false => total.next_power_of_two().max(MIN_CACHE_CAPACITY),
            };
            for buffer in [&mut self.keys, &mut self.values] {
                let mut grown = vec![0f32; heads.count * capacity * heads.dim];
                for h in 0..heads.count {
                    let kept = past * heads.dim;
                    grown[h * capacity * heads.dim..][..kept]
                        .copy_from_slice(&buffer[h * self.capacity * heads.dim..][..kept]);
                }
                *buffer = grown;
            }
            self.capacity = capacity;
        }
        for (i, row) in qkv.chunks_exact(3 * d).enumerate() {
            for h in 0..heads.count {
                let at = (h * self.capacity + past + i) * heads.dim;
                self.keys[at..at + heads.dim].copy_from_slice(&row[d + h * heads.dim..][..heads.dim]);
                self.values[at..at + heads.dim].copy_from_slice(&row[2 * d + h * heads.dim..][..heads.dim]);
            }
        }
    }

    /// The keys and values of head `h` for the first `total` positions, (total, head_dim) each.
    fn head(&self, h: usize, total: usize, heads: Heads) -> (&[f32], &[f32]) {
        let start = h * self.capacity * heads.dim;
        let len = total * heads.dim;
        (&self.keys[start..start + len], &self.values[start..start + len])
    }
}

/// One sequence's rows in a batch: from row `offset`, `len` of them, after the `past`
/// positions its cache holds (none without a cache).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SequenceRows {
    pub offset: usize,
    pub len: usize,
    pub past: usize,
}

/// The attended rows (rows, n_embd) of a step's `qkv` (rows, 3 x n_embd): each sequence's new
/// rows over its `layers` cache, which takes their keys and values first; a sequence without
/// one (read whole in this step, nothing to keep) attends within its own rows.
pub(crate) fn attend_cached(
    level: Level,
    qkv: &Tensor,
    sequences: &[SequenceRows],
    layers: &mut [Option<&mut LayerCache>],
    heads: Heads,
) -> candle_core::Result<Tensor> {
    let d = heads.width();
    let rows = qkv.dim(0)?;
    let mut out = vec![0f32; rows * d];
    {
        let (storage, layout) = qkv.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!(
                "attention: qkv must be contiguous f32 on the CPU, got {:?}",
                storage.dtype()
            )
        };
        let qkv_rows = &data[start..end];
        for (sequence, layer) in sequences.iter().zip(layers.iter_mut()) {
            if let Some(layer) = layer {
                layer.write(
                    sequence.past,
                    &qkv_rows[sequence.offset * 3 * d..][..sequence.len * 3 * d],
                    heads,
                );
            }
        }
        let mut out_rows: Vec<&mut [f32]> = out.chunks_mut(d).collect();
        // Every head of every new row of a sequence with a cache, each a task: the row attends
        // over the cache up to its own position, the causal mask by construction.
        let mut tasks = Vec::new();
        for (sequence, layer) in sequences.iter().zip(layers.iter()) {
            let Some(layer) = layer else { continue };
            for i in 0..sequence.len {
                let row = sequence.offset + i;
                let query = &qkv_rows[row * 3 * d..][..d];
                let seen = sequence.past + i + 1;
                let out = std::mem::take(&mut out_rows[row]);
                tasks.extend(out.chunks_mut(heads.dim).enumerate().map(|(h, out)| {
                    (
                        out,
                        &query[h * heads.dim..][..heads.dim],
                        layer.head(h, seen, heads),
                    )
                }));
            }
        }
        team::for_each_mut(&mut tasks, |(out, query, (keys, values))| {
            attend_one(level, query, keys, values, out);
        });
    }
    for (sequence, layer) in sequences.iter().zip(layers.iter()) {
        if layer.is_some() {
            continue;
        }
        let attended = attend_alone(level, &qkv.narrow(0, sequence.offset, sequence.len)?, heads)?;
        let attended = attended.flatten_all()?.to_vec1::<f32>()?;
        out[sequence.offset * d..][..attended.len()].copy_from_slice(&attended);
    }
    Tensor::from_vec(out, (rows, d), &Device::Cpu)
}

/// The attended rows (len, n_embd) of one sequence's `qkv` (len, 3 x n_embd), with no cache.
pub(crate) fn attend_alone(level: Level, qkv: &Tensor, heads: Heads) -> candle_core::Result<Tensor> {
    let [q, k, v] = [0, 1, 2].map(|part| split_heads(qkv, part, heads));
    causal(level, &q?, &k?, &v?, heads)
}

/// Part `part` (0: queries, 1: keys, 2: values) of `qkv` rows as (heads, rows, head_dim).
fn split_heads(qkv: &Tensor, part: usize, heads: Heads) -> candle_core::Result<Tensor> {
    let d = heads.width();
    qkv.narrow(1, part * d, d)?
        .reshape((qkv.dim(0)?, heads.count, heads.dim))?
        .transpose(0, 1)?
        .contiguous()
}

/// `softmax(q k^T / sqrt(head_dim) + causal mask) v` for the queries of the last `new`
/// positions `q` (heads, new, head_dim) over `keys` and `values` (heads, total, head_dim);
/// answers (new, n_embd).
fn causal(
    level: Level,
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    heads: Heads,
) -> candle_core::Result<Tensor> {
    let new = q.dim(1)?;
    let softmax = CausalSoftmax {
        level,
        past: keys.dim(1)? - new,
        scale: 1.0 / (heads.dim as f32).sqrt(),
    };
    q.matmul(&keys.t()?)?
        .apply_op1_no_bwd(&softmax)?
        .matmul(values)?
        .transpose(0, 1)?
        .reshape((new, heads.width()))
}

/// Vectors of a value row that [`attend_one`] sums at once: a whole head of 64 at AVX-512,
/// eight sums with the even and odd positions', which leaves registers for the loads at AVX2.
const VALUE_VECTORS: usize = 4;

/// Score rows per parallel task of [`CausalSoftmax`].
const SOFTMAX_ROWS_PER_TASK: usize = 32;

/// `softmax(scores * scale + causal mask)` over each row of `scores` (heads, new, past + new):
/// new row i of each head over its first `past + i + 1` positions, zero after them. One pass
/// per row, where scaling, adding a mask tensor and candle's softmax (scalar code in a
/// baseline x86-64 build) took five, and the masked half of the exponentials is not taken.
struct CausalSoftmax {
    level: Level,
    past: usize,
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (heads, new, total) = layout.shape().dims3()?;
        if total != self.past + new {
            candle_core::bail!(
                "causal softmax: {total} positions for {new} new after {}",
                self.past
            )
        }
        let scores = crate::dense::f32_rows(storage, layout)?;
        let mut out = vec![0f32; heads * new * total];
        if total > 0 {
            let task_len = SOFTMAX_ROWS_PER_TASK * total;
            team::for_each_chunk_mut(&mut out, task_len, |task, chunk| {
                let first = task * SOFTMAX_ROWS_PER_TASK;
                for (row, out) in (first..).zip(chunk.chunks_exact_mut(total)) {
                    let seen = self.past + row % new + 1;
                    let out = &mut out[..seen];
                    out.copy_from_slice(&scores[row * total..][..seen]);
                    let total = dispatch(
                        self.level,
                        Exponentials {
                            values: out,
                            scale: self.scale,
                        },
                    );
                    let inverse = 1.0 / total;
                    out.iter_mut().for_each(|w| *w *= inverse);
                }
            });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `exp(scale * (v - max))` of every value in place, `max` the values' largest; answers their
/// sum (a softmax's denominator: the caller divides, or folds the division into later work).
struct Exponentials<'a> {
    values: &'a mut [f32],
    scale: f32,
}

impl Kernel for Exponentials<'_> {
    type Output = f32;

    #[inline(always)]
    unsafe fn run<V: F32x>(self) -> f32 {
        let Exponentials { values, scale } = self;
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (max, scale) = (V::splat(max), V::splat(scale));
        let mut total = 0f32;
        for chunk in values.chunks_mut(V::LANES) {
            // SAFETY: the level's instructions (the trait's contract); `load_part` and
            // `store_part` touch the chunk's values only.
            unsafe {
                let e = V::load_part(chunk.as_ptr(), chunk.len())
                    .sub(max)
                    .mul(scale)
                    .exp();
                e.store_part(chunk.as_mut_ptr(), chunk.len());
            }
            total += chunk.iter().sum::<f32>();
        }
        total
    }
}

/// `softmax(q . k / sqrt(head_dim)) v` of one head's query over its `keys` and `values`
/// (positions, head_dim), into `out` (head_dim).
fn attend_one(level: Level, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32]) {
    dispatch(level, AttendOne { q, keys, values, out });
}

/// [`attend_one`] as one kernel: the scores four keys at a time, their exponentials in
/// vectors, and the weighted sum of the values a vector of dimensions at a time.
struct AttendOne<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    out: &'a mut [f32],
}

impl Kernel for AttendOne<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let AttendOne { q, keys, values, out } = self;
        let d = q.len();
        let positions = keys.len() / d;
        let scale = 1.0 / (d as f32).sqrt();
        let key = |p: usize| &keys[p * d..(p + 1) * d];
        let mut scores = vec![0f32; positions];
        // SAFETY: the level's instructions (the trait's contract) for all below; every
        // vector access lies within `scores`, a value row or `out` (`load_part` and
        // `store_part` take the partial ends; a vector of no lanes past a row's end, whose
        // address is only computed, reads and writes nothing).
        unsafe {
            let mut p = 0;
            while p + 4 <= positions {
                let totals = dots::<V, f32, 4, 1>([key(p), key(p + 1), key(p + 2), key(p + 3)], [q]);
                for (i, [total]) in totals.into_iter().enumerate() {
                    scores[p + i] = total * scale;
                }
                p += 4;
            }
            for (p, score) in scores.iter_mut().enumerate().skip(p) {
                let [[total]] = dots::<V, f32, 1, 1>([key(p)], [q]);
                *score = total * scale;
            }
            let inverse = 1.0
                / Exponentials {
                    values: &mut scores,
                    scale: 1.0,
                }
                .run::<V>();
            // The weighted sum of the value rows, [`VALUE_VECTORS`] vectors of dimensions at a
            // time (a head of 64 at AVX-512: the whole row), so that each row is read whole
            // and in order: a vector at a time over every position read one cache line of
            // each row per pass, rows a head apart, and waited on memory. Two sums per vector,
            // even and odd positions, so that consecutive multiply-adds do not wait for each
            // other.
            for c in (0..d).step_by(VALUE_VECTORS * V::LANES) {
                // Lanes of each vector of the group: a head narrower than the group leaves
                // vectors of none, which read and write nothing.
                let lanes: [usize; VALUE_VECTORS] =
                    std::array::from_fn(|v| V::LANES.min((d - c).saturating_sub(v * V::LANES)));
                let at = |p: usize, v: usize| p * d + c + v * V::LANES;
                let mut even = [V::zero(); VALUE_VECTORS];
                let mut odd = [V::zero(); VALUE_VECTORS];
                let mut p = 0;
                while p + 2 <= positions {
                    let (a, b) = (V::splat(scores[p]), V::splat(scores[p + 1]));
                    for v in 0..VALUE_VECTORS {
                        let (x, y) = (
                            values.as_ptr().wrapping_add(at(p, v)),
                            values.as_ptr().wrapping_add(at(p + 1, v)),
                        );
                        even[v] = a.mul_add(V::load_part(x, lanes[v]), even[v]);
                        odd[v] = b.mul_add(V::load_part(y, lanes[v]), odd[v]);
                    }
                    p += 2;
                }
                if p < positions {
                    let a = V::splat(scores[p]);
                    for v in 0..VALUE_VECTORS {
                        let x = values.as_ptr().wrapping_add(at(p, v));
                        even[v] = a.mul_add(V::load_part(x, lanes[v]), even[v]);
                    }
                }
                for v in 0..VALUE_VECTORS {
                    even[v]
                        .add(odd[v])
                        .mul(V::splat(inverse))
                        .store_part(out.as_mut_ptr().wrapping_add(c + v * V::LANES), lanes[v]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One query over 1 to 70 positions, head widths that are and are not whole vectors (one
    /// wider than a group of value vectors), at every level this CPU has: the softmax-weighted
    /// values of the plain formula.
    #[test]
    fn one_query_attends_as_the_formula_says() {
        let value = |i: usize| ((i * 2654435761) % 1000) as f32 / 250.0 - 2.0;
        for level in Level::supported() {
            for d in [64, 40, 136] {
                for positions in [1, 2, 3, 5, 17, 70] {
                    let q: Vec<f32> = (0..d).map(value).collect();
                    let keys: Vec<f32> = (0..positions * d).map(|i| value(i + 7)).collect();
                    let values: Vec<f32> = (0..positions * d).map(|i| value(i + 13)).collect();
                    let scores: Vec<f64> = keys
                        .chunks(d)
                        .map(|k| {
                            k.iter().zip(&q).map(|(a, b)| f64::from(a * b)).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    let mut got = vec![0f32; d];
                    attend_one(level, &q, &keys, &values, &mut got);
                    for (c, &got) in got.iter().enumerate() {
                        let want: f64 = weights
                            .iter()
                            .enumerate()
                            .map(|(p, w)| w * f64::from(values[p * d + c]))
                            .sum::<f64>()
                            / total;
                        assert!(
                            (f64::from(got) - want).abs() < 1e-5,
                            "{level} d {d} positions {positions} dim {c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Scores of 3 heads, 1 to 40 new rows after 0 to 9 past positions, at every level this
    /// CPU has: each row the softmax of its scaled scores up to its own position, zero after.
    #[test]
    fn causal_softmax_masks_and_normalises_each_row() {
        let value = |i: usize| ((i * 2654435761) % 1000) as f32 / 100.0 - 5.0;
        for level in Level::supported() {
            for (new, past) in [(1, 0), (5, 0), (40, 0), (3, 9), (17, 4)] {
                let total = past + new;
                let scores: Vec<f32> = (0..3 * new * total).map(value).collect();
                let tensor = Tensor::from_vec(scores.clone(), (3, new, total), &Device::Cpu).unwrap();
                let softmax = CausalSoftmax {
                    level,
                    past,
                    scale: 0.125,
                };
                let got = tensor.apply_op1_no_bwd(&softmax).unwrap().flatten_all().unwrap();
                let got = got.to_vec1::<f32>().unwrap();
                for (row, (scores, got)) in scores.chunks(total).zip(got.chunks(total)).enumerate() {
                    let seen = past + row % new + 1;
                    let scaled: Vec<f64> = scores[..seen].iter().map(|&s| f64::from(s) * 0.125).collect();
                    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = scaled.iter().map(|s| (s - max).exp()).sum();
                    for (j, &got) in got.iter().enumerate() {
                        let want = if j < seen {
                            (scaled[j] - max).exp() / sum
                        } else {
                            0.0
                        };
                        assert!(
                            (f64::from(got) - want).abs() < 1e-6,
                            "{level} new {new} past {past} row {row} position {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
