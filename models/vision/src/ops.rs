//! Direct CPU kernels for the convolutions MobileNetV2 spends its time in, as candle custom ops.
//!
//! Activations are NHWC (batch, height, width, channels), so a 1x1 convolution is one matrix
//! product over all pixels of the batch and the depthwise kernel's inner loop runs along
//! contiguous channels. Candle's own grouped convolution runs one small convolution per channel
//! (about 7,000 per MobileNetV2 image), which is what these kernels replace.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

pub use simd::gemm::Activation;
use simd::gemm::{self, Weights};
use simd::{dispatch, team, F32x, Kernel, Level};

use crate::depthwise;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// `kernel / 2` on every side (PyTorch, timm, torchvision).
    Symmetric,
    /// TensorFlow's "same": the output is `ceil(input / stride)` and an odd total padding puts
    /// the extra row and column at the bottom and right (Keras).
    TfSame,
}

impl Padding {
    /// Output size and padding before the first element, along one spatial axis.
    pub fn output_and_pad_before(self, input: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Symmetric => {
                let pad = kernel / 2;
                ((input + 2 * pad - kernel) / stride + 1, pad)
            }
            Padding::TfSame => {
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(input);
                (out, total / 2)
            }
        }
    }
}

/// Geometry of a square-kernel convolution over an NHWC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
}

/// A convolution's sizes for one input shape.
pub(crate) struct Plan {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub out_height: usize,
    pub out_width: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Plan {
    /// The kernel taps that fall inside the image for output pixel (`oy`, `ox`), as
    /// (tap index `ky * K + kx`, input pixel index `iy * W + ix`); padding taps are skipped.
    pub fn taps(
        &self,
        geometry: ConvGeometry,
        oy: usize,
        ox: usize,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (k, s) = (geometry.kernel, geometry.stride);
        let rows = (0..k).filter_map(move |ky| {
            let iy = (oy * s + ky)
                .checked_sub(self.pad_top)
                .filter(|&iy| iy < self.height)?;
            Some((ky, iy))
        });
        rows.flat_map(move |(ky, iy)| {
            (0..k).filter_map(move |kx| {
                let ix = (ox * s + kx)
                    .checked_sub(self.pad_left)
                    .filter(|&ix| ix < self.width)?;
                Some((ky * k + kx, iy * self.width + ix))
            })
        })
    }
}

impl ConvGeometry {
    pub(crate) fn plan(&self, dims: &[usize]) -> candle_core::Result<Plan> {
        let &[batch, height, width, channels] = dims else {
            candle_core::bail!("expected an NHWC tensor, got shape {dims:?}")
        };
        if height == 0 || width == 0 {
            candle_core::bail!("empty spatial input {dims:?}")
        }
        let (out_height, pad_top) = self
            .padding
            .output_and_pad_before(height, self.kernel, self.stride);
        let (out_width, pad_left) = self
            .padding
            .output_and_pad_before(width, self.kernel, self.stride);
        Ok(Plan {
            batch,
            height,
            width,
            channels,
            out_height,
            out_width,
            pad_top,
            pad_left,
        })
    }
}

pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: only f32 is supported, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Depthwise convolution with bias and activation: `x` (N, H, W, C), weight (K, K, C), bias (C).
pub struct DepthwiseConv {
    pub level: Level,
    pub geometry: ConvGeometry,
    pub activation: Activation,
}

impl CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv-nhwc"
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
        let plan = self.geometry.plan(xl.dims())?;
        let k = self.geometry.kernel;
        let c = plan.channels;
        if wl.dims() != [k, k, c] || bl.dims() != [c] {
            candle_core::bail!(
                "depthwise: weight {:?} / bias {:?} do not match kernel {k} and {c} channels",
                wl.dims(),
                bl.dims()
            )
        }
        let x = contiguous_f32(xs, xl, "depthwise input")?;
        let w = contiguous_f32(ws, wl, "depthwise weight")?;
        let b = contiguous_f32(bs, bl, "depthwise bias")?;
        let image_len = plan.height * plan.width * c;
        let row_len = plan.out_width * c;
        let len = plan.batch * plan.out_height * row_len;
        let zeros = vec![0f32; plan.width * c];
        let mut out: Vec<f32> = Vec::with_capacity(len);
        out.spare_capacity_mut()
            .par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(row, out_row)| {
                let (n, oy) = (row / plan.out_height, row % plan.out_height);
                let image = &x[n * image_len..][..image_len];
                depthwise::row(
                    self.level,
                    self.geometry,
                    self.activation,
                    &plan,
                    image,
                    &zeros,
                    w,
                    b,
                    oy,
                    out_row,
                );
            });
        // SAFETY: `depthwise::row` wrote every value of every row.
        unsafe { out.set_len(len) };
        let shape = Shape::from((plan.batch, plan.out_height, plan.out_width, c));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Output rows of an image per chunk of a dense convolution: the chunk's patches (a stem's
/// four rows of 112 pixels: 48 KiB) stay in the core's cache between being unfolded and being
/// multiplied, and a lone image still gives each thread several chunks to balance.
const PATCH_CHUNK_ROWS: usize = 4;

/// A dense KxK convolution of `x` (N, H, W, C) as matrix products: each chunk of output rows
/// unfolds its patches (K * K * C values per output pixel, taps ordered (ky, kx, c), zeros in
/// the padding) and multiplies them by the packed weights before the next chunk starts.
/// Unfolding the whole image first wrote and read back a buffer nine times the image's size.
struct DenseConv<'a> {
    weights: &'a Weights,
    geometry: ConvGeometry,
    activation: Activation,
}

impl CustomOp1 for DenseConv<'_> {
    fn name(&self) -> &'static str {
        "dense-conv-nhwc"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let plan = self.geometry.plan(xl.dims())?;
        let patch = self.geometry.kernel * self.geometry.kernel * plan.channels;
        if self.weights.inputs() != patch {
            candle_core::bail!(
                "conv: input {:?} needs {patch} weight inputs for a {k}x{k} kernel, the weights have {}",
                xl.dims(),
                self.weights.inputs(),
                k = self.geometry.kernel
            )
        }
        let x = contiguous_f32(xs, xl, "conv input")?;
        let n = self.weights.outputs();
        let row_out = plan.out_width * n;
        let len = plan.batch * plan.out_height * row_out;
        let image_len = plan.height * plan.width * plan.channels;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let chunk_len = (PATCH_CHUNK_ROWS * row_out).max(1);
        team::for_each_chunk_mut(&mut out.spare_capacity_mut()[..len], chunk_len, |chunk, dst| {
            let rows = dst.len() / row_out.max(1);
            let mut patches = vec![0f32; rows * plan.out_width * patch];
            for (i, dst) in patches
                .chunks_exact_mut((plan.out_width * patch).max(1))
                .enumerate()
            {
                let row = chunk * PATCH_CHUNK_ROWS + i;
                let (image, oy) = (row / plan.out_height, row % plan.out_height);
                unfold_row(
                    self.geometry,
                    &plan,
                    &x[image * image_len..][..image_len],
                    oy,
                    dst,
                );
            }
            gemm::product_into(
                &patches,
                rows * plan.out_width,
                self.weights,
                self.activation,
                None,
                dst,
            );
        });
        // SAFETY: every chunk's product wrote all of its rows.
        unsafe { out.set_len(len) };
        Ok((
            CpuStorage::F32(out),
            Shape::from((plan.batch, plan.out_height, plan.out_width, n)),
        ))
    }
}

/// The patches of output row `oy` of one image (H x W x C) into `dst` (OW x K * K * C), which
/// holds zeros: inside the image each kernel row is one contiguous run of K pixels in NHWC,
/// copied at once; taps in the padding are left zero.
fn unfold_row(geometry: ConvGeometry, plan: &Plan, image: &[f32], oy: usize, dst: &mut [f32]) {
    // The stem's runs, three RGB pixels, get a copy of a length known when compiling: a few
    // moves inline, where a call to `memcpy` per run (three per output pixel) cost more than
    // the stem's arithmetic.
    const STEM_RUN: usize = 3 * 3;
    if geometry.kernel * plan.channels == STEM_RUN {
        unfold_row_in_runs_of::<STEM_RUN>(geometry, plan, image, oy, dst);
    } else {
        unfold_row_in_runs_of::<0>(geometry, plan, image, oy, dst);
    }
}

/// [`unfold_row`], its runs `RUN` floats long (0: any length).
fn unfold_row_in_runs_of<const RUN: usize>(
    geometry: ConvGeometry,
    plan: &Plan,
    image: &[f32],
    oy: usize,
    dst: &mut [f32],
) {
    let (k, c, s) = (geometry.kernel, plan.channels, geometry.stride);
    let run = if RUN > 0 { RUN } else { k * c };
    let (height, width) = (plan.height, plan.width);
    for (ox, dst) in dst.chunks_exact_mut(k * run).enumerate() {
        for (ky, dst) in dst.chunks_exact_mut(run).enumerate() {
            let Some(iy) = (oy * s + ky).checked_sub(plan.pad_top).filter(|&iy| iy < height) else {
                continue;
            };
            let line = &image[iy * width * c..][..width * c];
            match (ox * s).checked_sub(plan.pad_left) {
                Some(ix) if ix + k <= width => dst.copy_from_slice(&line[ix * c..][..run]),
                _ => {
                    for (kx, dst) in dst.chunks_exact_mut(c).enumerate() {
                        if let Some(ix) = (ox * s + kx).checked_sub(plan.pad_left).filter(|&ix| ix < width) {
                            dst.copy_from_slice(&line[ix * c..][..c]);
                        }
                    }
                }
            }
        }
    }
}

/// Mean over the pixels of each image: `x` (N, H, W, C) becomes (N, C).
struct GlobalAveragePool {
    level: Level,
}

impl CustomOp1 for GlobalAveragePool {
    fn name(&self) -> &'static str {
        "global-average-pool-nhwc"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[batch, height, width, c] = xl.dims() else {
            candle_core::bail!("pooling: expected an NHWC tensor, got shape {:?}", xl.dims())
        };
        let x = contiguous_f32(xs, xl, "pooling input")?;
        let pixels = height * width;
        let mut out = vec![0f32; batch * c];
        if pixels > 0 && c > 0 {
            out.par_chunks_mut(c)
                .zip(x.par_chunks(pixels * c))
                .for_each(|(means, image)| dispatch(self.level, PixelMeans { image, means }));
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, c))))
    }
}

/// The mean of one image's pixels (`image`: pixels x C) into `means` (C).
struct PixelMeans<'a> {
    image: &'a [f32],
    means: &'a mut [f32],
}

impl Kernel for PixelMeans<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let c = self.means.len();
        let pixels = self.image.len() / c;
        let scale = 1.0 / pixels as f32;
        for cb in (0..c).step_by(V::LANES) {
            let lanes = V::LANES.min(c - cb);
            // SAFETY: the level's instructions (the trait's contract); each read is `lanes`
            // channels from `cb` of a pixel, each write `lanes` means from `cb`.
            unsafe {
                let mut sum = V::zero();
                for pixel in 0..pixels {
                    sum = sum.add(V::load_part(self.image.as_ptr().add(pixel * c + cb), lanes));
                }
                sum.mul(V::splat(scale))
                    .store_part(self.means.as_mut_ptr().add(cb), lanes);
            }
        }
    }
}

/// Mean over the pixels of each image of `x` (N, H, W, C), answering (N, C).
pub fn global_average_pool(level: Level, x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GlobalAveragePool { level })
}

/// A 1x1 convolution or a linear layer: the rows of `x` (.., in) times packed
/// weights, with bias and activation, plus the residual when the op is applied to two tensors.
struct Pointwise<'a> {
    weights: &'a Weights,
    activation: Activation,
}

impl Pointwise<'_> {
    fn run(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "pointwise input")?;
        let inputs = self.weights.inputs();
        let Some((&last, leading)) = xl.dims().split_last() else {
            candle_core::bail!("pointwise: scalar input")
        };
        if last != inputs {
            candle_core::bail!("pointwise: input {:?} does not have {inputs} channels", xl.dims())
        }
        let rows = leading.iter().product();
        let out = gemm::product(x, rows, self.weights, self.activation, residual);
        let mut dims = leading.to_vec();
        dims.push(self.weights.outputs());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

impl CustomOp1 for Pointwise<'_> {
    fn name(&self) -> &'static str {
        "pointwise-conv"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(xs, xl, None)
    }
}

impl CustomOp2 for Pointwise<'_> {
    fn name(&self) -> &'static str {
        "pointwise-conv-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let residual = contiguous_f32(rs, rl, "residual")?;
        let output_dims = xl
            .dims()
            .split_last()
            .map(|(_, leading)| [leading, &[self.weights.outputs()]].concat());
        if output_dims.as_deref() != Some(rl.dims()) {
            candle_core::bail!(
                "pointwise: residual {:?} does not match the output {output_dims:?}",
                rl.dims()
            )
        }
        self.run(xs, xl, Some(residual))
    }
}

/// `activation(x @ weight + bias)` for the rows of `x` (.., in), answering (.., out).
pub fn linear(x: &Tensor, weights: &Weights, activation: Activation) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op1_no_bwd(&Pointwise { weights, activation })
}

/// Depthwise convolution of `x` (N, H, W, C) with `weight` (K, K, C) and `bias` (C).
pub fn depthwise_conv(
    level: Level,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
    activation: Activation,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        weight,
        bias,
        &DepthwiseConv {
            level,
            geometry,
            activation,
        },
    )
}

/// Dense convolution of `x` (N, H, W, Cin) with packed weights (K * K * Cin, Cout), taps
/// ordered (ky, kx, c), answering `activation(conv + bias) + residual` (N, OH, OW, Cout).
pub fn conv2d(
    x: &Tensor,
    weights: &Weights,
    geometry: ConvGeometry,
    activation: Activation,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    if geometry.kernel != 1 || geometry.stride != 1 {
        let y = x.apply_op1_no_bwd(&DenseConv {
            weights,
            geometry,
            activation,
        })?;
        return match residual {
            Some(residual) if residual.dims() != y.dims() => candle_core::bail!(
                "conv: residual {:?} does not match the output {:?}",
                residual.dims(),
                y.dims()
            ),
            Some(residual) => y + residual,
            None => Ok(y),
        };
    }
    let op = Pointwise { weights, activation };
    match residual {
        Some(residual) => x.apply_op2_no_bwd(&residual.contiguous()?, &op),
        None => x.apply_op1_no_bwd(&op),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::test_values::{max_abs_diff, values};

    /// Candle's own convolution on NCHW with explicit zero padding, as the reference.
    fn reference_conv(
        x_nhwc: &Tensor,
        weight_oihw: &Tensor,
        bias: &Tensor,
        geometry: ConvGeometry,
        groups: usize,
    ) -> Tensor {
        let (_, h, w, _) = x_nhwc.dims4().unwrap();
        let (k, s) = (geometry.kernel, geometry.stride);
        let (oh, top) = geometry.padding.output_and_pad_before(h, k, s);
        let (ow, left) = geometry.padding.output_and_pad_before(w, k, s);
        let bottom = ((oh - 1) * s + k).saturating_sub(h + top);
        let right = ((ow - 1) * s + k).saturating_sub(w + left);
        let x = x_nhwc.permute((0, 3, 1, 2)).unwrap();
        let x = x
            .pad_with_zeros(2, top, bottom)
            .unwrap()
            .pad_with_zeros(3, left, right)
            .unwrap();
        let y = x
            .contiguous()
            .unwrap()
            .conv2d(weight_oihw, 0, s, 1, groups)
            .unwrap();
        let y = y
            .broadcast_add(&bias.reshape((1, (), 1, 1)).unwrap())
            .unwrap()
            .clamp(0f32, 6f32)
            .unwrap();
        y.permute((0, 2, 3, 1)).unwrap()
    }

    const CASES: [(usize, usize, usize, usize, usize, Padding); 12] = [
        // (height, width, channels, kernel, stride, padding)
        (7, 9, 5, 3, 1, Padding::Symmetric),
        (8, 8, 16, 3, 2, Padding::Symmetric),
        (11, 6, 3, 3, 2, Padding::Symmetric),
        (11, 6, 3, 3, 2, Padding::TfSame),
        (10, 10, 8, 3, 2, Padding::TfSame),
        (9, 9, 4, 3, 1, Padding::TfSame),
        (13, 7, 6, 5, 2, Padding::TfSame),
        (5, 5, 2, 5, 1, Padding::Symmetric),
        (1, 1, 3, 3, 1, Padding::Symmetric),
        (6, 7, 13, 3, 1, Padding::Symmetric),
        (9, 8, 24, 3, 2, Padding::TfSame),
        (2, 3, 16, 3, 1, Padding::Symmetric),
    ];

    #[test]
    fn depthwise_matches_candle_grouped_conv() {
        let dev = Device::Cpu;
        for (i, &(h, w, c, k, stride, padding)) in CASES.iter().enumerate() {
            let geometry = ConvGeometry {
                kernel: k,
                stride,
                padding,
            };
            let x = Tensor::from_vec(values(2 * h * w * c, i as u64), (2, h, w, c), &dev).unwrap();
            let weight = Tensor::from_vec(values(c * k * k, 100 + i as u64), (c, 1, k, k), &dev).unwrap();
            let bias = Tensor::from_vec(values(c, 200 + i as u64), c, &dev).unwrap();
            let expected = reference_conv(&x, &weight, &bias, geometry, c);
            let kernel_weight = weight
                .reshape((c, k, k))
                .unwrap()
                .permute((1, 2, 0))
                .unwrap()
                .contiguous()
                .unwrap();
            for level in Level::supported() {
                let got =
                    depthwise_conv(level, &x, &kernel_weight, &bias, geometry, Activation::Relu6).unwrap();
                let diff = max_abs_diff(&got, &expected);
                assert!(
                    diff < 1e-5,
                    "{level}, case {i} {:?}: max difference {diff}",
                    CASES[i]
                );
            }
        }
    }

    /// Rows wide enough for every interior group and its leftovers, channels with and without
    /// a partial vector, both strides and paddings: the vector levels equal the portable loop.
    #[test]
    fn depthwise_levels_agree_on_wide_rows() {
        let dev = Device::Cpu;
        for (i, &(w, c, stride, padding)) in [
            (37, 32, 1, Padding::Symmetric),
            (40, 24, 2, Padding::TfSame),
            (29, 40, 2, Padding::Symmetric),
            (56, 144, 1, Padding::TfSame),
            (19, 8, 1, Padding::Symmetric),
        ]
        .iter()
        .enumerate()
        {
            let geometry = ConvGeometry {
                kernel: 3,
                stride,
                padding,
            };
            let x = Tensor::from_vec(values(5 * w * c, 10 + i as u64), (1, 5, w, c), &dev).unwrap();
            let weight = Tensor::from_vec(values(9 * c, 20 + i as u64), (3, 3, c), &dev).unwrap();
            let bias = Tensor::from_vec(values(c, 30 + i as u64), c, &dev).unwrap();
            let portable = depthwise_conv(
                Level::Portable,
                &x,
                &weight,
                &bias,
                geometry,
                Activation::Identity,
            )
            .unwrap();
            for level in Level::supported() {
                let got = depthwise_conv(level, &x, &weight, &bias, geometry, Activation::Identity).unwrap();
                let diff = max_abs_diff(&got, &portable);
                assert!(
                    diff < 1e-5,
                    "{level}, width {w}, {c} channels, stride {stride}: {diff}"
                );
            }
        }
    }

    #[test]
    fn dense_conv_matches_candle_conv() {
        let dev = Device::Cpu;
        for (i, &(h, w, c, k, stride, padding)) in CASES.iter().enumerate() {
            let out = 7;
            let geometry = ConvGeometry {
                kernel: k,
                stride,
                padding,
            };
            let x = Tensor::from_vec(values(2 * h * w * c, i as u64), (2, h, w, c), &dev).unwrap();
            let weight =
                Tensor::from_vec(values(out * c * k * k, 300 + i as u64), (out, c, k, k), &dev).unwrap();
            let bias = Tensor::from_vec(values(out, 400 + i as u64), out, &dev).unwrap();
            let expected = reference_conv(&x, &weight, &bias, geometry, 1);
            let kernel_weight = weight
                .permute((2, 3, 1, 0))
                .unwrap()
                .reshape((k * k * c, out))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let bias_values = bias.to_vec1::<f32>().unwrap();
            for level in Level::supported() {
                let packed = Weights::pack(level, &kernel_weight, &bias_values, k * k * c, out);
                let got = conv2d(&x, &packed, geometry, Activation::Relu6, None).unwrap();
                let diff = max_abs_diff(&got, &expected);
                assert!(
                    diff < 1e-5,
                    "{level}, case {i} {:?}: max difference {diff}",
                    CASES[i]
                );
            }
        }
    }

    /// A 1x1 and a 3x3 convolution: a residual of another shape is an error, one of the
    /// output's shape is added after the activation.
    #[test]
    fn a_residual_of_the_wrong_shape_is_an_error() {
        let x = Tensor::from_vec(values(2 * 3 * 4, 1), (1, 2, 3, 4), &Device::Cpu).unwrap();
        for kernel in [1, 3] {
            let inputs = kernel * kernel * 4;
            let weights = Weights::pack(simd::level(), &values(inputs * 5, 2), &values(5, 3), inputs, 5);
            let geometry = ConvGeometry {
                kernel,
                stride: 1,
                padding: Padding::Symmetric,
            };
            let wrong = Tensor::zeros((1, 2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
            let error = conv2d(&x, &weights, geometry, Activation::Relu6, Some(&wrong)).unwrap_err();
            assert!(
                error.to_string().contains("residual"),
                "{kernel}x{kernel}: {error}"
            );
            let right = Tensor::from_vec(values(2 * 3 * 5, 4), (1, 2, 3, 5), &Device::Cpu).unwrap();
            let with = conv2d(&x, &weights, geometry, Activation::Relu6, Some(&right)).unwrap();
            let without = conv2d(&x, &weights, geometry, Activation::Relu6, None).unwrap();
            let difference = max_abs_diff(&with, &(without + &right).unwrap());
            assert!(difference < 1e-6, "{kernel}x{kernel}: {difference}");
        }
    }

    #[test]
    fn global_average_pool_matches_candle_mean() {
        for c in [11, 16, 40] {
            let x = Tensor::from_vec(values(3 * 5 * 7 * c, 9), (3, 5, 7, c), &Device::Cpu).unwrap();
            for level in Level::supported() {
                let diff = max_abs_diff(&global_average_pool(level, &x).unwrap(), &x.mean((1, 2)).unwrap());
                assert!(diff < 1e-6, "{level}, {c} channels: max difference {diff}");
            }
        }
    }

    #[test]
    fn tf_same_puts_the_extra_padding_after() {
        assert_eq!(Padding::TfSame.output_and_pad_before(160, 3, 2), (80, 0));
        assert_eq!(Padding::TfSame.output_and_pad_before(7, 3, 2), (4, 1));
        assert_eq!(Padding::TfSame.output_and_pad_before(10, 3, 1), (10, 1));
        assert_eq!(Padding::Symmetric.output_and_pad_before(224, 3, 2), (112, 1));
    }
}
