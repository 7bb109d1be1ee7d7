//! Image resizing that reproduces Pillow's `Image.resize` bit for bit on 8-bit RGB, which is
//! what the reference pipelines (torchvision and timm transforms, Keras `load_img`) run: a
//! separable convolution whose support widens with the downscale factor (antialiasing),
//! fixed-point coefficients with 22 fractional bits, a horizontal pass rounded to 8 bits, then
//! a vertical pass. Matching it exactly keeps the model's inputs identical to the reference's.

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

/// Resamples each row of an RGB image (`width` x `height`) to `out_w` pixels.
fn horizontal_pass(src: &[u8], (width, height): (usize, usize), out_w: usize, c: &Coefficients) -> Vec<u8> {
    let mut out = vec![0u8; out_w * height * 3];
    let rows = src
        .par_chunks_exact(width * 3)
        .zip(out.par_chunks_exact_mut(out_w * 3));
    rows.with_min_len(ROWS_PER_TASK).for_each(|(src_row, out_row)| {
        for (x, dst) in out_row.chunks_exact_mut(3).enumerate() {
            let (min, count) = c.taps[x];
            let weights = &c.weights[x * c.kernel_size..][..count];
            let mut sums = [ROUND; 3];
            for (&w, pixel) in weights
                .iter()
                .zip(src_row[min * 3..][..count * 3].chunks_exact(3))
            {
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

/// Resamples each column of an RGB image (`width` x `height`) to `out_h` pixels: every output
/// row is a weighted sum of whole input rows, a loop the compiler vectorises. Integer sums do
/// not depend on their order, so this is Pillow's result exactly.
fn vertical_pass(src: &[u8], (width, height): (usize, usize), out_h: usize, c: &Coefficients) -> Vec<u8> {
    let row_len = width * 3;
    debug_assert_eq!(src.len(), row_len * height);
    let mut out = vec![0u8; row_len * out_h];
    let rows = out.par_chunks_exact_mut(row_len).enumerate();
    rows.with_min_len(ROWS_PER_TASK).for_each_init(
        || vec![0i32; row_len],
        |sums, (y, out_row)| {
            let (min, count) = c.taps[y];
            sums.fill(ROUND);
            for (i, &w) in c.weights[y * c.kernel_size..][..count].iter().enumerate() {
                for (sum, &v) in sums.iter_mut().zip(&src[(min + i) * row_len..][..row_len]) {
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

/// Resizes like Pillow's `image.resize((width, height), filter)`.
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if filter == Filter::Nearest {
        return nearest(image, width, height);
    }
    // Pillow runs first the pass that leaves the smaller intermediate image (ties: horizontal).
    let horizontal = |pixels: &[u8], rows: usize| {
        horizontal_pass(pixels, (in_w, rows), out_w, &coefficients(in_w, out_w, filter))
    };
    let vertical = |pixels: &[u8], columns: usize| {
        vertical_pass(pixels, (columns, in_h), out_h, &coefficients(in_h, out_h, filter))
    };
    let source = image.as_raw();
    let pixels = match (out_w != in_w, out_h != in_h) {
        (false, false) => source.clone(),
        (true, false) => horizontal(source, in_h),
        (false, true) => vertical(source, in_w),
        (true, true) if in_w * out_h < out_w * in_h => horizontal(&vertical(source, in_w), out_h),
        (true, true) => vertical(&horizontal(source, in_h), out_w),
    };
    RgbImage::from_raw(width, height, pixels).unwrap_or_else(|| image.clone())
}

/// Pillow's NEAREST: the source pixel under each output pixel's centre.
fn nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let sx = f64::from(image.width()) / f64::from(width);
    let sy = f64::from(image.height()) / f64::from(height);
    RgbImage::from_fn(width, height, |x, y| {
        let ix = (((f64::from(x) + 0.5) * sx) as u32).min(image.width() - 1);
        let iy = (((f64::from(y) + 0.5) * sy) as u32).min(image.height() - 1);
        *image.get_pixel(ix, iy)
    })
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

    /// Both passes give Pillow's loop's bytes, downscaling and upscaling, every filter.
    #[test]
    fn passes_match_the_reference_loop() {
        let (width, height) = (37, 29);
        let mut state = 12345u32;
        let src: Vec<u8> = (0..width * height * 3)
            .map(|_| {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                (state >> 24) as u8
            })
            .collect();
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for out_len in [5, 16, 29, 37, 64] {
                let c = coefficients(width, out_len, filter);
                assert_eq!(
                    horizontal_pass(&src, (width, height), out_len, &c),
                    reference_pass(&src, (width, height), out_len, true, &c),
                    "horizontal {filter:?} to {out_len}"
                );
                let c = coefficients(height, out_len, filter);
                assert_eq!(
                    vertical_pass(&src, (width, height), out_len, &c),
                    reference_pass(&src, (width, height), out_len, false, &c),
                    "vertical {filter:?} to {out_len}"
                );
            }
        }
    }
}
