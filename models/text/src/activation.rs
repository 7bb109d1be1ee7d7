//! GELU as GPT-2's MLP applies it. The tanh form (`gelu_new`, GPT-2's own) is computed here in
//! vectors as `x / (1 + exp(-2u))`, which equals `0.5 x (1 + tanh u)`: through libm's `tanhf`
//! it took a tenth of a batched decode step of eight rows (24 576 activations per layer).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use simd::{dispatch, F32x, Kernel, Level};

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

    /// The activation of `x`, with the kernels of `level`.
    pub fn apply(self, level: Level, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Tanh => x.apply_op1_no_bwd(&TanhGelu { level }),
            Self::Erf => x.gelu_erf(),
        }
    }
}

/// Values per parallel task: a prefill's MLP has hundreds of thousands, a decode step's a few
/// thousand (one task).
const CHUNK: usize = 1 << 14;

struct TanhGelu {
    level: Level,
}

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
            .for_each(|(y, x)| dispatch(self.level, GeluTanhSlice { x, y }));
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

/// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`, as candle and PyTorch write it.
fn gelu_tanh_scalar(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

/// `y = gelu(x)` for a slice, a vector at a time, the tail in scalar code.
struct GeluTanhSlice<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
}

impl Kernel for GeluTanhSlice<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let GeluTanhSlice { x, y } = self;
        assert_eq!(x.len(), y.len());
        let vectors = x.len() / V::LANES * V::LANES;
        // SAFETY: the level's instructions (the trait's contract); every access is one vector
        // at `i < vectors <= len` of both slices.
        unsafe {
            let scale = V::splat(-2.0 * 0.797_884_6);
            let cubic = V::splat(0.044715);
            let one = V::splat(1.0);
            for i in (0..vectors).step_by(V::LANES) {
                let v = V::load(x.as_ptr().add(i));
                // -2u = -2 sqrt(2 / pi) x (1 + 0.044715 x^2)
                let inner = cubic.mul(v).mul_add(v, one);
                let minus_two_u = scale.mul(v).mul(inner);
                v.div(one.add(minus_two_u.exp())).store(y.as_mut_ptr().add(i));
            }
        }
        for (y, &x) in y[vectors..].iter_mut().zip(&x[vectors..]) {
            *y = gelu_tanh_scalar(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Across the range activations take and far past it, and for lengths that leave a scalar
    /// tail, at every level this CPU has: within a few parts in 10^7 of the tanh formula.
    #[test]
    fn tanh_gelu_matches_the_formula() {
        let x: Vec<f32> = (0..40_003).map(|i| (i as f32 - 20_000.0) / 1000.0).collect();
        for level in Level::supported() {
            let got = Gelu::Tanh
                .apply(level, &Tensor::new(x.as_slice(), &Device::Cpu).unwrap())
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (&x, &got) in x.iter().zip(&got) {
                let want = gelu_tanh_scalar(x);
                assert!(
                    (got - want).abs() <= 4e-7 * x.abs().max(1.0),
                    "{level}: gelu({x}) = {got}, formula {want}"
                );
            }
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
