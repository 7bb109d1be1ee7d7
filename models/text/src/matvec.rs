//! Matrix products for a few rows (the decode step): the weights are streamed once from memory,
//! with the work split by output column between threads. A general GEMM packs the whole weight
//! matrix for each call, which for one row costs more than the product itself.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows at or below which [`matmul`] streams the weights; above it candle's GEMM wins.
pub const SMALL_ROWS: usize = 16;

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: only f32 is supported")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: must be contiguous"),
    }
}

/// `x` (rows, in) @ `w` (in, out), `w` row-major.
struct RowsTimesMatrix;

impl CustomOp2 for RowsTimesMatrix {
    fn name(&self) -> &'static str {
        "rows-times-matrix"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inputs) = xl.shape().dims2()?;
        let (w_in, outputs) = wl.shape().dims2()?;
        if w_in != inputs {
            candle_core::bail!("rows-times-matrix: {:?} @ {:?}", xl.dims(), wl.dims())
        }
        let x = contiguous(xs, xl, "input")?;
        let w = contiguous(ws, wl, "weight")?;
        let chunk = outputs
            .div_ceil(rayon::current_num_threads().max(1))
            .next_multiple_of(16)
            .max(16);
        let mut columns: Vec<Vec<f32>> = (0..outputs.div_ceil(chunk)).map(|_| Vec::new()).collect();
        columns.par_iter_mut().enumerate().for_each(|(c, out)| {
            let start = c * chunk;
            let end = (start + chunk).min(outputs);
            let width = end - start;
            *out = vec![0f32; rows * width];
            for i in 0..inputs {
                let w_row = &w[i * outputs + start..i * outputs + end];
                for r in 0..rows {
                    let xv = x[r * inputs + i];
                    for (o, &wv) in out[r * width..(r + 1) * width].iter_mut().zip(w_row) {
                        *o += xv * wv;
                    }
                }
            }
        });
        let mut y = vec![0f32; rows * outputs];
        for (c, block) in columns.iter().enumerate() {
            let start = c * chunk;
            let width = block.len() / rows.max(1);
            for r in 0..rows {
                y[r * outputs + start..r * outputs + start + width]
                    .copy_from_slice(&block[r * width..(r + 1) * width]);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, outputs))))
    }
}

/// `x` (rows, d) @ `e`^T for `e` (vocab, d) row-major: one dot product per vocabulary row.
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
        let x = contiguous(xs, xl, "input")?;
        let e = contiguous(es, el, "embedding")?;
        let mut y = vec![0f32; rows * vocab];
        let mut by_token = vec![0f32; vocab * rows];
        by_token
            .par_chunks_mut(rows * 256)
            .enumerate()
            .for_each(|(block, out)| {
                for (k, slot) in out.chunks_mut(rows).enumerate() {
                    let v = block * 256 + k;
                    let e_row = &e[v * d..(v + 1) * d];
                    for (r, value) in slot.iter_mut().enumerate() {
                        *value = dot(e_row, &x[r * d..(r + 1) * d]);
                    }
                }
            });
        for v in 0..vocab {
            for r in 0..rows {
                y[r * vocab + v] = by_token[v * rows + r];
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, vocab))))
    }
}

/// A dot product with eight independent accumulators, so that the compiler can vectorise it
/// (a single running sum is a chain of dependent additions).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `x` (rows, in) @ `w` (in, out).
pub fn matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if x.dim(0)? <= SMALL_ROWS {
        x.contiguous()?.apply_op2_no_bwd(w, &RowsTimesMatrix)
    } else {
        x.matmul(w)
    }
}

/// `x` (rows, d) @ `e`^T for `e` (vocab, d), without transposing `e`.
pub fn matmul_transposed(x: &Tensor, e: &Tensor) -> candle_core::Result<Tensor> {
    if x.dim(0)? <= SMALL_ROWS {
        x.contiguous()?.apply_op2_no_bwd(e, &RowsTimesTransposed)
    } else {
        x.matmul(&e.t()?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn small_row_products_match_candle() {
        let dev = Device::Cpu;
        for rows in 1..=SMALL_ROWS {
            let x = Tensor::from_vec(values(rows * 37, 1), (rows, 37), &dev).unwrap();
            let w = Tensor::from_vec(values(37 * 1001, 2), (37, 1001), &dev).unwrap();
            let ours = matmul(&x, &w).unwrap();
            let reference = x.matmul(&w).unwrap();
            let diff: f32 = (ours - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_keepdim(1)
                .unwrap()
                .max(0)
                .unwrap()
                .to_vec1()
                .unwrap()[0];
            assert!(diff < 1e-4, "rows {rows}: {diff}");

            let e = Tensor::from_vec(values(1001 * 37, 3), (1001, 37), &dev).unwrap();
            let ours = matmul_transposed(&x, &e).unwrap();
            let reference = x.matmul(&e.t().unwrap()).unwrap();
            let diff: f32 = (ours - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_keepdim(1)
                .unwrap()
                .max(0)
                .unwrap()
                .to_vec1()
                .unwrap()[0];
            assert!(diff < 1e-4, "rows {rows}: {diff}");
        }
    }
}
