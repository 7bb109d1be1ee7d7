//! Transfer learning with the real `classifier` binary on the tiny fixture backbone: a
//! generated dataset of clearly separable images trains a head to at least 95% validation
//! accuracy, deterministically; the head directory round-trips through `eval` and `serve`; a
//! head is refused on another backbone; and bad data folders fail with exit code 2.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{get, post, Server};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

/// A 48x48 PNG of one colour, its brightness and tint varied by `seed`. (The tiny fixture's
/// random backbone blurs texture and noise into noise of its own; flat colours are what it
/// separates clearly.)
fn picture(colour: [u8; 3], seed: u32) -> Vec<u8> {
    let gain = 0.8 + (seed % 5) as f32 * 0.05;
    let tint = (seed % 3) as i32 * 4 - 4;
    let pixel = image::Rgb(colour.map(|c| ((f32::from(c) * gain) as i32 + tint).clamp(0, 255) as u8));
    let image = image::RgbImage::from_pixel(48, 48, pixel);
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

const CLASSES: [(&str, [u8; 3]); 3] = [
    ("red", [220, 40, 40]),
    ("green", [40, 200, 60]),
    ("blue", [40, 60, 220]),
];

/// `per_class` pictures of each colour, one folder per class.
fn dataset(name: &str, per_class: u32) -> common::TempDir {
    let dir = common::temp_dir(name);
    for (class, colour) in CLASSES {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            std::fs::write(dir.join(class).join(format!("{i:03}.png")), picture(colour, i)).unwrap();
        }
    }
    dir
}

fn classifier(args: &[&str]) -> Output {
    Command::new(BINARY).args(args).output().unwrap()
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = common::tiny_model();
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "60",
        "--learning-rate",
        "0.01",
        "--seed",
        "3",
    ];
    args.extend_from_slice(extra);
    classifier(&args)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_trained_head_separates_synthetic_classes_and_round_trips() {
    let data = dataset("train-data", 30);
    let out = common::temp_dir("head");
    let trained = train(&data, &out, &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(stderr(&trained).contains("images/s"), "{}", stderr(&trained));

    let report = read_json(&out.join("report.json"));
    let accuracy = report["validation"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "validation accuracy {accuracy}: {report}");
    assert!(!report["history"].as_array().unwrap().is_empty());
    assert_eq!(report["validation"]["confusion"].as_array().unwrap().len(), 3);
    assert_eq!(
        read_json(&out.join("labels.json")),
        serde_json::json!(["blue", "green", "red"])
    );
    let info = read_json(&out.join("head.json"));
    assert!(info["backbone_sha256"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        info["preprocessing"]["input_size"],
        serde_json::json!([3, 224, 224])
    );
    assert_eq!(info["figures"]["val_accuracy"].as_f64(), Some(accuracy));
    for picture in ["learning_curves.png", "confusion_matrix.png"] {
        let image = image::open(out.join(picture)).unwrap();
        assert!(image.width() > 300 && image.height() > 300, "{picture}");
    }

    // The same seed, the same head, bit for bit.
    let again = common::temp_dir("head-again");
    assert!(train(&data, &again, &[]).status.success());
    assert_eq!(
        std::fs::read(out.join("head.safetensors")).unwrap(),
        std::fs::read(again.join("head.safetensors")).unwrap()
    );

    // eval --json: one object whose top-level accuracy is a number in [0, 1].
    let model = common::tiny_model();
    let evaluated = classifier(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--head",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(evaluated.status.success(), "{}", stderr(&evaluated));
    let answer: Value = serde_json::from_slice(&evaluated.stdout).unwrap();
    let accuracy = answer["accuracy"].as_f64().unwrap();
    assert!((0.95..=1.0).contains(&accuracy), "{answer}");
    assert_eq!(answer["samples"], 90);
    assert_eq!(answer["classes"][2]["label"], "red");
    assert!(answer["classes"][0]["f1"].is_number());

    // serve --head answers with the head's labels.
    let server = Server::start(
        BINARY,
        &[
            "--model",
            model.to_str().unwrap(),
            "--head",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let answer = post(
        &server.url("/v1/classify"),
        Some("image/png"),
        &picture([230, 30, 30], 99),
        &[],
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let predictions = &answer.json()["results"][0]["predictions"];
    assert_eq!(predictions[0]["label"], "red", "{predictions}");
    assert_eq!(predictions.as_array().unwrap().len(), 3);
    let card = get(&server.url("/v1/models")).json();
    assert_eq!(
        card["data"][0]["details"]["labels"],
        serde_json::json!(["blue", "green", "red"])
    );
    assert!(card["data"][0]["init_phases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "load_head"));
    drop(server);

    // A head on another backbone is refused at start.
    let other = common::temp_dir("other-backbone");
    std::fs::copy(model.join("config.json"), other.join("config.json")).unwrap();
    let mut weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::write(other.join("model.safetensors"), weights).unwrap();
    let refused = classifier(&[
        "predict",
        "--model",
        other.to_str().unwrap(),
        "--head",
        out.to_str().unwrap(),
        data.join("red/000.png").to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("this head was trained on backbone"),
        "{}",
        stderr(&refused)
    );

    // predict over the data folder (one sub-folder per class, as flower_photos): one line per
    // photo in name order; a file that is no image is reported and skipped.
    std::fs::write(data.join("LICENSE.txt"), b"not an image").unwrap();
    let predicted = classifier(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--head",
        out.to_str().unwrap(),
        "--top-k",
        "1",
        data.to_str().unwrap(),
    ]);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let stdout = String::from_utf8_lossy(&predicted.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 90, "{stdout}");
    let blue = data.join("blue/000.png");
    assert!(
        lines[0].starts_with(&format!("{}: blue ", blue.display())),
        "{stdout}"
    );
    let right = common::labelled_as_their_folder(&lines);
    assert!(right >= 85, "{right} of 90 right:\n{stdout}");
    let log = stderr(&predicted);
    assert!(log.contains("skipped: ") && log.contains("LICENSE.txt"), "{log}");

    // A folder with no image in it is a failure, said as such.
    let empty = common::temp_dir("no-photos");
    std::fs::write(empty.join("notes.txt"), b"nothing").unwrap();
    let none = classifier(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        empty.to_str().unwrap(),
    ]);
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert!(stderr(&none).contains("no image found in"), "{}", stderr(&none));
}

#[test]
fn unreadable_files_are_skipped_and_listed() {
    let data = dataset("corrupt-data", 12);
    std::fs::write(data.join("red/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(data.join("blue/notes.txt"), b"not an image").unwrap();
    let out = common::temp_dir("corrupt-head");
    let trained = train(&data, &out, &["--augment", "0"]);
    let log = stderr(&trained);
    assert!(trained.status.success(), "{log}");
    assert!(log.contains("warning: skipped 2 files"), "{log}");
    assert!(log.contains("broken.png") && log.contains("notes.txt"), "{log}");
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["skipped_files"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_data_folders_fail_with_exit_code_2() {
    let out = common::temp_dir("never-written");
    let no_classes = common::temp_dir("no-classes");
    let single = dataset("single", 4);
    std::fs::remove_dir_all(single.join("green")).unwrap();
    std::fs::remove_dir_all(single.join("blue")).unwrap();
    let empty_class = dataset("empty-class", 4);
    for entry in std::fs::read_dir(empty_class.join("green")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let unreadable_class = dataset("unreadable-class", 4);
    for entry in std::fs::read_dir(unreadable_class.join("blue")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    for (data, expected) in [
        (&*no_classes, "has no class sub-folders"),
        (&single, "has a single class, `red`"),
        (&empty_class, "class folder `green` has no images"),
        (&unreadable_class, "no readable images in class folder(s): blue"),
        (
            Path::new("/nonexistent/flowers"),
            "cannot read /nonexistent/flowers",
        ),
    ] {
        let output = train(data, &out, &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{}: {}",
            data.display(),
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{}: {}",
            data.display(),
            stderr(&output)
        );
    }
    assert!(!out.join("head.safetensors").exists());
}
