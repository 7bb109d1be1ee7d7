//! Any bytes as an uploaded photo: every format the classifier accepts is tried on them (the
//! image crate guesses it from the content), with the pixel limit checked from the header
//! before any pixel is decoded. An error is a fine answer; a panic, a hang or a huge
//! allocation is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vision::image_input::{decode_image, DecodeLimits};

fuzz_target!(|bytes: &[u8]| {
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
    };
    if let Ok(image) = decode_image(bytes, limits) {
        assert!(u64::from(image.width()) * u64::from(image.height()) <= 4_000_000);
    }
});
