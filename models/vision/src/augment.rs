//! Training-time augmentation of a decoded photo: a random resized crop, a random horizontal
//! flip and a mild colour jitter. Each augmented view then goes through the model's own
//! preprocessing, like the original.

use image::{imageops, Rgb, RgbImage};
use rand::Rng;

/// How far the random views may stray from the photo.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Augmentation {
    /// Smallest share of the photo's area a crop keeps (the largest is all of it).
    pub min_crop_area: f32,
    /// Brightness, contrast and saturation each vary within `1 ± jitter`.
    pub jitter: f32,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            min_crop_area: 0.6,
            jitter: 0.1,
        }
    }
}

impl Augmentation {
    /// One random view of `image`.
    pub fn view(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (w, h) = (image.width() as f32, image.height() as f32);
        // Random resized crop: area share in [min_crop_area, 1], aspect ratio in [3/4, 4/3].
        let area = rng.random_range(self.min_crop_area.min(1.0)..=1.0) * w * h;
        let ratio = rng.random_range((0.75f32).ln()..=(4.0f32 / 3.0).ln()).exp();
        let crop_w = ((area * ratio).sqrt().round() as u32).clamp(1, image.width());
        let crop_h = ((area / ratio).sqrt().round() as u32).clamp(1, image.height());
        let x = rng.random_range(0..=image.width() - crop_w);
        let y = rng.random_range(0..=image.height() - crop_h);
        let mut view = imageops::crop_imm(image, x, y, crop_w, crop_h).to_image();
        if rng.random_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut view);
        }
        let mut factor = || rng.random_range(1.0 - self.jitter..=1.0 + self.jitter);
        let (brightness, contrast, saturation) = (factor(), factor(), factor());
        jitter(&mut view, brightness, contrast, saturation);
        view
    }
}

/// Scales brightness, then contrast around the mean grey level, then saturation around each
/// pixel's grey level (torchvision's ColorJitter order, fixed).
fn jitter(image: &mut RgbImage, brightness: f32, contrast: f32, saturation: f32) {
    let grey = |p: [f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let pixels = image.pixels().count().max(1) as f32;
    let mean = image
        .pixels()
        .map(|p| grey(p.0.map(f32::from)) * brightness)
        .sum::<f32>()
        / pixels;
    for pixel in image.pixels_mut() {
        let bright = pixel.0.map(|v| f32::from(v) * brightness);
        let contrasted = bright.map(|v| (v - mean) * contrast + mean);
        let g = grey(contrasted);
        *pixel = Rgb(contrasted.map(|v| (g + (v - g) * saturation).round().clamp(0.0, 255.0) as u8));
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn views_are_reproducible_and_within_bounds() {
        let image = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 128]));
        let augmentation = Augmentation::default();
        let mut a = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let view = augmentation.view(&image, &mut a);
            assert_eq!(view, augmentation.view(&image, &mut b));
            let share = (view.width() * view.height()) as f32 / (64.0 * 48.0);
            assert!((0.5..=1.0).contains(&share), "{share}");
        }
    }

    #[test]
    fn jitter_of_one_changes_nothing() {
        let mut image = RgbImage::from_fn(8, 8, |x, y| Rgb([(x * 30) as u8, (y * 30) as u8, 7]));
        let before = image.clone();
        jitter(&mut image, 1.0, 1.0, 1.0);
        assert_eq!(image, before);
    }
}
