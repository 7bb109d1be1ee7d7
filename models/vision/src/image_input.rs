//! Image intake: bytes in any supported format to the normalised NHWC pixels the network reads.
//!
//! The format is sniffed from the bytes, never taken from a file name or a content type. The
//! header is read first and the pixel count checked against the limit before anything is
//! decoded, so a small file that claims to be 50000x50000 costs nothing. EXIF orientation is
//! applied; grey, alpha and 16-bit images become 8-bit RGB (alpha dropped, as PIL's
//! `convert("RGB")`). Resize, crop and normalisation follow timm's evaluation transform.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::config::Preprocessing;
use crate::resample::{self, Filter, Window};
use crate::VisionError;

/// Limits checked before decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width x height accepted.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
        }
    }
}

/// Decodes an image (JPEG, PNG, WebP, GIF's first frame, BMP, TIFF) into upright 8-bit RGB.
pub fn decode_image(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, VisionError> {
    let undecodable = |e: &dyn std::fmt::Display| VisionError::Undecodable(e.to_string());
    let max_pixels = limits.max_pixels;
    if bytes.is_empty() {
        return Err(VisionError::Undecodable("the image is empty (0 bytes)".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(&e))?;
    let format = reader.format().ok_or_else(|| {
        VisionError::Undecodable("unrecognised format (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)".into())
    })?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(VisionError::Undecodable(
            "truncated JPEG: no end-of-image marker after the scan data".into(),
        ));
    }
    // Decoders also bound their allocations: 8 bytes a pixel covers 16-bit RGBA.
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(&e, max_pixels))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(VisionError::TooLarge(format!(
            "image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} pixels"
        )));
    }
    if pixels == 0 {
        return Err(VisionError::Undecodable(format!("the image is {width}x{height}")));
    }
    let orientation = decoder.orientation().map_err(|e| decode_error(&e, max_pixels))?;
    let mut image = match format {
        ImageFormat::Jpeg => match decode_jpeg_like_pillow(bytes)? {
            Some(rgb) => DynamicImage::ImageRgb8(rgb),
            None => DynamicImage::from_decoder(decoder).map_err(|e| decode_error(&e, max_pixels))?,
        },
        _ => DynamicImage::from_decoder(decoder).map_err(|e| decode_error(&e, max_pixels))?,
    };
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

fn decode_error(error: &ImageError, max_pixels: u64) -> VisionError {
    match error {
        ImageError::Limits(e) => VisionError::TooLarge(format!("{e} (the limit is {max_pixels} pixels)")),
        e => VisionError::Undecodable(e.to_string()),
    }
}

/// Decodes a YCbCr or greyscale JPEG with libjpeg-turbo's code (through mozjpeg) and its
/// defaults (integer IDCT, fancy upsampling), as Pillow does, so that pixels match the
/// reference pipelines exactly; other decoders differ by a few levels on a quarter of the
/// values. `None` for colour spaces left to the `image` crate (CMYK, YCCK).
fn decode_jpeg_like_pillow(bytes: &[u8]) -> Result<Option<RgbImage>, VisionError> {
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let decompress = mozjpeg::Decompress::new_mem(bytes)?;
        if !matches!(
            decompress.color_space(),
            mozjpeg::ColorSpace::JCS_YCbCr
                | mozjpeg::ColorSpace::JCS_GRAYSCALE
                | mozjpeg::ColorSpace::JCS_RGB
        ) {
            return Ok(None);
        }
        let mut started = decompress.rgb()?;
        let (width, height) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<[u8; 3]> = started.read_scanlines()?;
        started.finish()?;
        Ok(RgbImage::from_raw(width, height, pixels.into_flattened()))
    });
    match decoded {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(e)) => Err(VisionError::Undecodable(format!("corrupt JPEG: {e}"))),
        Err(_) => Err(VisionError::Undecodable("corrupt JPEG".into())),
    }
}

/// A JPEG whose last start-of-scan marker (FF DA) is followed by an end-of-image marker
/// (FF D9). Inside scan data FF is always followed by 00 or a restart marker, so a file cut
/// anywhere before its end has none. (Decoders fill a cut image with grey rather than fail.)
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_end = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    matches!((last_scan, last_end), (Some(scan), Some(end)) if end > scan)
}

impl Preprocessing {
    /// The network's input for one image: (height, width, 3) normalised values, row-major.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        let [_, out_h, out_w] = self.input_size;
        let filter = match self.interpolation.as_str() {
            "bilinear" => Filter::Bilinear,
            "nearest" => Filter::Nearest,
            _ => Filter::Bicubic,
        };
        let (w, h) = (image.width() as usize, image.height() as usize);
        let (resize_w, resize_h) = if self.crop_mode == "squash" {
            (out_w, out_h)
        } else {
            // timm: scale = floor(size / crop_pct); torchvision's Resize(int) sets the shorter
            // side to it and the longer side to int(scale * long / short).
            let scale = (out_h.min(out_w) as f64 / self.crop_pct).floor() as usize;
            if w <= h {
                (scale, (scale as f64 * h as f64 / w as f64) as usize)
            } else {
                ((scale as f64 * w as f64 / h as f64) as usize, scale)
            }
        };
        let window = Window {
            left: centred_offset(resize_w, out_w),
            top: centred_offset(resize_h, out_h),
            width: out_w,
            height: out_h,
        };
        let cropped = resample::resize_window(image, (resize_w as u32, resize_h as u32), filter, window);
        // One table per channel: normalising is then a lookup per value.
        let table: [[f32; 256]; 3] = std::array::from_fn(|c| {
            let (scale, shift) = (1.0 / (255.0 * self.std[c]), self.mean[c] / self.std[c]);
            std::array::from_fn(|level| level as f32 * scale - shift)
        });
        let mut out = vec![0f32; out_h * out_w * 3];
        for (values, levels) in out.chunks_exact_mut(3).zip(cropped.as_raw().chunks_exact(3)) {
            for c in 0..3 {
                values[c] = table[c][usize::from(levels[c])];
            }
        }
        out
    }
}

/// torchvision's CenterCrop offset: `int(round((size - crop) / 2))`, with Python's round-half-even.
/// The resized image is never smaller than the crop (its shorter side is `crop / crop_pct`).
fn centred_offset(size: usize, crop: usize) -> usize {
    let diff = size.saturating_sub(crop);
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_crop_offset_rounds_half_to_even() {
        assert_eq!(centred_offset(256, 224), 16);
        assert_eq!(centred_offset(257, 224), 16); // round(16.5) = 16
        assert_eq!(centred_offset(259, 224), 18); // round(17.5) = 18
    }

    fn fixture(name: &str) -> Vec<u8> {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        std::fs::read(fixtures.join(name)).unwrap()
    }

    #[test]
    fn header_claiming_huge_size_is_refused_before_decoding() {
        let err = decode_image(&fixture("png-bomb-50000x50000.png"), DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(&err, VisionError::TooLarge(m) if m.contains("50000x50000")),
            "{err}"
        );
    }

    #[test]
    fn text_and_empty_bodies_are_undecodable() {
        assert!(matches!(
            decode_image(b"", DecodeLimits::default()),
            Err(VisionError::Undecodable(_))
        ));
        let err = decode_image(b"hello, this is not an image", DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, VisionError::Undecodable(_)), "{err}");
    }

    fn fixture_png() -> Vec<u8> {
        fixture("mobilenetv2-tiny/images/synthetic-0-224x224.png")
    }

    #[test]
    fn truncated_png_is_undecodable() {
        let png = fixture_png();
        assert!(decode_image(&png, DecodeLimits::default()).is_ok());
        let err = decode_image(&png[..png.len() / 2], DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, VisionError::Undecodable(_)), "{err}");
    }

    #[test]
    fn truncated_jpeg_is_undecodable() {
        let image = decode_image(&fixture_png(), DecodeLimits::default()).unwrap();
        let mut jpeg = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(
            decode_image(&jpeg, DecodeLimits::default()).unwrap().dimensions(),
            (224, 224)
        );
        for cut in [jpeg.len() / 3, jpeg.len() - 2] {
            let result = decode_image(&jpeg[..cut], DecodeLimits::default());
            assert!(
                matches!(result, Err(VisionError::Undecodable(_))),
                "a JPEG cut at {cut} was accepted"
            );
        }
    }

    #[test]
    fn every_supported_format_decodes_to_the_same_pixels() {
        let original = decode_image(&fixture_png(), DecodeLimits::default()).unwrap();
        for format in [
            ImageFormat::Png,
            ImageFormat::WebP,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::Gif,
        ] {
            let mut encoded = Vec::new();
            original.write_to(&mut Cursor::new(&mut encoded), format).unwrap();
            let decoded = decode_image(&encoded, DecodeLimits::default()).unwrap();
            assert_eq!(decoded.dimensions(), (224, 224), "{format:?}");
            if format != ImageFormat::Gif {
                // GIF is palette-quantised; the others are lossless.
                assert_eq!(decoded.as_raw(), original.as_raw(), "{format:?}");
            }
        }
    }

    #[test]
    fn grey_alpha_and_16_bit_images_become_rgb() {
        let original =
            DynamicImage::ImageRgb8(decode_image(&fixture_png(), DecodeLimits::default()).unwrap());
        let variants = [
            DynamicImage::ImageLuma8(original.to_luma8()),
            DynamicImage::ImageRgba8(original.to_rgba8()),
            DynamicImage::ImageRgb16(original.to_rgb16()),
            DynamicImage::ImageLumaA16(original.to_luma_alpha16()),
        ];
        for variant in variants {
            let mut png = Vec::new();
            variant
                .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
                .unwrap();
            let decoded = decode_image(&png, DecodeLimits::default()).unwrap();
            assert_eq!(decoded, variant.to_rgb8(), "{:?}", variant.color());
        }
    }

    #[test]
    fn exif_orientation_is_applied() {
        let original = decode_image(&fixture_png(), DecodeLimits::default()).unwrap();
        let wide = image::imageops::crop_imm(&original, 0, 0, 224, 120).to_image();
        let mut jpeg = Vec::new();
        wide.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        // An APP1 Exif segment right after SOI: big-endian TIFF, one IFD entry, Orientation = 6
        // (the stored image must be turned 90 degrees clockwise to be upright).
        let tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00";
        let mut app1 = b"\xff\xe1".to_vec();
        app1.extend(((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend(b"Exif\x00\x00");
        app1.extend(tiff);
        let rotated: Vec<u8> = [&jpeg[..2], &app1, &jpeg[2..]].concat();
        assert_eq!(
            decode_image(&jpeg, DecodeLimits::default()).unwrap().dimensions(),
            (224, 120)
        );
        assert_eq!(
            decode_image(&rotated, DecodeLimits::default())
                .unwrap()
                .dimensions(),
            (120, 224)
        );
    }
}
