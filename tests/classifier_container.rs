//! The classifier's container image (deploy/Containerfile, built by scripts/container.sh with
//! the tiny model baked in): it answers over the container's port as the binary does, and on
//! SIGTERM finishes what it is answering and exits 0. Skipped, with the reason printed, where
//! no Podman or Docker runs.

mod common;

use common::{get, post};
use serde_json::Value;

#[test]
fn the_image_classifies_through_its_port_and_drains_on_sigterm() {
    let Some(engine) = common::container_engine() else {
        return;
    };
    let size = common::build_image(&engine, "classifier", Some(&common::tiny_model()));
    eprintln!("classifier image: {:.1} MB", size as f64 / 1e6);
    if !common::image_runs(&engine, "classifier") {
        return;
    }
    let server = common::run_image(&engine, "classifier", &["-e", "SERVED_MODEL_NAME=flowers"]);

    let photo = std::fs::read(common::tiny_model().join("images/synthetic-0-224x224.png")).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(common::tiny_model().join("reference.json")).unwrap())
            .unwrap();
    let answer = post(&server.url("/v1/classify"), Some("image/png"), &photo, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body = answer.json();
    assert_eq!(body["model"], "flowers");
    let want = reference["images"]["synthetic-0-224x224.png"]["top5"]
        .as_array()
        .unwrap();
    let got = body["results"][0]["predictions"].as_array().unwrap();
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["label"], w["label"], "{body}");
        assert!((g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs() < 1e-4);
    }
    assert_eq!(get(&server.url("/v2/models/flowers/ready")).status, 200);

    // Four requests of 48 images each in flight when SIGTERM comes: all are answered.
    let (answers, status, took) =
        common::stop_with_requests_in_flight(server, "/v1/classify", &common::heavy_classify_request(), 4);
    assert!(
        took < std::time::Duration::from_secs(10),
        "stopping took {took:?}, over the shutdown timeout"
    );
    assert_eq!(status.code(), Some(0), "the container's exit status: {status:?}");
    for answer in answers {
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.json()["results"].as_array().unwrap().len(), 48);
    }
}
