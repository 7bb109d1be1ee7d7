//! The classifier on a CPU without AVX: the real binary under `qemu-x86_64 -cpu Westmere`
//! picks the portable kernels and answers the native run's top-5, probabilities within 1e-4.

mod common;

use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

fn predictions(qemu: Option<&std::path::Path>) -> Vec<Value> {
    let model = common::tiny_model();
    let images =
        ["synthetic-0-224x224.png", "synthetic-3-300x200.png"].map(|name| model.join("images").join(name));
    let mut args = vec!["predict", "--json", "--model", model.to_str().unwrap()];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    common::run_maybe_emulated(qemu, BINARY, &args)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_cpu_without_avx_gets_the_same_top_5() {
    let Some(qemu) = common::qemu() else { return };
    let native = predictions(None);
    let emulated = predictions(Some(&qemu));
    assert_eq!(native.len(), 2);
    for (native, emulated) in native.iter().zip(&emulated) {
        let (a, b) = (
            native["predictions"].as_array().unwrap(),
            emulated["predictions"].as_array().unwrap(),
        );
        assert_eq!(a.len(), 5);
        for (a, b) in a.iter().zip(b) {
            assert_eq!(a["index"], b["index"], "{native} vs {emulated}");
            let (p, q) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((p - q).abs() < 1e-4, "{native} vs {emulated}");
        }
    }
    eprintln!("native and without AVX: {}", native[0]["predictions"]);
}
