//! The network against timm on the committed fixture: same weights, same image, logits within
//! 1e-4 (`scripts/make_fixtures.py` wrote the reference).

use std::path::PathBuf;

use serde_json::Value;
use vision::{DecodeLimits, ImageClassifier};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mobilenetv2-tiny")
}

#[test]
fn logits_match_timm_within_1e_4() {
    let dir = fixture();
    let classifier =
        ImageClassifier::load(&dir.join("config.json"), &dir.join("model.safetensors")).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for (name, expected) in reference["images"].as_object().unwrap() {
        if !name.contains("224x224") {
            continue; // resized inputs are checked for top-1 agreement end to end
        }
        let image = vision::decode_image(
            &std::fs::read(dir.join("images").join(name)).unwrap(),
            DecodeLimits::default(),
        )
        .unwrap();
        let batch = classifier
            .batch(&[classifier.preprocessing().apply(&image)])
            .unwrap();
        let logits: Vec<f32> = classifier
            .model()
            .logits(&batch)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
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
                "{name} logit {i}: {got} vs timm {want}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn batched_inference_equals_one_by_one() {
    let dir = fixture();
    let classifier =
        ImageClassifier::load(&dir.join("config.json"), &dir.join("model.safetensors")).unwrap();
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
        for (a, b) in alone[0]
            .probabilities
            .iter()
            .zip(&together[i].probabilities)
        {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
