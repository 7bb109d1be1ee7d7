//! MobileNetV2 in timm's tensor layout (`mobilenetv2_100` and every other width or depth
//! multiplier: channel counts and block counts are read from the weights, not assumed).
//!
//! BatchNorm is folded into the preceding convolution at load, and weights are stored in the
//! layouts the NHWC kernels of [`crate::ops`] read, so a forward pass is a chain of matrix
//! products and depthwise kernels with fused bias and ReLU6.

use std::collections::BTreeMap;

use candle_core::{DType, Module, Tensor};
use rayon::prelude::*;

use crate::gemm::PackedWeights;
use crate::ops::{self, Activation, ConvGeometry, Padding};
use crate::VisionError;

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

/// A convolution's weights with its BatchNorm folded in, in the layout its kernel reads.
#[derive(Debug)]
enum Weights {
    /// (K * K * Cin, Cout), packed.
    Dense(PackedWeights),
    /// (K, K, C) and (C).
    Depthwise { weight: Tensor, bias: Tensor },
}

/// A convolution with its BatchNorm folded in.
#[derive(Debug)]
struct FoldedConv {
    weights: Weights,
    geometry: ConvGeometry,
}

impl FoldedConv {
    /// `activation(conv(x)) + residual`; only dense convolutions take a residual.
    fn forward(
        &self,
        x: &Tensor,
        activation: Activation,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        match &self.weights {
            Weights::Dense(weights) => ops::conv2d(x, weights, self.geometry, activation, residual),
            Weights::Depthwise { weight, bias } => {
                debug_assert!(residual.is_none());
                ops::depthwise_conv(x, weight, bias, self.geometry, activation)
            }
        }
    }

    fn out_channels(&self) -> usize {
        match &self.weights {
            Weights::Dense(weights) => weights.outputs(),
            Weights::Depthwise { bias, .. } => bias.dims()[0],
        }
    }
}

/// One block: timm's `DepthwiseSeparableConv` (no expansion) or `InvertedResidual`.
#[derive(Debug)]
struct Block {
    expand: Option<FoldedConv>,
    depthwise: FoldedConv,
    project: FoldedConv,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = match &self.expand {
            Some(expand) => expand.forward(x, Activation::Relu6, None)?,
            None => x.clone(),
        };
        let h = self.depthwise.forward(&h, Activation::Relu6, None)?;
        self.project
            .forward(&h, Activation::Identity, self.residual.then_some(x))
    }
}

/// Values of the largest activation per input pixel: each convolution's output channels over
/// the square of the stride accumulated up to it.
fn widest_per_pixel(stem: &FoldedConv, blocks: &[Block], head: &FoldedConv) -> usize {
    let mut stride = stem.geometry.stride;
    let mut widest = stem.out_channels() / (stride * stride);
    for block in blocks {
        if let Some(expand) = &block.expand {
            widest = widest.max(expand.out_channels() / (stride * stride));
        }
        stride *= block.depthwise.geometry.stride;
        widest = widest.max(block.project.out_channels() / (stride * stride));
    }
    widest.max(head.out_channels() / (stride * stride)).max(1)
}

/// A MobileNetV2 backbone with its classifier.
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: FoldedConv,
    blocks: Vec<Block>,
    head: FoldedConv,
    /// The final linear layer, (features, classes).
    classifier: Option<PackedWeights>,
    /// Values of the largest activation per input pixel (24 for MobileNetV2 1.0: the first
    /// expansion, 96 channels at half resolution).
    widest_per_pixel: usize,
}

/// Largest activation of one forward pass, in bytes: a layer's input and output then stay in
/// the last-level cache, where the memory-bound depthwise layers run fastest (batch 32 at 224
/// ran at 13.3 ms per image in passes of 4 images, 20 MiB, and at 10.2 in passes of one).
/// Running the narrow late layers in larger passes than the early ones, for larger products,
/// measured 10-20% slower at batch 16, whether or not freed memory was kept for reuse.
const PASS_BYTES: usize = 6 << 20;

impl MobileNetV2 {
    /// Builds the network from timm-layout tensors (`conv_stem`, `bn1`, `blocks.S.B.*`,
    /// `conv_head`, `bn2`, `classifier`). The classifier is optional: a backbone-only file
    /// answers features.
    pub fn from_tensors(tensors: &BTreeMap<String, Tensor>, arch: Architecture) -> Result<Self, VisionError> {
        let loader = Loader { tensors, arch };
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
                let out = block.project.out_channels();
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
                let bias = loader.get("classifier.bias")?;
                let (classes, features) = weight.dims2()?;
                if features != head.out_channels() || bias.dims() != [classes] {
                    return Err(VisionError::Weights(format!(
                        "classifier {:?} does not fit {} features",
                        weight.dims(),
                        head.out_channels()
                    )));
                }
                Some(pack(&weight.t()?, bias)?)
            }
            None => None,
        };
        let widest_per_pixel = widest_per_pixel(&stem, &blocks, &head);
        Ok(Self {
            stem,
            blocks,
            head,
            classifier,
            widest_per_pixel,
        })
    }

    /// Length of the pooled feature vector.
    pub fn feature_dim(&self) -> usize {
        self.head.out_channels()
    }

    /// Number of classes of the classifier, if there is one.
    pub fn num_classes(&self) -> Option<usize> {
        self.classifier.as_ref().map(PackedWeights::outputs)
    }

    /// Pooled features (batch, feature_dim) of normalised images (batch, height, width, 3).
    /// A large batch runs as several passes of as many images as keep every activation within
    /// [`PASS_BYTES`].
    pub fn features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let (_, height, width, _) = images.dims4()?;
        let per_image = height * width * self.widest_per_pixel * std::mem::size_of::<f32>();
        let per_pass = (PASS_BYTES / per_image.max(1)).max(1);
        // On a rayon worker, each layer's parallel loop starts inside the pool; from outside,
        // every one of the 60 layers would put this thread to sleep and wake it again (the
        // scheduler took 10% of a batch-1 pass, 4.6% this way).
        rayon::scope(|_| self.features_in_passes(images, per_pass))
    }

    fn features_in_passes(&self, images: &Tensor, per_pass: usize) -> candle_core::Result<Tensor> {
        let batch = images.dim(0)?;
        if batch <= per_pass {
            return self.features_of_pass(images);
        }
        // Passes run side by side: each thread mostly works through its own pass, and the
        // layers' parallel loops split only to balance the ends (batch 32: 5-10% faster than
        // one pass after another, each split across both threads).
        let starts: Vec<usize> = (0..batch).step_by(per_pass).collect();
        let passes = starts
            .into_par_iter()
            .map(|start| self.features_of_pass(&images.narrow(0, start, per_pass.min(batch - start))?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&passes, 0)
    }

    fn features_of_pass(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.stem.forward(images, Activation::Relu6, None)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.head.forward(&x, Activation::Relu6, None)?;
        ops::global_average_pool(&x)
    }

    /// Logits (batch, classes) of normalised images (batch, height, width, 3).
    pub fn logits(&self, images: &Tensor) -> Result<Tensor, VisionError> {
        let features = self.features(images)?;
        self.classify_features(&features)
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

/// Packs a (in, out) weight matrix and its bias for [`ops::conv2d`] and [`ops::linear`].
fn pack(weight: &Tensor, bias: &Tensor) -> Result<PackedWeights, VisionError> {
    let (inputs, outputs) = weight.dims2()?;
    let weight = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(PackedWeights::pack(&weight, &bias, inputs, outputs))
}

struct Loader<'a> {
    tensors: &'a BTreeMap<String, Tensor>,
    arch: Architecture,
}

impl Loader<'_> {
    fn get(&self, name: &str) -> Result<&Tensor, VisionError> {
        self.tensors
            .get(name)
            .ok_or_else(|| VisionError::Weights(format!("missing tensor `{name}`")))
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
        let weight = weight.broadcast_mul(&scale.reshape((out_channels, 1, 1, 1))?)?;
        let weight = weight
            .permute((2, 3, 1, 0))?
            .reshape((kh * kw * in_channels, out_channels))?;
        let padding = if kh == 1 {
            Padding::Symmetric
        } else {
            self.arch.padding
        };
        Ok(FoldedConv {
            weights: Weights::Dense(pack(&weight, &shift)?),
            geometry: ConvGeometry {
                kernel: kh,
                stride,
                padding,
            },
        })
    }

    /// A depthwise convolution `{conv}.weight` (C, 1, K, K) folded with BatchNorm `{bn}`.
    fn depthwise(&self, conv: &str, bn: &str, stride: usize) -> Result<FoldedConv, VisionError> {
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
        Ok(FoldedConv {
            weights: Weights::Depthwise { weight, bias: shift },
            geometry,
        })
    }

    fn block(&self, prefix: &str, stride: usize) -> Result<Block, VisionError> {
        if self.tensors.contains_key(&format!("{prefix}.conv_pwl.weight")) {
            Ok(Block {
                expand: Some(self.dense(&format!("{prefix}.conv_pw"), &format!("{prefix}.bn1"), 1)?),
                depthwise: self.depthwise(&format!("{prefix}.conv_dw"), &format!("{prefix}.bn2"), stride)?,
                project: self.dense(&format!("{prefix}.conv_pwl"), &format!("{prefix}.bn3"), 1)?,
                residual: false,
            })
        } else {
            Ok(Block {
                expand: None,
                depthwise: self.depthwise(&format!("{prefix}.conv_dw"), &format!("{prefix}.bn1"), stride)?,
                project: self.dense(&format!("{prefix}.conv_pw"), &format!("{prefix}.bn2"), 1)?,
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

    /// A batch run in passes of two gives the features of one pass over all of it.
    #[test]
    fn passes_give_the_features_of_one_pass() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mobilenetv2-tiny");
        let tensors = hub::load_safetensors(&fixture.join("model.safetensors")).unwrap();
        let model = MobileNetV2::from_tensors(&tensors, Architecture::default()).unwrap();
        let images = Tensor::rand(-1f32, 1f32, (5, 64, 48, 3), &Device::Cpu).unwrap();
        let whole = model.features_in_passes(&images, 5).unwrap();
        let passes = model.features_in_passes(&images, 2).unwrap();
        assert_eq!(passes.dims(), whole.dims());
        let difference: f32 = (passes - whole)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(difference < 1e-5, "{difference}");
    }
}
