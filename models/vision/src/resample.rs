//! Image resizing that reproduces Pillow's `Image.resize` bit for bit on 8-bit RGB, which is
//! what the reference pipelines (torchvision and timm transforms, Keras `load_img`) run: a
//! separable convolution whose support widens with the downscale factor (antialiasing),
//! fixed-point coefficients with 22 fractional bits, a horizontal pass rounded to 8 bits, then
//! a vertical pass. Matching it exactly keeps the model's inputs identical to the reference's.

use std::ops::Range;

use image::RgbImage;
use rayon::prelude::*;

/// Pillow's resampling filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.5,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Nearest => f64::from(u8::from(x < 0.5)),
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: the first input index, the number of taps, and fixed-point weights.
struct Coefficients {
    taps: Vec<(usize, usize)>,
    kernel_size: usize,
    weights: Vec<i32>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let kernel_size = support.ceil() as usize * 2 + 1;
    let mut taps = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * kernel_size];
    let mut k = vec![0f64; kernel_size];
    for (xx, row) in weights.chunks_exact_mut(kernel_size).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero, as `as` does.
        let min = ((center - support + 0.5) as i64).max(0) as usize;
        let count = ((center + support + 0.5) as i64).min(in_size as i64) as usize - min;
        k.fill(0.0);
        let mut total = 0.0;
        for (x, w) in k.iter_mut().take(count).enumerate() {
            *w = filter.weight((x as f64 + min as f64 - center + 0.5) / filter_scale);
            total += *w;
        }
        for (fixed, &w) in row.iter_mut().zip(&k) {
            let w = if total != 0.0 { w / total } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *fixed = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        taps.push((min, count));
    }
    Coefficients {
        taps,
        kernel_size,
        weights,
    }
}

fn clip8(value: i32) -> u8 {
    (value >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's rounding term: a half in the fixed-point scale, added before the sums are shifted.
const ROUND: i32 = 1 << (PRECISION_BITS - 1);

/// Output rows per parallel task: rows are independent, and a photo's thousands of rows shared
/// between the threads halve a lone request's resize; a small image stays one or two tasks.
const ROWS_PER_TASK: usize = 64;

/// Where a pass reads its input: `pixels` holds rows of `stride` bytes; the pixel at input
/// index (`x`, `y`) of the whole image is at row `y - origin.1`, column `x - origin.0`.
#[derive(Clone, Copy)]
struct Plane<'a> {
    pixels: &'a [u8],
    stride: usize,
    origin: (usize, usize),
}

impl<'a> Plane<'a> {
    /// Input row `y` from the plane's first column to the end of the pixels.
    fn row(&self, y: usize) -> &'a [u8] {
        &self.pixels[(y - self.origin.1) * self.stride..]
    }

    /// The same pixels, read from input row `y` on.
    fn rows_from(self, y: usize) -> Self {
        Self {
            pixels: self.row(y),
            origin: (self.origin.0, y),
            ..self
        }
    }

    /// The same pixels, read from input column `x` on.
    fn columns_from(self, x: usize) -> Self {
        Self {
            pixels: &self.pixels[(x - self.origin.0) * 3..],
            origin: (x, self.origin.1),
            ..self
        }
    }
}

/// Resamples `rows` rows of `src` horizontally: output columns `columns` of `c`, each row.
fn horizontal_pass(src: Plane, rows: usize, c: &Coefficients, columns: Range<usize>) -> Vec<u8> {
    let out_len = columns.len() * 3;
    let mut out = vec![0u8; out_len * rows];
    let first_row = src.origin.1;
    let rows = out.par_chunks_exact_mut(out_len).enumerate();
    rows.with_min_len(ROWS_PER_TASK).for_each(|(y, out_row)| {
        let src_row = src.row(first_row + y);
        for (x, dst) in columns.clone().zip(out_row.chunks_exact_mut(3)) {
            let (min, count) = c.taps[x];
            let weights = &c.weights[x * c.kernel_size..][..count];
            let mut sums = [ROUND; 3];
            let pixels = src_row[(min - src.origin.0) * 3..][..count * 3].chunks_exact(3);
            for (&w, pixel) in weights.iter().zip(pixels) {
                for (sum, &v) in sums.iter_mut().zip(pixel) {
                    *sum += i32::from(v) * w;
                }
            }
            for (d, sum) in dst.iter_mut().zip(sums) {
                *d = clip8(sum);
            }
        }
    });
    out
}

/// Resamples `src` vertically, `width` pixels from its first column: output rows `rows` of
/// `c`. Every output row is a weighted sum of whole input rows, a loop the compiler
/// vectorises; integer sums do not depend on their order, so this is Pillow's result exactly.
fn vertical_pass(src: Plane, width: usize, c: &Coefficients, rows: Range<usize>) -> Vec<u8> {
    let row_len = width * 3;
    let mut out = vec![0u8; row_len * rows.len()];
    let first = rows.start;
    let rows = out.par_chunks_exact_mut(row_len).enumerate();
    rows.with_min_len(ROWS_PER_TASK).for_each_init(
        || vec![0i32; row_len],
        |sums, (y, out_row)| {
            let (min, count) = c.taps[first + y];
            sums.fill(ROUND);
            for (i, &w) in c.weights[(first + y) * c.kernel_size..][..count]
                .iter()
                .enumerate()
            {
                for (sum, &v) in sums.iter_mut().zip(&src.row(min + i)[..row_len]) {
                    *sum += i32::from(v) * w;
                }
            }
            for (d, &sum) in out_row.iter_mut().zip(sums.iter()) {
                *d = clip8(sum);
            }
        },
    );
    out
}

/// The input indices that output positions `range` of `c` read.
fn reads(c: &Coefficients, range: &Range<usize>) -> Range<usize> {
    let taps = &c.taps[range.clone()];
    let start = taps.iter().map(|&(min, _)| min).min().unwrap_or(0);
    let end = taps
        .iter()
        .map(|&(min, count)| min + count)
        .max()
        .unwrap_or(start);
    start..end
}

/// A rectangle of an image in pixels: `left..left + width` by `top..top + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

/// The `window` of what Pillow's `image.resize((width, height), filter)` gives, computed for
/// that window alone: a centre crop after a resize then costs the crop's pixels, not the
/// resized image's. Each output pixel depends only on its own taps, and the passes run in
/// Pillow's order, so the bytes are those of the whole resize, cropped.
pub fn resize_window(
    image: &RgbImage,
    (width, height): (u32, u32),
    filter: Filter,
    window: Window,
) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let columns = window.left..window.left + window.width;
    let rows = window.top..window.top + window.height;
    let pixels = if filter == Filter::Nearest {
        nearest(image, (out_w, out_h), &columns, &rows)
    } else {
        let source = Plane {
            pixels: image.as_raw(),
            stride: in_w * 3,
            origin: (0, 0),
        };
        // Pillow runs first the pass that leaves the smaller intermediate image (ties:
        // horizontal), and skips a pass whose size does not change: a photo already at the
        // resize's size (the usual case for a dataset's photos) is only cropped, and computes
        // no coefficients.
        let horizontal_first = in_w * out_h >= out_w * in_h;
        let horizontal = || coefficients(in_w, out_w, filter);
        let vertical = || coefficients(in_h, out_h, filter);
        match (out_w != in_w, out_h != in_h) {
            (false, false) => crop(source, &columns, &rows),
            (true, false) => {
                horizontal_pass(source.rows_from(rows.start), rows.len(), &horizontal(), columns)
            }
            (false, true) => vertical_pass(
                source.columns_from(columns.start),
                columns.len(),
                &vertical(),
                rows,
            ),
            (true, true) if horizontal_first => {
                let (horizontal, vertical) = (horizontal(), vertical());
                let needed = reads(&vertical, &rows);
                let across = horizontal_pass(
                    source.rows_from(needed.start),
                    needed.len(),
                    &horizontal,
                    columns.clone(),
                );
                let across = Plane {
                    pixels: &across,
                    stride: columns.len() * 3,
                    origin: (0, needed.start),
                };
                vertical_pass(across, columns.len(), &vertical, rows)
            }
            (true, true) => {
                let (horizontal, vertical) = (horizontal(), vertical());
                let needed = reads(&horizontal, &columns);
                let down = vertical_pass(
                    source.columns_from(needed.start),
                    needed.len(),
                    &vertical,
                    rows.clone(),
                );
                let down = Plane {
                    pixels: &down,
                    stride: needed.len() * 3,
                    origin: (needed.start, rows.start),
                };
                horizontal_pass(down, rows.len(), &horizontal, columns)
            }
        }
    };
    RgbImage::from_raw(window.width as u32, window.height as u32, pixels)
        .unwrap_or_else(|| RgbImage::new(window.width as u32, window.height as u32))
}

/// The pixels of `columns` x `rows` of `source`, row after row.
fn crop(source: Plane, columns: &Range<usize>, rows: &Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(columns.len() * rows.len() * 3);
    for y in rows.clone() {
        out.extend_from_slice(&source.row(y)[columns.start * 3..columns.end * 3]);
    }
    out
}

/// Pillow's NEAREST: the source pixel under each output pixel's centre, for `columns` x `rows`
/// of an image resized to `out_w` x `out_h`.
fn nearest(
    image: &RgbImage,
    (out_w, out_h): (usize, usize),
    columns: &Range<usize>,
    rows: &Range<usize>,
) -> Vec<u8> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let sx = in_w as f64 / out_w as f64;
    let sy = in_h as f64 / out_h as f64;
    let source = |out: usize, scale: f64, len: usize| {
        (((out as f64 + 0.5) * scale) as usize).min(len.saturating_sub(1))
    };
    let mut out = Vec::with_capacity(columns.len() * rows.len() * 3);
    for y in rows.clone() {
        let iy = source(y, sy, in_h);
        for x in columns.clone() {
            let ix = source(x, sx, in_w);
            out.extend_from_slice(&image.as_raw()[(iy * in_w + ix) * 3..][..3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pillow's C loop, one output value at a time, as the reference for the passes above.
    fn reference_pass(
        src: &[u8],
        (width, height): (usize, usize),
        out_len: usize,
        horizontal: bool,
        c: &Coefficients,
    ) -> Vec<u8> {
        let (out_w, out_h) = if horizontal {
            (out_len, height)
        } else {
            (width, out_len)
        };
        let mut out = vec![0u8; out_w * out_h * 3];
        for y in 0..out_h {
            for x in 0..out_w {
                let (min, count) = c.taps[if horizontal { x } else { y }];
                for ch in 0..3 {
                    let mut sum = ROUND;
                    for i in 0..count {
                        let w = c.weights[(if horizontal { x } else { y }) * c.kernel_size + i];
                        let pixel = if horizontal {
                            y * width + min + i
                        } else {
                            (min + i) * width + x
                        };
                        sum += i32::from(src[pixel * 3 + ch]) * w;
                    }
                    out[(y * out_w + x) * 3 + ch] = clip8(sum);
                }
            }
        }
        out
    }

    fn plane(pixels: &[u8], width: usize) -> Plane<'_> {
        Plane {
            pixels,
            stride: width * 3,
            origin: (0, 0),
        }
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut state = 12345u32;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                (state >> 24) as u8
            })
            .collect()
    }

    /// Both passes give Pillow's loop's bytes, downscaling and upscaling, every filter.
    #[test]
    fn passes_match_the_reference_loop() {
        let (width, height) = (37, 29);
        let src = noise(width * height * 3);
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for out_len in [5, 16, 29, 37, 64] {
                let c = coefficients(width, out_len, filter);
                assert_eq!(
                    horizontal_pass(plane(&src, width), height, &c, 0..out_len),
                    reference_pass(&src, (width, height), out_len, true, &c),
                    "horizontal {filter:?} to {out_len}"
                );
                let c = coefficients(height, out_len, filter);
                assert_eq!(
                    vertical_pass(plane(&src, width), width, &c, 0..out_len),
                    reference_pass(&src, (width, height), out_len, false, &c),
                    "vertical {filter:?} to {out_len}"
                );
            }
        }
    }

    /// A window of a resize is that window of Pillow's whole resize (its passes in Pillow's
    /// order, by the reference loop), for either pass first, one pass or none, every filter.
    #[test]
    fn a_window_is_the_crop_of_the_whole_resize() {
        let (width, height) = (41, 23);
        let image = RgbImage::from_raw(width as u32, height as u32, noise(width * height * 3)).unwrap();
        for filter in [Filter::Nearest, Filter::Bilinear, Filter::Bicubic] {
            for (out_w, out_h) in [(30, 17), (17, 30), (41, 12), (20, 23), (41, 23), (64, 40), (8, 8)] {
                let whole = resize_window(
                    &image,
                    (out_w as u32, out_h as u32),
                    filter,
                    Window {
                        left: 0,
                        top: 0,
                        width: out_w,
                        height: out_h,
                    },
                );
                if filter != Filter::Nearest {
                    let across = |pixels: &[u8], rows| {
                        reference_pass(
                            pixels,
                            (width, rows),
                            out_w,
                            true,
                            &coefficients(width, out_w, filter),
                        )
                    };
                    let down = |pixels: &[u8], columns| {
                        reference_pass(
                            pixels,
                            (columns, height),
                            out_h,
                            false,
                            &coefficients(height, out_h, filter),
                        )
                    };
                    let source = image.as_raw();
                    let want = match (out_w != width, out_h != height) {
                        (false, false) => source.clone(),
                        (true, false) => across(source, height),
                        (false, true) => down(source, width),
                        (true, true) if width * out_h >= out_w * height => {
                            let across = across(source, height);
                            reference_pass(
                                &across,
                                (out_w, height),
                                out_h,
                                false,
                                &coefficients(height, out_h, filter),
                            )
                        }
                        (true, true) => {
                            let down = down(source, width);
                            reference_pass(
                                &down,
                                (width, out_h),
                                out_w,
                                true,
                                &coefficients(width, out_w, filter),
                            )
                        }
                    };
                    assert_eq!(whole.as_raw(), &want, "{filter:?} to {out_w}x{out_h}");
                }
                for (left, top, w, h) in [
                    (0, 0, 1, 1),
                    (3, 2, 4, 5),
                    (out_w - 4, out_h - 3, 4, 3),
                    (1, 0, out_w - 2, out_h),
                ] {
                    let window = Window {
                        left,
                        top,
                        width: w,
                        height: h,
                    };
                    let part = resize_window(&image, (out_w as u32, out_h as u32), filter, window);
                    let crop = image::imageops::crop_imm(&whole, left as u32, top as u32, w as u32, h as u32)
                        .to_image();
                    assert_eq!(part, crop, "{filter:?} to {out_w}x{out_h}, {window:?}");
                }
            }
        }
    }
}
