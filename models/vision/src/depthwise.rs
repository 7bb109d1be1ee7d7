//! Inner loops of the NHWC depthwise convolution, one output row at a time, written once for
//! every [`Level`] of vector instructions.
//!
//! A 3x3 kernel (every MobileNetV2) runs one vector of channels at a time with that block's
//! nine taps and bias held in registers while it sweeps the row. Output pixels of the image's
//! interior go in groups: the group's input columns are loaded once per kernel row and each
//! serves the (up to three) outputs whose taps cover it, so a group of `G` pixels at stride 1
//! costs `3 (G + 2)` loads for `9 G` multiply-adds instead of `9 G` of each. Taps that fall in
//! the padding read a row of zeros, so only the image's edge columns take a slower path.
//! Channels past the last whole vector take masked loads; other kernel sizes take the portable
//! loop.

use std::mem::MaybeUninit;

use simd::{dispatch, F32x, Kernel, Level};

use crate::ops::{Activation, ConvGeometry, Plan};

/// Computes output row `oy` of one image (`image`: H x W x C) into `out` (OW x C); `zeros`
/// is a row of W x C zeros, read where the kernel overlaps the padding.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    level: Level,
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
    if geometry.kernel == 3 && level > Level::Portable {
        let c = plan.channels;
        assert!(image.len() == plan.height * plan.width * c && w.len() == 9 * c && b.len() == c);
        assert!(zeros.len() >= plan.width * c && out.len() == plan.out_width * c);
        dispatch(
            level,
            Row3x3 {
                stride: geometry.stride,
                activation,
                plan,
                image,
                zeros,
                w,
                b,
                oy,
                out: out.as_mut_ptr().cast::<f32>(),
            },
        );
    } else {
        portable_row(geometry, activation, plan, image, w, b, oy, out);
    }
}

/// Output row `oy` for any kernel size, in plain loops.
#[allow(clippy::too_many_arguments)]
fn portable_row(
    geometry: ConvGeometry,
    activation: Activation,
    plan: &Plan,
    image: &[f32],
    w: &[f32],
    b: &[f32],
    oy: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let c = plan.channels;
    let mut acc = vec![0f32; c];
    for ox in 0..plan.out_width {
        acc.copy_from_slice(b);
        for (tap, pixel) in plan.taps(geometry, oy, ox) {
            let pixel = &image[pixel * c..][..c];
            let tap = &w[tap * c..][..c];
            for ((a, &p), &t) in acc.iter_mut().zip(pixel).zip(tap) {
                *a += p * t;
            }
        }
        for (dst, &a) in out[ox * c..][..c].iter_mut().zip(&acc) {
            dst.write(activation.apply(a));
        }
    }
}

/// One output row of a 3x3 convolution, every channel; lengths checked by [`row`].
struct Row3x3<'a> {
    stride: usize,
    activation: Activation,
    plan: &'a Plan,
    image: &'a [f32],
    zeros: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    oy: usize,
    out: *mut f32,
}

/// Input columns a group of pixels reads at most (stride 2, 8 pixels).
const MAX_COLUMNS: usize = 2 * (8 - 1) + 3;

impl Kernel for Row3x3<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let Row3x3 {
            stride,
            activation,
            plan,
            image,
            zeros,
            w,
            b,
            oy,
            out,
        } = self;
        let (c, width) = (plan.channels, plan.width);
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
        // SAFETY: the level's instructions (the trait's contract). Reads: each row pointer
        // starts a W x C row (of the image or of `zeros`), interior columns read pixels
        // `x0..x0 + 3` with `x0 + 2 < W`, border columns read checked pixels or `zeros`, and
        // a block reads `lanes <= c - cb` channels from `cb`; weights and bias are 9 * c and c
        // long. Writes: `ox * c + cb + lanes <= out.len()`. All lengths are checked by `row`.
        unsafe {
            for cb in (0..c).step_by(V::LANES) {
                let lanes = V::LANES.min(c - cb);
                let mut taps = [V::zero(); 9];
                for (t, tap) in taps.iter_mut().enumerate() {
                    *tap = V::load_part(w.as_ptr().add(t * c + cb), lanes);
                }
                let bias = V::load_part(b.as_ptr().add(cb), lanes);
                let mut ox = interior.start;
                if lanes == V::LANES {
                    let groups = Groups {
                        rows: &rows,
                        stride,
                        pad_left: plan.pad_left,
                        c,
                        cb,
                        taps: &taps,
                        bias,
                        activation,
                        out,
                    };
                    // Whole groups, then half groups: a 14- or 7-pixel row's interior is
                    // mostly the tail that whole groups leave.
                    ox = if V::LANES >= 16 {
                        groups.sweep::<4>(groups.sweep::<8>(ox, interior.end), interior.end)
                    } else {
                        groups.sweep::<2>(groups.sweep::<4>(ox, interior.end), interior.end)
                    };
                }
                for ox in (0..interior.start).chain(ox..plan.out_width) {
                    // A tap in the padding reads `zeros`, so every pixel takes nine loads
                    // without a branch between them.
                    let columns: [Option<usize>; 3] = std::array::from_fn(|kx| {
                        (ox * stride + kx)
                            .checked_sub(plan.pad_left)
                            .filter(|&ix| ix < width)
                    });
                    let mut acc = bias;
                    for (ky, &row) in rows.iter().enumerate() {
                        for (kx, column) in columns.iter().enumerate() {
                            let pixel = match column {
                                Some(ix) => row.add(ix * c + cb),
                                None => zeros.as_ptr().add(cb),
                            };
                            acc = V::load_part(pixel, lanes).mul_add(taps[ky * 3 + kx], acc);
                        }
                    }
                    activation
                        .apply_lanes(acc)
                        .store_part(out.add(ox * c + cb), lanes);
                }
            }
        }
    }
}

/// One vector of channels of a row's interior pixels, swept in groups: with nine taps and a
/// group's input columns in registers, groups of four fill AVX2's sixteen, eight AVX-512's
/// thirty-two.
struct Groups<'a, V> {
    rows: &'a [*const f32; 3],
    stride: usize,
    pad_left: usize,
    c: usize,
    cb: usize,
    taps: &'a [V; 9],
    bias: V,
    activation: Activation,
    out: *mut f32,
}

impl<V: F32x> Groups<'_, V> {
    /// Pixels `ox..` in groups of `G` while a whole group ends by `end`; the next pixel.
    ///
    /// # Safety
    /// As [`Row3x3`]'s: the CPU has `V`'s instructions, pixels before `end` are interior, and
    /// `out` holds their outputs.
    #[inline(always)]
    unsafe fn sweep<const G: usize>(&self, mut ox: usize, end: usize) -> usize {
        while ox + G <= end {
            let offset = (ox * self.stride - self.pad_left) * self.c + self.cb;
            // SAFETY: the caller's.
            unsafe {
                let acc = if self.stride == 1 {
                    self.group::<1, G>(offset)
                } else {
                    self.group::<2, G>(offset)
                };
                for (j, acc) in acc.into_iter().enumerate() {
                    self.activation
                        .apply_lanes(acc)
                        .store(self.out.add((ox + j) * self.c + self.cb));
                }
            }
            ox += G;
        }
        ox
    }

    /// `G` neighbouring interior output pixels `S` input columns apart, the first reading from
    /// `offset` in every row: each row's `(G - 1) S + 3` input columns are loaded once.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions; every column read must lie in its row.
    #[inline(always)]
    unsafe fn group<const S: usize, const G: usize>(&self, offset: usize) -> [V; G] {
        let mut acc = [self.bias; G];
        let columns = (G - 1) * S + 3;
        // SAFETY: the caller's.
        unsafe {
            for (ky, row) in self.rows.iter().enumerate() {
                let base = row.add(offset);
                let mut input = [V::zero(); MAX_COLUMNS];
                for (i, input) in input[..columns].iter_mut().enumerate() {
                    *input = V::load(base.add(i * self.c));
                }
                for kx in 0..3 {
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = input[j * S + kx].mul_add(self.taps[ky * 3 + kx], *acc);
                    }
                }
            }
        }
        acc
    }
}
