//! Inner loops of the NHWC depthwise convolution, one output row at a time.
//!
//! A 3x3 kernel (every MobileNetV2) runs eight channels at a time with that block's nine taps
//! and bias held in registers while it sweeps the row, so each output vector costs nine loads
//! and nine fused multiply-adds; taps that fall in the padding read a row of zeros, so only the
//! image's edge columns take a slower path. Other kernel sizes, and channels past the last
//! multiple of eight, take the portable loop.

use std::mem::MaybeUninit;

use crate::ops::{Activation, ConvGeometry, Plan};

/// Computes output row `oy` of one image (`image`: H x W x C) into `out` (OW x C); `zeros`
/// is a row of W x C zeros, read where the kernel overlaps the padding.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    geometry: ConvGeometry,
    activation: Activation,
    plan: &Plan,
    image: &[f32],
    zeros: &[f32],
    w: &[f32],
    b: &[f32],
    oy: usize,
    out: &mut [MaybeUninit<f32>],
) {
    debug_assert_eq!(out.len(), plan.out_width * plan.channels);
    let vectorised = if geometry.kernel == 3 {
        kernel::row3x3(geometry.stride, activation, plan, image, zeros, w, b, oy, out)
    } else {
        0
    };
    if vectorised < plan.channels {
        portable_row(geometry, activation, plan, image, w, b, oy, vectorised, out);
    }
}

/// Channels `first..C` of output row `oy`, for any kernel size.
#[allow(clippy::too_many_arguments)]
fn portable_row(
    geometry: ConvGeometry,
    activation: Activation,
    plan: &Plan,
    image: &[f32],
    w: &[f32],
    b: &[f32],
    oy: usize,
    first: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let c = plan.channels;
    let mut acc = vec![0f32; c - first];
    for ox in 0..plan.out_width {
        acc.copy_from_slice(&b[first..]);
        for (tap, pixel) in plan.taps(geometry, oy, ox) {
            let pixel = &image[pixel * c + first..][..c - first];
            let tap = &w[tap * c + first..][..c - first];
            for ((a, &p), &t) in acc.iter_mut().zip(pixel).zip(tap) {
                *a += p * t;
            }
        }
        for (dst, &a) in out[ox * c + first..][..c - first].iter_mut().zip(&acc) {
            dst.write(activation.apply(a));
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod kernel {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use crate::ops::{Activation, Plan};

    /// Output pixels computed together in the image's interior: each pixel's nine
    /// multiply-adds form one dependent chain, so several chains keep both FMA units busy
    /// (nine taps and four accumulators fit AVX2's sixteen registers; six ran no faster).
    const GROUP: usize = 4;

    /// Channels `0..C / 8 * 8` of output row `oy` of a 3x3 convolution; answers how many
    /// channels it computed. `zeros` is at least one input row of zeros (W x C), read where
    /// the kernel overlaps the padding.
    #[allow(clippy::too_many_arguments)]
    pub fn row3x3(
        stride: usize,
        activation: Activation,
        plan: &Plan,
        image: &[f32],
        zeros: &[f32],
        w: &[f32],
        b: &[f32],
        oy: usize,
        out: &mut [MaybeUninit<f32>],
    ) -> usize {
        let (c, width) = (plan.channels, plan.width);
        let blocks = c / 8;
        assert!(image.len() == plan.height * width * c && w.len() == 9 * c && b.len() == c);
        assert!(zeros.len() >= width * c && out.len() == plan.out_width * c);
        // The input rows under the kernel's three rows of taps; the zero row in the padding.
        let rows: [*const f32; 3] = std::array::from_fn(|ky| {
            match (oy * stride + ky)
                .checked_sub(plan.pad_top)
                .filter(|&iy| iy < plan.height)
            {
                Some(iy) => image[iy * width * c..].as_ptr(),
                None => zeros.as_ptr(),
            }
        });
        // Output columns `interior` have all three taps inside the image.
        let first = plan.pad_left.div_ceil(stride).min(plan.out_width);
        let end = match (width + plan.pad_left).checked_sub(3) {
            Some(last_start) => (last_start / stride + 1).min(plan.out_width),
            None => 0,
        };
        let interior = first..end.max(first);
        let out = out.as_mut_ptr().cast::<f32>();
        // SAFETY: AVX2 and FMA are compile-time features (the cfg above). Reads: each row
        // pointer starts a W x C row (of the image or of `zeros`), interior columns read
        // pixels `x0..x0 + 3` with `x0 + 2 < W`, border columns read checked pixels or
        // `zeros`, and `cb + 8 <= c`; weights and bias are 9 * c and c long. Writes:
        // `ox * c + cb + 8 <= out.len()`. All lengths are asserted above.
        unsafe {
            for cb in (0..blocks).map(|block| block * 8) {
                let taps: [__m256; 9] = std::array::from_fn(|t| _mm256_loadu_ps(w.as_ptr().add(t * c + cb)));
                let bias = _mm256_loadu_ps(b.as_ptr().add(cb));
                let store = |ox: usize, acc: __m256| {
                    _mm256_storeu_ps(out.add(ox * c + cb), activate(activation, acc))
                };
                let pixel_offset = |ox: usize| (ox * stride - plan.pad_left) * c + cb;
                let mut ox = interior.start;
                while ox + GROUP <= interior.end {
                    let acc = interior_pixels::<GROUP>(&rows, pixel_offset(ox), stride * c, c, &taps, bias);
                    for (j, &acc) in acc.iter().enumerate() {
                        store(ox + j, acc);
                    }
                    ox += GROUP;
                }
                for ox in ox..interior.end {
                    let [acc] = interior_pixels::<1>(&rows, pixel_offset(ox), 0, c, &taps, bias);
                    store(ox, acc);
                }
                for ox in (0..interior.start).chain(interior.end..plan.out_width) {
                    let columns: [Option<usize>; 3] = std::array::from_fn(|kx| {
                        let ix = (ox * stride + kx).checked_sub(plan.pad_left)?;
                        (ix < width).then_some(ix * c + cb)
                    });
                    let mut acc = bias;
                    for (ky, &row) in rows.iter().enumerate() {
                        for (kx, &column) in columns.iter().enumerate() {
                            let pixel = match column {
                                Some(offset) => row.add(offset),
                                None => zeros.as_ptr(),
                            };
                            acc = _mm256_fmadd_ps(_mm256_loadu_ps(pixel), taps[ky * 3 + kx], acc);
                        }
                    }
                    store(ox, acc);
                }
            }
        }
        blocks * 8
    }

    /// `P` neighbouring interior pixels, the first at `offset` in every row, the others
    /// `step` apart.
    #[inline(always)]
    unsafe fn interior_pixels<const P: usize>(
        rows: &[*const f32; 3],
        offset: usize,
        step: usize,
        c: usize,
        taps: &[__m256; 9],
        bias: __m256,
    ) -> [__m256; P] {
        let mut acc = [bias; P];
        // SAFETY: the caller's: every pixel read lies in its row.
        unsafe {
            for (ky, row) in rows.iter().enumerate() {
                let base = row.add(offset);
                for kx in 0..3 {
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_loadu_ps(base.add(j * step + kx * c));
                        *acc = _mm256_fmadd_ps(x, taps[ky * 3 + kx], *acc);
                    }
                }
            }
        }
        acc
    }

    #[inline(always)]
    unsafe fn activate(activation: Activation, x: __m256) -> __m256 {
        // SAFETY: AVX is a compile-time feature.
        unsafe {
            match activation {
                Activation::Identity => x,
                Activation::Relu6 => {
                    _mm256_min_ps(_mm256_max_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(6.0))
                }
            }
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod kernel {
    use std::mem::MaybeUninit;

    use crate::ops::{Activation, Plan};

    /// Without AVX2 every channel takes the portable loop.
    #[allow(clippy::too_many_arguments)]
    pub fn row3x3(
        _stride: usize,
        _activation: Activation,
        _plan: &Plan,
        _image: &[f32],
        _zeros: &[f32],
        _w: &[f32],
        _b: &[f32],
        _oy: usize,
        _out: &mut [MaybeUninit<f32>],
    ) -> usize {
        0
    }
}
