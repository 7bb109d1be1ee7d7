//! GELU as GPT-2's MLP applies it. The tanh form (`gelu_new`, GPT-2's own) is computed here in
//! AVX2 as `x / (1 + exp(-2u))`, which equals `0.5 x (1 + tanh u)`: through libm's `tanhf` it
//! took a tenth of a batched decode step of eight rows (24 576 activations per layer).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::TextError;

/// The GELU a config's `activation_function` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`: `gelu_new`, `gelu_pytorch_tanh`.
    Tanh,
    /// `x Phi(x)` with the error function: `gelu`.
    Erf,
}

impl Gelu {
    pub fn from_config(name: &str) -> Result<Self, TextError> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::Tanh),
            "gelu" => Ok(Self::Erf),
            other => Err(TextError::Config(format!("unsupported activation `{other}`"))),
        }
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Tanh => x.apply_op1_no_bwd(&TanhGelu),
            Self::Erf => x.gelu_erf(),
        }
    }
}

/// Values per parallel task: a prefill's MLP has hundreds of thousands, a decode step's a few
/// thousand (one task).
const CHUNK: usize = 1 << 14;

struct TanhGelu;

impl CustomOp1 for TanhGelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("gelu-tanh: needs contiguous f32, got {:?}", storage.dtype())
        };
        let x = &data[start..end];
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| kernels::gelu_tanh(x, y));
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

/// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`, as candle and PyTorch write it.
fn gelu_tanh_scalar(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod kernels {
    use std::arch::x86_64::*;

    /// `y = gelu(x)`, eight values at a time, the tail in scalar code.
    pub fn gelu_tanh(x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), y.len());
        let vectors = x.len() / 8 * 8;
        // SAFETY: AVX2 and FMA are enabled at compile time (the cfg above); every access is
        // eight values at `i < vectors <= len` of both slices.
        unsafe {
            let scale = _mm256_set1_ps(-2.0 * 0.797_884_6);
            let cubic = _mm256_set1_ps(0.044715);
            let one = _mm256_set1_ps(1.0);
            for i in (0..vectors).step_by(8) {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                // -2u = -2 sqrt(2 / pi) x (1 + 0.044715 x^2)
                let inner = _mm256_fmadd_ps(_mm256_mul_ps(cubic, v), v, one);
                let minus_two_u = _mm256_mul_ps(_mm256_mul_ps(scale, v), inner);
                let e = exp(minus_two_u);
                _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_div_ps(v, _mm256_add_ps(one, e)));
            }
        }
        for (y, &x) in y[vectors..].iter_mut().zip(&x[vectors..]) {
            *y = super::gelu_tanh_scalar(x);
        }
    }

    /// `e^x` to about one part in 10^7 (Cephes' `expf`): `x = n ln 2 + r`, a polynomial for
    /// `e^r`, and `2^n` put into the exponent. Inputs are clamped to [-87, 88], where `2^n`
    /// stays a normal number; GELU needs no more (`x / (1 + e^88)` is zero to f32).
    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
        // SAFETY: register arithmetic only; AVX2 and FMA are enabled at compile time.
        unsafe {
            let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                x,
                _mm256_set1_ps(std::f32::consts::LOG2_E),
            ));
            // ln 2 in two parts, so that `n ln 2` is subtracted without losing bits.
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm256_set1_ps(1.987_569_1e-4);
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
            let two_n =
                _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
            _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
        }
    }
}

/// The scalar formula for other targets.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod kernels {
    pub fn gelu_tanh(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = super::gelu_tanh_scalar(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Across the range activations take and far past it, and for lengths that leave a scalar
    /// tail: within a few parts in 10^7 of the tanh formula.
    #[test]
    fn tanh_gelu_matches_the_formula() {
        let x: Vec<f32> = (0..40_003).map(|i| (i as f32 - 20_000.0) / 1000.0).collect();
        let got = Gelu::Tanh
            .apply(&Tensor::new(x.as_slice(), &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (&x, &got) in x.iter().zip(&got) {
            let want = gelu_tanh_scalar(x);
            assert!(
                (got - want).abs() <= 4e-7 * x.abs().max(1.0),
                "gelu({x}) = {got}, formula {want}"
            );
        }
    }

    #[test]
    fn config_names_pick_the_form() {
        assert_eq!(Gelu::from_config("gelu_new").unwrap(), Gelu::Tanh);
        assert_eq!(Gelu::from_config("gelu_pytorch_tanh").unwrap(), Gelu::Tanh);
        assert_eq!(Gelu::from_config("gelu").unwrap(), Gelu::Erf);
        assert!(Gelu::from_config("relu").is_err());
    }
}
