//! Layer normalisation over each row, in the vectors of the run-time [`Level`]: candle's own
//! is written for any float type and, in a binary built for the x86-64 baseline, runs as
//! scalar code, three times per block's worth of rows (twice in each block, once after them).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use simd::{dispatch, team, F32x, Kernel, Level};

use crate::dense::f32_rows;

/// Rows per parallel task: a row is a few hundred values, far too little work to hand out
/// alone.
const ROWS_PER_TASK: usize = 16;

/// `(x - mean) / sqrt(variance + eps) * weight + bias` over each row, the mean and the
/// (biased, as PyTorch's) variance taken in two passes over the row.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// A norm over rows as wide as `weight` and `bias`, which must be as long as each other.
    pub(crate) fn new(weight: Vec<f32>, bias: Vec<f32>, eps: f32) -> Self {
        assert_eq!(
            weight.len(),
            bias.len(),
            "layer norm: weight and bias differ in length"
        );
        Self { weight, bias, eps }
    }

    /// The normalised rows of `x` (rows, width), with the kernels of `level`.
    pub(crate) fn forward(&self, level: Level, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?
            .apply_op1_no_bwd(&LayerNormOp { norm: self, level })
    }
}

struct LayerNormOp<'a> {
    norm: &'a LayerNorm,
    level: Level,
}

impl CustomOp1 for LayerNormOp<'_> {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let LayerNorm { weight, bias, eps } = self.norm;
        let width = weight.len();
        let (rows, columns) = layout.shape().dims2()?;
        if columns != width {
            candle_core::bail!("layer norm: {:?} rows for width {width}", layout.dims())
        }
        let x = f32_rows(storage, layout)?;
        let mut out = vec![0f32; rows * width];
        if width > 0 {
            team::for_each_chunk_mut(&mut out, ROWS_PER_TASK * width, |task, chunk| {
                let first = task * ROWS_PER_TASK * width;
                for (x, out) in x[first..].chunks_exact(width).zip(chunk.chunks_exact_mut(width)) {
                    dispatch(
                        self.level,
                        NormRow {
                            x,
                            weight,
                            bias,
                            eps: *eps,
                            out,
                        },
                    );
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, width))))
    }
}

/// One row of [`LayerNorm`]: whole vectors, then the values after the last one.
struct NormRow<'a> {
    x: &'a [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
    out: &'a mut [f32],
}

impl Kernel for NormRow<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let NormRow {
            x,
            weight,
            bias,
            eps,
            out,
        } = self;
        let n = x.len();
        let whole = n - n % V::LANES;
        // SAFETY: the level's instructions (the trait's contract); every vector read or written
        // lies within the first `whole` values of `x`, `weight`, `bias` and `out`, all `n` long.
        unsafe {
            let at = |values: &[f32], i: usize| V::load(values.as_ptr().add(i));
            let mut total = V::zero();
            for i in (0..whole).step_by(V::LANES) {
                total = total.add(at(x, i));
            }
            let mean = (total.sum() + x[whole..].iter().sum::<f32>()) / n as f32;
            let centred = V::splat(mean);
            let mut squares = V::zero();
            for i in (0..whole).step_by(V::LANES) {
                let d = at(x, i).sub(centred);
                squares = d.mul_add(d, squares);
            }
            let tail: f32 = x[whole..].iter().map(|v| (v - mean) * (v - mean)).sum();
            let scale = 1.0 / ((squares.sum() + tail) / n as f32 + eps).sqrt();
            let scale_v = V::splat(scale);
            for i in (0..whole).step_by(V::LANES) {
                let normalised = at(x, i).sub(centred).mul(scale_v);
                normalised
                    .mul_add(at(weight, i), at(bias, i))
                    .store(out.as_mut_ptr().add(i));
            }
            for i in whole..n {
                out[i] = (x[i] - mean) * scale * weight[i] + bias[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Rows of widths that are and are not whole vectors, at every level this CPU has: the
    /// formula in f64, within f32 rounding.
    #[test]
    fn rows_are_normalised_as_the_formula_says() {
        let value = |i: usize| ((i * 2654435761) % 1000) as f32 / 100.0 - 3.0;
        for level in Level::supported() {
            for width in [768, 40, 13, 1] {
                for rows in [1, 3, 37] {
                    let x: Vec<f32> = (0..rows * width).map(value).collect();
                    let weight: Vec<f32> = (0..width).map(|i| value(i + 7) / 2.0).collect();
                    let bias: Vec<f32> = (0..width).map(|i| value(i + 11)).collect();
                    let norm = LayerNorm::new(weight.clone(), bias.clone(), 1e-5);
                    let input = Tensor::from_vec(x.clone(), (rows, width), &Device::Cpu).unwrap();
                    let got = norm.forward(level, &input).unwrap().flatten_all().unwrap();
                    let got = got.to_vec1::<f32>().unwrap();
                    for (r, row) in x.chunks(width).enumerate() {
                        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
                        let variance =
                            row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / width as f64;
                        for (i, &v) in row.iter().enumerate() {
                            let want = (f64::from(v) - mean) / (variance + 1e-5).sqrt()
                                * f64::from(weight[i])
                                + f64::from(bias[i]);
                            let got = f64::from(got[r * width + i]);
                            assert!(
                                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                                "{level}, width {width}, row {r}, value {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A row as wide as the norm is asked for; another width is an error, not a panic.
    #[test]
    fn a_row_of_another_width_is_an_error() {
        let norm = LayerNorm::new(vec![1.0; 4], vec![0.0; 4], 1e-5);
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let error = norm.forward(Level::Portable, &x).unwrap_err().to_string();
        assert!(error.contains("width 4"), "{error}");
    }
}
