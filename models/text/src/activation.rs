//! GELU as GPT-2's MLP applies it. The tanh form (`gelu_new`, GPT-2's own) runs inside the
//! first MLP product's epilogue ([`simd::gemm::Activation::GeluTanh`]), while the sums are
//! still in registers; the error-function form goes through candle.

use candle_core::Tensor;
use simd::gemm::Activation;

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

    /// The activation a product's epilogue applies for this GELU (none for the error form).
    pub fn epilogue(self) -> Activation {
        match self {
            Self::Tanh => Activation::GeluTanh,
            Self::Erf => Activation::Identity,
        }
    }

    /// What is left to apply to the output of a product with [`Gelu::epilogue`].
    pub fn after_epilogue(self, x: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Tanh => Ok(x),
            Self::Erf => x.gelu_erf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_pick_the_form() {
        assert_eq!(Gelu::from_config("gelu_new").unwrap(), Gelu::Tanh);
        assert_eq!(Gelu::from_config("gelu_pytorch_tanh").unwrap(), Gelu::Tanh);
        assert_eq!(Gelu::from_config("gelu").unwrap(), Gelu::Erf);
        assert!(Gelu::from_config("relu").is_err());
    }
}
