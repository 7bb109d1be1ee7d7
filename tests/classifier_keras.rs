//! The Keras weights file the write-up's example loads (`mobilenetv2_1.0.h5`: Keras
//! Applications' weights-only layout, no top, no config), written by
//! `tests/keras_weights_only.py` from the shared Keras model's backbone: converted by
//! `scripts/convert_keras_mobilenetv2.py`, it serves the same features as the whole-model file it
//! came from, and with a head trained by `classifier train` on it, `predict` over a folder of
//! flower photos prints one line per photo.
//!
//! Needs `CLASSIFIER_TEST_PYTHON_H5` (a Python with h5py, numpy and safetensors; .ci/run makes
//! one) and `../shared/data`; skips with the reason otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{post, Server};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

fn python() -> Option<String> {
    let python = std::env::var("CLASSIFIER_TEST_PYTHON_H5").ok();
    if python.is_none() {
        eprintln!("skipped: CLASSIFIER_TEST_PYTHON_H5 is not set (.ci/run sets it to a Python with h5py)");
    }
    python
}

/// Runs a Python script of the repository; its stderr.
fn run_script(python: &str, script: &str, args: &[&Path], extra: &[&str]) -> String {
    let output = Command::new(python)
        .arg(common::root().join(script))
        .args(args)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{script}: {}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

fn input_size(model: &Path) -> Value {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["pretrained_cfg"]["input_size"].clone()
}

fn features(model: &Path, photos: &[PathBuf]) -> Vec<Vec<f64>> {
    let server = Server::start(BINARY, &["--model", model.to_str().unwrap()], &[]);
    let images: Vec<String> = photos
        .iter()
        .map(|p| base64_encode(&std::fs::read(p).unwrap()))
        .collect();
    let answer = post(
        &server.url("/v1/features"),
        Some("application/json"),
        json!({ "images": images }).to_string().as_bytes(),
        &[],
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The first `per_class` photos of each flowers5 class, linked into a fresh folder of the same
/// layout, with a file that is no image beside them (as `flower_photos/LICENSE.txt`).
fn few_flowers(flowers: &Path, per_class: usize) -> (common::TempDir, usize) {
    let dir = common::temp_dir("few-flowers");
    let mut count = 0;
    for class in ["daisy", "dandelion", "roses", "sunflowers", "tulips"] {
        let mut photos: Vec<PathBuf> = std::fs::read_dir(flowers.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        photos.sort();
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for photo in photos.iter().take(per_class) {
            std::os::unix::fs::symlink(photo, dir.join(class).join(photo.file_name().unwrap())).unwrap();
            count += 1;
        }
    }
    std::fs::write(dir.join("LICENSE.txt"), b"not a photo").unwrap();
    (dir, count)
}

#[test]
fn a_weights_only_keras_file_converts_serves_the_same_features_and_classifies_with_a_head() {
    let Some(python) = python() else { return };
    let (Some(keras), Some(flowers)) = (
        common::shared_data("keras-mobilenetv2-160/dog_breed_mobilenetv2.h5"),
        common::shared_data("flowers5"),
    ) else {
        return;
    };
    let dir = common::temp_dir("keras-weights-only");
    let weights_only = dir.join("mobilenetv2_1.0.h5");
    run_script(
        &python,
        "tests/keras_weights_only.py",
        &[&keras, &weights_only],
        &[],
    );

    // No size in the file or its name: Keras Applications' default, said as a note.
    let default = dir.join("default");
    let note = run_script(
        &python,
        "scripts/convert_keras_mobilenetv2.py",
        &[&weights_only, &default],
        &[],
    );
    assert!(note.contains("224, Keras Applications' default"), "{note}");
    assert_eq!(input_size(&default), json!([3, 224, 224]));
    // Keras Applications' own file name carries the size.
    let named = dir.join("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5");
    std::fs::copy(&weights_only, &named).unwrap();
    let backbone = dir.join("backbone");
    run_script(
        &python,
        "scripts/convert_keras_mobilenetv2.py",
        &[&named, &backbone],
        &[],
    );
    assert_eq!(input_size(&backbone), json!([3, 160, 160]));

    let whole = dir.join("whole");
    run_script(
        &python,
        "scripts/convert_keras_mobilenetv2.py",
        &[&keras, &whole],
        &["--labels", keras.with_file_name("labels.txt").to_str().unwrap()],
    );
    let photos: Vec<PathBuf> = ["tulips", "daisy", "roses"]
        .iter()
        .map(|class| {
            let mut photos: Vec<PathBuf> = std::fs::read_dir(flowers.join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            photos.sort();
            photos.swap_remove(0)
        })
        .collect();
    let from_weights = features(&backbone, &photos);
    let from_whole = features(&whole, &photos);
    assert_eq!(from_weights.len(), 3);
    let largest = from_weights
        .iter()
        .flatten()
        .zip(from_whole.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert_eq!(from_weights[0].len(), 1280);
    assert!(largest <= 1e-5, "features differ by {largest}");
    eprintln!("weights-only vs whole-model features: largest difference {largest:e}");

    // A head trained on the weights-only backbone classifies a folder of photos, a line each.
    let (data, count) = few_flowers(&flowers, 8);
    let head = dir.join("head");
    let trained = Command::new(BINARY)
        .args(["train", "--model", backbone.to_str().unwrap()])
        .args(["--data", data.to_str().unwrap(), "--out", head.to_str().unwrap()])
        .args(["--epochs", "30", "--seed", "1"])
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let predicted = Command::new(BINARY)
        .args(["predict", "--model", backbone.to_str().unwrap()])
        .args(["--head", head.to_str().unwrap(), "--top-k", "1"])
        .arg(&data)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&predicted.stderr);
    assert!(predicted.status.success(), "{log}");
    assert!(log.contains("skipped: ") && log.contains("LICENSE.txt"), "{log}");
    let stdout = String::from_utf8_lossy(&predicted.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), count, "{stdout}");
    let right = common::labelled_as_their_folder(&lines);
    assert!(right * 10 >= count * 8, "{right} of {count} right:\n{stdout}");
    eprintln!(
        "predict over {}: {right} of {count} photos labelled as their folder",
        data.display()
    );
}
