//! Matrix products for a few rows (decode steps, short prompts, batched decoding), with f32 or
//! bf16 weights. Such a product is bound by memory: every weight is read once per call and used
//! `rows` times, so the kernels are built around reading the weights at full bandwidth.
//!
//! A general GEMM packs the whole weight matrix for each call, which for one row costs more than
//! the product itself. Splitting the work by output column is no better: each thread then reads
//! a short piece of every weight row and the hardware prefetchers lose the stream (11 GB/s here
//! against the 21 GB/s this machine reads). So [`linear`] splits the *inputs* between threads:
//! each streams one contiguous block of the matrix into its own partial sums, added at the end.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

/// Rows at or below which the products stream the weights; above it candle's GEMM wins.
pub const SMALL_ROWS: usize = 16;

/// Weight rows combined per pass over the partial sums: four products per load and store of a
/// partial sum, which keeps the loop bound by the weight stream rather than by the sums.
const ROW_GROUP: usize = 4;

/// Vocabulary rows per parallel task of [`matmul_transposed`].
const VOCAB_BLOCK: usize = 512;

/// A weight element: f32, or bf16 widened on the fly (half the bytes to stream).
trait Weight: Copy + Send + Sync + Sized {
    fn widen(self) -> f32;

    /// `sums += x[0] * rows[0] + ... + x[3] * rows[3]`, element-wise.
    #[inline(always)]
    fn accumulate4(x: [f32; 4], rows: [&[Self]; 4], sums: &mut [f32]) {
        let [w0, w1, w2, w3] = rows;
        for ((((y, a), b), c), d) in sums.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
            *y += x[0] * a.widen() + x[1] * b.widen() + x[2] * c.widen() + x[3] * d.widen();
        }
    }
}

impl Weight for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    /// bf16 is the top half of an f32; the shift vectorises where `bf16::to_f32` may not.
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    /// The compiler's vectorisation of the widening loop streams bf16 at about 11 GB/s here
    /// against f32's 17; written out with AVX2 it reaches 13-14.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[inline(always)]
    fn accumulate4(x: [f32; 4], rows: [&[Self]; 4], sums: &mut [f32]) {
        use std::arch::x86_64::*;
        let vectors = sums.len() / 8 * 8;
        assert!(rows.iter().all(|row| row.len() >= vectors));
        // SAFETY: AVX2 and FMA are enabled at compile time (the cfg above); every load reads
        // 8 elements at `j < vectors`, within each row (asserted) and within `sums`.
        unsafe {
            let xs = x.map(|v| _mm256_set1_ps(v));
            for j in (0..vectors).step_by(8) {
                let mut acc = _mm256_loadu_ps(sums.as_ptr().add(j));
                for (row, &xv) in rows.iter().zip(&xs) {
                    let raw = _mm_loadu_si128(row.as_ptr().add(j).cast());
                    let wide = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
                    acc = _mm256_fmadd_ps(xv, wide, acc);
                }
                _mm256_storeu_ps(sums.as_mut_ptr().add(j), acc);
            }
        }
        for (j, y) in sums.iter_mut().enumerate().skip(vectors) {
            *y += x[0] * rows[0][j].widen()
                + x[1] * rows[1][j].widen()
                + x[2] * rows[2][j].widen()
                + x[3] * rows[3][j].widen();
        }
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: must be contiguous"),
    }
}

fn activations<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("matvec: activations must be f32")
    };
    contiguous(data, layout, "activations")
}

/// `x` (rows, in) @ `w` (in, out) + `bias` (out), `w` row-major f32 or bf16. The bias is
/// added where the threads' partial sums are, which saves a pass (and an allocation) per layer.
struct RowsTimesMatrixPlusBias;

impl CustomOp3 for RowsTimesMatrixPlusBias {
    fn name(&self) -> &'static str {
        "rows-times-matrix-plus-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inputs) = xl.shape().dims2()?;
        let (w_in, outputs) = wl.shape().dims2()?;
        if w_in != inputs || bl.dims() != [outputs] {
            candle_core::bail!(
                "rows-times-matrix-plus-bias: {:?} @ {:?} + {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            )
        }
        let x = activations(xs, xl)?;
        let bias = activations(bs, bl)?;
        let y = match ws {
            CpuStorage::F32(w) => rows_times_matrix(x, contiguous(w, wl, "weight")?, bias, rows, inputs),
            CpuStorage::BF16(w) => rows_times_matrix(x, contiguous(w, wl, "weight")?, bias, rows, inputs),
            other => candle_core::bail!("rows-times-matrix-plus-bias: {:?} weights", other.dtype()),
        };
        Ok((CpuStorage::F32(y), Shape::from((rows, outputs))))
    }
}

fn rows_times_matrix<W: Weight>(x: &[f32], w: &[W], bias: &[f32], rows: usize, inputs: usize) -> Vec<f32> {
    let outputs = bias.len();
    let per_thread = inputs
        .div_ceil(rayon::current_num_threads().max(1))
        .next_multiple_of(ROW_GROUP);
    let partials: Vec<Vec<f32>> = (0..inputs.div_ceil(per_thread))
        .into_par_iter()
        .map(|part| {
            let start = part * per_thread;
            let end = (start + per_thread).min(inputs);
            let mut sums = vec![0f32; rows * outputs];
            for group in (start..end).step_by(ROW_GROUP) {
                let n = ROW_GROUP.min(end - group);
                let block = &w[group * outputs..(group + n) * outputs];
                for (r, sums) in sums.chunks_exact_mut(outputs).enumerate() {
                    accumulate(&x[r * inputs + group..][..n], block, sums);
                }
            }
            sums
        })
        .collect();
    let mut y = bias.repeat(rows);
    for partial in &partials {
        y.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
    }
    y
}

/// `sums += xs @ block` for the `xs.len()` consecutive weight rows in `block`.
#[inline(always)]
fn accumulate<W: Weight>(xs: &[f32], block: &[W], sums: &mut [f32]) {
    let outputs = sums.len();
    if let [x0, x1, x2, x3] = *xs {
        let (w0, rest) = block.split_at(outputs);
        let (w1, rest) = rest.split_at(outputs);
        let (w2, w3) = rest.split_at(outputs);
        W::accumulate4([x0, x1, x2, x3], [w0, w1, w2, w3], sums);
    } else {
        for (&x, row) in xs.iter().zip(block.chunks_exact(outputs)) {
            sums.iter_mut().zip(row).for_each(|(y, w)| *y += x * w.widen());
        }
    }
}

/// `x` (rows, d) @ `e`^T for `e` (vocab, d) row-major f32 or bf16: one dot product per
/// vocabulary row.
struct RowsTimesTransposed;

impl CustomOp2 for RowsTimesTransposed {
    fn name(&self) -> &'static str {
        "rows-times-transposed"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        es: &CpuStorage,
        el: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, d) = xl.shape().dims2()?;
        let (vocab, e_d) = el.shape().dims2()?;
        if e_d != d {
            candle_core::bail!("rows-times-transposed: {:?} @ {:?}^T", xl.dims(), el.dims())
        }
        let x = activations(xs, xl)?;
        let y = match es {
            CpuStorage::F32(e) => rows_times_transposed(x, contiguous(e, el, "embedding")?, rows, d, vocab),
            CpuStorage::BF16(e) => rows_times_transposed(x, contiguous(e, el, "embedding")?, rows, d, vocab),
            other => candle_core::bail!("rows-times-transposed: {:?} weights", other.dtype()),
        };
        Ok((CpuStorage::F32(y), Shape::from((rows, vocab))))
    }
}

fn rows_times_transposed<W: Weight>(x: &[f32], e: &[W], rows: usize, d: usize, vocab: usize) -> Vec<f32> {
    let mut by_token = vec![0f32; vocab * rows];
    by_token
        .par_chunks_mut(rows * VOCAB_BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            for (k, slot) in out.chunks_mut(rows).enumerate() {
                let v = block * VOCAB_BLOCK + k;
                let e_row = &e[v * d..(v + 1) * d];
                for (r, value) in slot.iter_mut().enumerate() {
                    *value = dot(e_row, &x[r * d..(r + 1) * d]);
                }
            }
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

/// A dot product with 32 independent accumulators (four vector registers), so that the
/// compiler can vectorise it and the additions do not wait on each other.
#[inline(always)]
fn dot<W: Weight>(a: &[W], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 32];
    let (a32, b32) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = a32
        .remainder()
        .iter()
        .zip(b32.remainder())
        .map(|(x, y)| x.widen() * y)
        .sum();
    for (x, y) in a32.zip(b32) {
        for k in 0..32 {
            lanes[k] += x[k].widen() * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `x` (rows, in) @ `w` (in, out) + `bias` (out); `x` and `bias` f32, `w` f32 or bf16, the
/// answer f32.
pub fn linear(x: &Tensor, w: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if x.dim(0)? <= SMALL_ROWS {
        x.contiguous()?
            .apply_op3_no_bwd(w, bias, &RowsTimesMatrixPlusBias)
    } else {
        x.matmul(&w.to_dtype(DType::F32)?)?.broadcast_add(bias)
    }
}

/// `x` (rows, d) @ `e`^T for `e` (vocab, d), without transposing `e`; `e` f32 or bf16.
pub fn matmul_transposed(x: &Tensor, e: &Tensor) -> candle_core::Result<Tensor> {
    if x.dim(0)? <= SMALL_ROWS {
        x.contiguous()?.apply_op2_no_bwd(e, &RowsTimesTransposed)
    } else {
        x.matmul(&e.to_dtype(DType::F32)?.t()?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Every row count up to and past [`SMALL_ROWS`], input widths that are and are not a
    /// multiple of the row group, f32 and bf16 weights: equal to candle's product of the same
    /// (widened) weights.
    #[test]
    fn products_match_candle() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::BF16] {
            for inputs in [37, 64] {
                for rows in 1..=SMALL_ROWS + 1 {
                    let x = Tensor::from_vec(values(rows * inputs, 1), (rows, inputs), &dev).unwrap();
                    let w = Tensor::from_vec(values(inputs * 1001, 2), (inputs, 1001), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    let wide = w.to_dtype(DType::F32).unwrap();
                    let bias = Tensor::from_vec(values(1001, 4), 1001, &dev).unwrap();
                    let want = x.matmul(&wide).unwrap().broadcast_add(&bias).unwrap();
                    let diff = max_difference(&linear(&x, &w, &bias).unwrap(), &want);
                    assert!(diff < 1e-4, "{dtype:?} {inputs} inputs, rows {rows}: {diff}");

                    let e = Tensor::from_vec(values(1001 * inputs, 3), (1001, inputs), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    let wide = e.to_dtype(DType::F32).unwrap().t().unwrap();
                    let diff = max_difference(&matmul_transposed(&x, &e).unwrap(), &x.matmul(&wide).unwrap());
                    assert!(diff < 1e-4, "{dtype:?} {inputs} inputs, rows {rows}: {diff}");
                }
            }
        }
    }
}
