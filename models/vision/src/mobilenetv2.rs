//! MobileNetV2 in timm's tensor layout (`mobilenetv2_100` and every other width or depth
//! multiplier: channel counts and block counts are read from the weights, not assumed).
//!
//! BatchNorm is folded into the preceding convolution at load, and weights are stored in the
//! layouts the NHWC kernels of [`crate::ops`] read, so a forward pass is a chain of matrix
//! products and depthwise kernels with fused bias and ReLU6.

use std::collections::BTreeMap;

use candle_core::{DType, Module, Tensor};
use rayon::prelude::*;

use simd::gemm::Weights;
use simd::{team, Level};

use crate::ops::{self, Activation, ConvGeometry, Padding};
use crate::{fused, VisionError};

/// Stride of the first block of each of MobileNetV2's seven stages; the other blocks use 1.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// What the weights do not say about the network.
#[derive(Debug, Clone, Copy)]
pub struct Architecture {
    /// BatchNorm epsilon: 1e-5 in PyTorch, 1e-3 in Keras.
    pub bn_eps: f64,
    /// Padding of the 3x3 convolutions.
    pub padding: Padding,
}

impl Default for Architecture {
    fn default() -> Self {
        Self {
            bn_eps: 1e-5,
            padding: Padding::Symmetric,
        }
    }
}

/// A dense convolution (the stem and the head) with its BatchNorm folded in, its weights
/// (K * K * Cin, Cout) packed.
#[derive(Debug)]
struct FoldedConv {
    weights: Weights,
    geometry: ConvGeometry,
}

impl FoldedConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::conv2d(x, &self.weights, self.geometry, Activation::Relu6, None)
    }

    fn out_channels(&self) -> usize {
        self.weights.outputs()
    }
}

/// A depthwise convolution with its BatchNorm folded in: weight (K, K, C), bias (C).
#[derive(Debug)]
struct FoldedDepthwise {
    weight: Tensor,
    bias: Tensor,
    geometry: ConvGeometry,
}

/// One block: timm's `DepthwiseSeparableConv` (no expansion) or `InvertedResidual`; the 1x1
/// convolutions' weights packed, their BatchNorm folded in.
#[derive(Debug)]
struct Block {
    expand: Option<Weights>,
    depthwise: FoldedDepthwise,
    project: Weights,
    residual: bool,
}

impl Block {
    /// The block over `x`; see [`fused::inverted_residual`] for `min_strips`.
    fn forward(&self, level: Level, x: &Tensor, min_strips: usize) -> candle_core::Result<Tensor> {
        fused::inverted_residual(
            level,
            x,
            self.expand.as_ref(),
            &self.depthwise.weight,
            &self.depthwise.bias,
            self.depthwise.geometry,
            &self.project,
            self.residual,
            min_strips,
        )
    }
}

/// A MobileNetV2 backbone with its classifier, its kernels built for one [`Level`].
#[derive(Debug)]
pub struct MobileNetV2 {
    level: Level,
    stem: FoldedConv,
    blocks: Vec<Block>,
    head: FoldedConv,
    /// The final linear layer, (features, classes).
    classifier: Option<Weights>,
}

impl MobileNetV2 {
    /// Builds the network from timm-layout tensors (`conv_stem`, `bn1`, `blocks.S.B.*`,
    /// `conv_head`, `bn2`, `classifier`), its weights laid out for the kernels of `level`
    /// (normally [`simd::level`]). The classifier is optional: a backbone-only file answers
    /// features.
    pub fn from_tensors(
        tensors: &BTreeMap<String, Tensor>,
        arch: Architecture,
        level: Level,
    ) -> Result<Self, VisionError> {
        let loader = Loader { tensors, arch, level };
        let stem = loader.dense("conv_stem", "bn1", 2)?;
        let mut blocks = Vec::new();
        let mut channels = stem.out_channels();
        for (stage, stage_stride) in STAGE_STRIDES.iter().enumerate() {
            let mut index = 0;
            while tensors
                .keys()
                .any(|k| k.starts_with(&format!("blocks.{stage}.{index}.")))
            {
                let prefix = format!("blocks.{stage}.{index}");
                let stride = if index == 0 { *stage_stride } else { 1 };
                let block = loader.block(&prefix, stride)?;
                let out = block.project.outputs();
                let residual = stride == 1 && out == channels;
                blocks.push(Block { residual, ..block });
                channels = out;
                index += 1;
            }
            if index == 0 {
                return Err(VisionError::Weights(format!(
                    "no blocks for stage {stage} (expected `blocks.{stage}.0.*`)"
                )));
            }
        }
        let head = loader.dense("conv_head", "bn2", 1)?;
        let classifier = match tensors.get("classifier.weight") {
            Some(weight) => {
                let weight = float_weights("classifier.weight", weight)?;
                let bias = loader.get("classifier.bias")?;
                let (classes, features) = weight.dims2()?;
                if features != head.out_channels() || bias.dims() != [classes] {
                    return Err(VisionError::Weights(format!(
                        "classifier.weight {:?} and classifier.bias {:?} do not fit {} features",
                        weight.dims(),
                        bias.dims(),
                        head.out_channels()
                    )));
                }
                Some(pack(level, weight, bias)?)
            }
            None => None,
        };
        Ok(Self {
            level,
            stem,
            blocks,
            head,
            classifier,
        })
    }

    /// Length of the pooled feature vector.
    pub fn feature_dim(&self) -> usize {
        self.head.out_channels()
    }

    /// Number of classes of the classifier, if there is one.
    pub fn num_classes(&self) -> Option<usize> {
        self.classifier.as_ref().map(Weights::outputs)
    }

    /// Pooled features (batch, feature_dim) of normalised images (batch, height, width, 3).
    /// The images of a batch run as passes of one image each, side by side: each thread
    /// mostly works through its own image, whose activations stay in the last-level cache,
    /// and the layers' parallel loops split only to balance the ends (passes of several images
    /// measured slower per image when the blocks ran layer by layer; in strips they measure
    /// the same).
    pub fn features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.features_then(images, Tensor::clone)
    }

    /// `then` of the pooled features of `images` ([`MobileNetV2::features`]), run on the
    /// threads of the pass (a lone image's on its team): the classifier's product after the
    /// pass would otherwise wake the pool's workers once more, from a thread outside it.
    pub fn features_then<R: Send>(
        &self,
        images: &Tensor,
        then: impl FnOnce(&Tensor) -> R + Send,
    ) -> candle_core::Result<R> {
        // On a rayon worker, each layer's parallel loop starts inside the pool; from outside,
        // every one of the 60 layers would put this thread to sleep and wake it again, and the
        // scheduler's share of a batch-1 pass was twice what it is this way. A lone image's
        // pass runs on a team ([`team`]), whose helpers spin between the layers' short loops
        // rather than fall asleep after each.
        rayon::scope(|_| {
            let batch = images.dim(0)?;
            if batch == 1 {
                return team::with_team(|| {
                    let features = self.features_of_pass(images, rayon::current_num_threads())?;
                    Ok(then(&features))
                });
            }
            let features = (0..batch)
                .into_par_iter()
                .map(|n| self.features_of_pass(&images.narrow(0, n, 1)?, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(then(&Tensor::cat(&features, 0)?))
        })
    }

    /// The features of every image of `images` in one pass through the layers, the blocks in
    /// at least `min_strips` strips per image where that leaves them tall enough.
    fn features_of_pass(&self, images: &Tensor, min_strips: usize) -> candle_core::Result<Tensor> {
        let mut x = self.stem.forward(images)?;
        for block in &self.blocks {
            x = block.forward(self.level, &x, min_strips)?;
        }
        let x = self.head.forward(&x)?;
        ops::global_average_pool(self.level, &x)
    }

    /// Logits (batch, classes) of normalised images (batch, height, width, 3).
    pub fn logits(&self, images: &Tensor) -> Result<Tensor, VisionError> {
        self.features_then(images, |features| self.classify_features(features))?
    }

    /// Logits (batch, classes) of pooled features (batch, feature_dim).
    pub fn classify_features(&self, features: &Tensor) -> Result<Tensor, VisionError> {
        let classifier = self.classifier.as_ref().ok_or(VisionError::NoClassifier)?;
        Ok(ops::linear(features, classifier, Activation::Identity)?)
    }
}

impl Module for MobileNetV2 {
    fn forward(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.logits(images)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// `tensor` if it holds floating-point values: an integer tensor would be read as numbers it
/// does not hold.
fn float_weights<'t>(name: &str, tensor: &'t Tensor) -> Result<&'t Tensor, VisionError> {
    match tensor.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => Ok(tensor),
        other => Err(VisionError::Weights(format!(
            "`{name}` holds {other:?} values; weights must be F32, F16 or BF16"
        ))),
    }
}

/// Packs an (outputs, inputs) weight, PyTorch's layout, and its bias for [`ops::linear`].
fn pack(level: Level, weight: &Tensor, bias: &Tensor) -> Result<Weights, VisionError> {
    let (outputs, inputs) = weight.dims2()?;
    let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    with_values(weight, |weight| {
        Weights::pack_transposed(level, weight, &bias, inputs, outputs)
    })
}

/// Runs `f` on a tensor's values as f32, in place when they are f32 and contiguous already
/// (the loaded weights are), rather than copied into a new vector.
fn with_values<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, VisionError> {
    let tensor = tensor.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        return Err(VisionError::Weights("weights must be on the CPU".into()));
    };
    Ok(f(ops::contiguous_f32(storage, layout, "weights")?))
}

struct Loader<'a> {
    tensors: &'a BTreeMap<String, Tensor>,
    arch: Architecture,
    level: Level,
}

impl Loader<'_> {
    fn get(&self, name: &str) -> Result<&Tensor, VisionError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| VisionError::Weights(format!("missing tensor `{name}`")))?;
        float_weights(name, tensor)
    }

    /// Scale and shift of an inference-mode BatchNorm: `y = x * scale + shift`.
    fn batch_norm(&self, prefix: &str, channels: usize) -> Result<(Tensor, Tensor), VisionError> {
        let get = |field: &str| -> Result<Tensor, VisionError> {
            let t = self.get(&format!("{prefix}.{field}"))?.to_dtype(DType::F32)?;
            if t.dims() != [channels] {
                return Err(VisionError::Weights(format!(
                    "`{prefix}.{field}` has shape {:?}, expected [{channels}]",
                    t.dims()
                )));
            }
            Ok(t)
        };
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let scale = (gamma / (var + self.arch.bn_eps)?.sqrt()?)?;
        let shift = (beta - (mean * &scale)?)?;
        Ok((scale, shift))
    }

    /// A dense convolution `{conv}.weight` (Cout, Cin, K, K) folded with BatchNorm `{bn}`.
    fn dense(&self, conv: &str, bn: &str, stride: usize) -> Result<FoldedConv, VisionError> {
        let weight = self.get(&format!("{conv}.weight"))?.to_dtype(DType::F32)?;
        let (out_channels, in_channels, kh, kw) = weight.dims4()?;
        if kh != kw {
            return Err(VisionError::Weights(format!(
                "`{conv}.weight` has a non-square kernel {kh}x{kw}"
            )));
        }
        let (scale, shift) = self.batch_norm(bn, out_channels)?;
        let (scale, shift) = (scale.to_vec1::<f32>()?, shift.to_vec1::<f32>()?);
        // Packed straight from PyTorch's (Cout, Cin, K, K), scaled by the BatchNorm on the way:
        // GEMM input `k` is im2col's order, tap `k / Cin` (row by row) of channel `k % Cin`.
        let taps = kh * kw;
        let weights = with_values(&weight, |weight| {
            Weights::from_fn(
                self.level,
                &shift,
                taps * in_channels,
                out_channels,
                |k, output| {
                    let index = if taps == 1 {
                        output * in_channels + k
                    } else {
                        (output * in_channels + k % in_channels) * taps + k / in_channels
                    };
                    weight[index] * scale[output]
                },
            )
        })?;
        let padding = if kh == 1 {
            Padding::Symmetric
        } else {
            self.arch.padding
        };
        Ok(FoldedConv {
            weights,
            geometry: ConvGeometry {
                kernel: kh,
                stride,
                padding,
            },
        })
    }

    /// A 1x1 convolution `{conv}.weight` (Cout, Cin, 1, 1) folded with BatchNorm `{bn}`.
    fn pointwise(&self, conv: &str, bn: &str) -> Result<Weights, VisionError> {
        let folded = self.dense(conv, bn, 1)?;
        if folded.geometry.kernel != 1 {
            return Err(VisionError::Weights(format!(
                "`{conv}.weight` has a {k}x{k} kernel, expected 1x1",
                k = folded.geometry.kernel
            )));
        }
        Ok(folded.weights)
    }

    /// A depthwise convolution `{conv}.weight` (C, 1, K, K) folded with BatchNorm `{bn}`.
    fn depthwise(&self, conv: &str, bn: &str, stride: usize) -> Result<FoldedDepthwise, VisionError> {
        let weight = self.get(&format!("{conv}.weight"))?.to_dtype(DType::F32)?;
        let (channels, one, kh, kw) = weight.dims4()?;
        if one != 1 || kh != kw {
            return Err(VisionError::Weights(format!(
                "`{conv}.weight` {:?} is not a square depthwise kernel",
                weight.dims()
            )));
        }
        let (scale, shift) = self.batch_norm(bn, channels)?;
        let weight = weight.broadcast_mul(&scale.reshape((channels, 1, 1, 1))?)?;
        let weight = weight
            .reshape((channels, kh, kw))?
            .permute((1, 2, 0))?
            .contiguous()?;
        let geometry = ConvGeometry {
            kernel: kh,
            stride,
            padding: self.arch.padding,
        };
        Ok(FoldedDepthwise {
            weight,
            bias: shift,
            geometry,
        })
    }

    fn block(&self, prefix: &str, stride: usize) -> Result<Block, VisionError> {
        if self.tensors.contains_key(&format!("{prefix}.conv_pwl.weight")) {
            Ok(Block {
                expand: Some(self.pointwise(&format!("{prefix}.conv_pw"), &format!("{prefix}.bn1"))?),
                depthwise: self.depthwise(&format!("{prefix}.conv_dw"), &format!("{prefix}.bn2"), stride)?,
                project: self.pointwise(&format!("{prefix}.conv_pwl"), &format!("{prefix}.bn3"))?,
                residual: false,
            })
        } else {
            Ok(Block {
                expand: None,
                depthwise: self.depthwise(&format!("{prefix}.conv_dw"), &format!("{prefix}.bn1"), stride)?,
                project: self.pointwise(&format!("{prefix}.conv_pw"), &format!("{prefix}.bn2"))?,
                residual: false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::test_values::max_abs_diff;

    /// A batch run as passes of one image gives the features of one pass over all of it.
    #[test]
    fn passes_give_the_features_of_one_pass() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mobilenetv2-tiny");
        let tensors = hub::load_safetensors(&fixture.join("model.safetensors")).unwrap();
        let images = Tensor::rand(-1f32, 1f32, (5, 64, 48, 3), &Device::Cpu).unwrap();
        for level in Level::supported() {
            let model = MobileNetV2::from_tensors(&tensors, Architecture::default(), level).unwrap();
            let whole = model.features_of_pass(&images, 1).unwrap();
            let passes = model.features(&images).unwrap();
            let difference = max_abs_diff(&passes, &whole);
            assert!(difference < 1e-5, "{level}: {difference}");
        }
    }
}
