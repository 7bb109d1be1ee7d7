//! One MobileNetV2 block (1x1 expansion, depthwise convolution, 1x1 projection, residual) run
//! in strips of output rows, so that the expanded activation never leaves the L2 cache.
//!
//! Layer by layer, the early blocks write their six-times-wider expansion to memory and read
//! it back for the depthwise convolution: 4.8 MB per 224 image in the second block, which made
//! that block's expansion bound by memory, at a third of the arithmetic rate of the narrow
//! late layers. In strips, each strip expands only the input rows its outputs need (the rows
//! shared with the neighbouring strip are expanded twice), convolves them and projects the
//! result before the next strip starts.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use simd::gemm::{self, Weights};
use simd::{team, Level};

use crate::depthwise;
use crate::ops::{contiguous_f32, Activation, ConvGeometry, Plan};

/// Expanded activation per strip, in bytes: about one core's L2. Smaller strips gain less
/// (the second block's strips become one output row, expanding three input rows for two);
/// a 14x14 or 7x7 layer is one strip.
const STRIP_BYTES: usize = 512 << 10;

/// Fewest output rows in a strip cut only to give each thread one: with fewer, the input rows
/// two strips share and both expand cost more than the split saves (a 7x7 block in strips of
/// 4 and 3 rows measured slower; 14x14 and 28x28 blocks in two strips faster at batch 1 than
/// each layer split between the threads).
const MIN_SHARED_STRIP_ROWS: usize = 6;

/// The block's weights; the input `x` (N, H, W, Cin) and the depthwise weight (K, K, C) and
/// bias (C) are the op's tensors.
struct InvertedResidual<'a> {
    level: Level,
    expand: Option<&'a Weights>,
    depthwise: ConvGeometry,
    project: &'a Weights,
    residual: bool,
    min_strips: usize,
}

impl CustomOp3 for InvertedResidual<'_> {
    fn name(&self) -> &'static str {
        "inverted-residual-nhwc"
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
        let &[batch, height, width, inputs] = xl.dims() else {
            candle_core::bail!("block: expected an NHWC tensor, got shape {:?}", xl.dims())
        };
        let channels = self.expand.map_or(inputs, Weights::outputs);
        let k = self.depthwise.kernel;
        if self.expand.is_some_and(|e| e.inputs() != inputs)
            || wl.dims() != [k, k, channels]
            || bl.dims() != [channels]
            || self.project.inputs() != channels
        {
            candle_core::bail!(
                "block: input {:?}, depthwise weight {:?} and bias {:?} do not fit the 1x1 weights",
                xl.dims(),
                wl.dims(),
                bl.dims()
            )
        }
        let plan = self.depthwise.plan(&[batch, height, width, channels])?;
        let outputs = self.project.outputs();
        if outputs == 0 {
            candle_core::bail!("block: the projection has no output channels")
        }
        if self.residual && (plan.out_height, plan.out_width, outputs) != (height, width, inputs) {
            candle_core::bail!(
                "block: a residual needs the output shape of the input {:?}",
                xl.dims()
            )
        }
        let x = contiguous_f32(xs, xl, "block input")?;
        let w = contiguous_f32(ws, wl, "depthwise weight")?;
        let b = contiguous_f32(bs, bl, "depthwise bias")?;

        let stride = self.depthwise.stride;
        let row_bytes = width * channels * std::mem::size_of::<f32>();
        let strip_rows =
            ((STRIP_BYTES / row_bytes.max(1)).saturating_sub(k) / stride + 1).min(plan.out_height);
        let mut strips_per_image = plan.out_height.div_ceil(strip_rows.max(1));
        if plan.out_height.div_ceil(self.min_strips.max(1)) >= MIN_SHARED_STRIP_ROWS {
            // Cut for the threads: a multiple of them, so that none is left to finish a last
            // strip alone.
            strips_per_image = strips_per_image.next_multiple_of(self.min_strips.max(1));
        }
        let out_row = plan.out_width * outputs;
        let image_len = height * width * inputs;
        let zeros = vec![0f32; width * channels];
        let mut out: Vec<f32> = Vec::with_capacity(batch * plan.out_height * out_row);
        // Every strip of every image, each a task: (image, its first output row, its rows).
        let mut strips: Vec<(usize, usize, &mut [MaybeUninit<f32>])> = out.spare_capacity_mut()
            [..batch * plan.out_height * out_row]
            .chunks_mut((plan.out_height * out_row).max(1))
            .enumerate()
            .flat_map(|(n, image_out)| {
                even_strips(image_out, plan.out_height, strips_per_image, out_row)
                    .map(move |(first, dst)| (n, first, dst))
            })
            .collect();
        team::for_each_mut(&mut strips, |(n, first, dst)| {
            let image = &x[*n * image_len..][..image_len];
            self.strip(&plan, image, w, b, &zeros, *first, dst.len() / out_row, dst);
        });
        // SAFETY: every strip of every image wrote all of its rows.
        unsafe { out.set_len(batch * plan.out_height * out_row) };
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, plan.out_height, plan.out_width, outputs)),
        ))
    }
}

/// `image_out` (`rows` rows of `row_len`) cut into `strips` strips as even as the rows allow,
/// each with its first row.
fn even_strips<T>(
    mut image_out: &mut [T],
    rows: usize,
    strips: usize,
    row_len: usize,
) -> impl Iterator<Item = (usize, &mut [T])> {
    let strips = strips.clamp(1, rows.max(1));
    (0..strips).map(move |strip| {
        let (first, end) = (strip * rows / strips, (strip + 1) * rows / strips);
        let (dst, rest) = std::mem::take(&mut image_out).split_at_mut((end - first) * row_len);
        image_out = rest;
        (first, dst)
    })
}

impl InvertedResidual<'_> {
    /// Output rows `first..first + rows` of one image (H x W x Cin) into `dst`.
    #[allow(clippy::too_many_arguments)]
    fn strip(
        &self,
        plan: &Plan,
        image: &[f32],
        w: &[f32],
        b: &[f32],
        zeros: &[f32],
        first: usize,
        rows: usize,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let (k, stride) = (self.depthwise.kernel, self.depthwise.stride);
        let (width, inputs) = (plan.width, image.len() / (plan.height * plan.width));
        // The input rows the strip's outputs read, clipped to the image: the rest is padding.
        let top = (first * stride).saturating_sub(plan.pad_top);
        let bottom = ((first + rows - 1) * stride + k)
            .saturating_sub(plan.pad_top)
            .min(plan.height);
        let input = &image[top * width * inputs..bottom * width * inputs];
        let expanded = match self.expand {
            Some(expand) => Cow::Owned(gemm::product(
                input,
                (bottom - top) * width,
                expand,
                Activation::Relu6,
                None,
            )),
            None => Cow::Borrowed(input),
        };
        // The strip as an image of its own: its first output row reads from `pad_top` rows
        // above its first input row, which is padding only at the top of the real image.
        let strip_plan = Plan {
            batch: 1,
            height: bottom - top,
            width,
            channels: plan.channels,
            out_height: rows,
            out_width: plan.out_width,
            pad_top: plan.pad_top + top - first * stride,
            pad_left: plan.pad_left,
        };
        let dw_row = plan.out_width * plan.channels;
        let mut convolved: Vec<f32> = Vec::with_capacity(rows * dw_row);
        // Rows in parallel: a 14x14 or 7x7 block is one strip, which one image at a time
        // would otherwise convolve on one thread.
        team::for_each_chunk_mut(
            &mut convolved.spare_capacity_mut()[..rows * dw_row],
            dw_row,
            |oy, out| {
                depthwise::row(
                    self.level,
                    self.depthwise,
                    Activation::Relu6,
                    &strip_plan,
                    &expanded,
                    zeros,
                    w,
                    b,
                    oy,
                    out,
                );
            },
        );
        // SAFETY: `depthwise::row` wrote every value of every row.
        unsafe { convolved.set_len(rows * dw_row) };
        let residual = self
            .residual
            .then(|| &image[first * width * inputs..(first + rows) * width * inputs]);
        gemm::product_into(
            &convolved,
            rows * plan.out_width,
            self.project,
            Activation::Identity,
            residual,
            dst,
        );
    }
}

/// `project(relu6(depthwise(relu6(expand(x))))) (+ x)` for `x` (N, H, W, Cin): one MobileNetV2
/// block, with the depthwise `weight` (K, K, C) and `bias` (C); without `expand`, C is Cin.
/// `min_strips` > 1 cuts each image into at least that many strips where they keep
/// [`MIN_SHARED_STRIP_ROWS`] rows each: for a lone image, one strip per thread, each thread
/// then expanding, convolving and projecting its own rows. Where other images keep the
/// threads busy, 1 spares expanding the shared rows twice.
#[allow(clippy::too_many_arguments)]
pub fn inverted_residual(
    level: Level,
    x: &Tensor,
    expand: Option<&Weights>,
    weight: &Tensor,
    bias: &Tensor,
    depthwise: ConvGeometry,
    project: &Weights,
    residual: bool,
    min_strips: usize,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        weight,
        bias,
        &InvertedResidual {
            level,
            expand,
            depthwise,
            project,
            residual,
            min_strips,
        },
    )
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::ops::{self, Padding};
    use crate::test_values::{max_abs_diff, values};

    /// Blocks cut into several strips (200 pixels wide, 96 channels: four or fewer output rows
    /// per strip), or into narrow images' halves, with and without expansion and residual,
    /// strides 1 and 2, kernels 3 and 5, both paddings: equal to the block run layer by layer.
    #[test]
    fn strips_equal_the_block_layer_by_layer() {
        let dev = Device::Cpu;
        let cases = [
            // (height, width, inputs, channels, outputs, kernel, stride, padding, expand, residual)
            (13, 200, 16, 96, 16, 3, 1, Padding::Symmetric, true, true),
            (13, 200, 16, 96, 24, 3, 2, Padding::Symmetric, true, false),
            (12, 200, 24, 96, 24, 3, 2, Padding::TfSame, true, false),
            (11, 200, 96, 96, 32, 3, 1, Padding::Symmetric, false, false),
            (9, 200, 8, 96, 8, 5, 1, Padding::Symmetric, true, true),
            (3, 200, 8, 96, 8, 3, 2, Padding::Symmetric, true, false),
            // Narrow: one strip, or two of 7 and 6 rows for two threads.
            (13, 14, 8, 24, 8, 3, 1, Padding::Symmetric, true, true),
        ];
        for (i, &(height, width, inputs, channels, outputs, k, stride, padding, expand, residual)) in
            cases.iter().enumerate()
        {
            let seed = 10 * i as u64;
            for level in Level::supported() {
                let x = Tensor::from_vec(
                    values(2 * height * width * inputs, seed),
                    (2, height, width, inputs),
                    &dev,
                )
                .unwrap();
                let expand = expand.then(|| {
                    Weights::pack(
                        level,
                        &values(inputs * channels, seed + 1),
                        &values(channels, seed + 2),
                        inputs,
                        channels,
                    )
                });
                let weight =
                    Tensor::from_vec(values(k * k * channels, seed + 3), (k, k, channels), &dev).unwrap();
                let bias = Tensor::from_vec(values(channels, seed + 4), channels, &dev).unwrap();
                let project = Weights::pack(
                    level,
                    &values(channels * outputs, seed + 5),
                    &values(outputs, seed + 6),
                    channels,
                    outputs,
                );
                let geometry = ConvGeometry {
                    kernel: k,
                    stride,
                    padding,
                };
                let pointwise = ConvGeometry {
                    kernel: 1,
                    stride: 1,
                    padding: Padding::Symmetric,
                };

                let h = match &expand {
                    Some(expand) => ops::conv2d(&x, expand, pointwise, Activation::Relu6, None).unwrap(),
                    None => x.clone(),
                };
                let h = ops::depthwise_conv(level, &h, &weight, &bias, geometry, Activation::Relu6).unwrap();
                let want = ops::conv2d(
                    &h,
                    &project,
                    pointwise,
                    Activation::Identity,
                    residual.then_some(&x),
                )
                .unwrap();
                for min_strips in [1, 2] {
                    let got = inverted_residual(
                        level,
                        &x,
                        expand.as_ref(),
                        &weight,
                        &bias,
                        geometry,
                        &project,
                        residual,
                        min_strips,
                    )
                    .unwrap();
                    let difference = max_abs_diff(&got, &want);
                    assert!(
                        difference < 1e-4,
                        "{level}, case {i}, {min_strips} strips at least: {difference}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_residual_needs_the_input_shape() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 4, 8), candle_core::DType::F32, &dev).unwrap();
        let weight = Tensor::zeros((3, 3, 8), candle_core::DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(8, candle_core::DType::F32, &dev).unwrap();
        let project = Weights::pack(simd::level(), &[0.0; 8 * 8], &[0.0; 8], 8, 8);
        let geometry = ConvGeometry {
            kernel: 3,
            stride: 2,
            padding: Padding::Symmetric,
        };
        let error = inverted_residual(
            simd::level(),
            &x,
            None,
            &weight,
            &bias,
            geometry,
            &project,
            true,
            1,
        )
        .unwrap_err();
        assert!(error.to_string().contains("residual"), "{error}");
    }
}
