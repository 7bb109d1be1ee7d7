//! KServe's Open Inference Protocol (v2 REST) on the real `classifier` binary: the same answers
//! as `/v1/classify` for every input form, through KServe's own Python client too, and the
//! protocol's error shape for bad requests.

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

use base64::Engine;
use common::{get, post, Server};
use serde_json::{json, Value};

fn tiny_server(extra: &[&str]) -> Server {
    let model = common::tiny_model();
    let mut args = vec!["--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(BINARY, &args, &[])
}

fn fixture_photos() -> Vec<std::path::PathBuf> {
    let images = common::tiny_model().join("images");
    let mut photos: Vec<_> = std::fs::read_dir(images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    photos
}

fn infer(server: &Server, model: &str, request: &Value) -> common::Answer {
    post(
        &server.url(&format!("/v2/models/{model}/infer")),
        Some("application/json"),
        request.to_string().as_bytes(),
        &[],
    )
}

/// Asserts the protocol's error shape, `{"error": "<message>"}`, and returns the message.
fn expect_v2_error(answer: &common::Answer, status: u16) -> String {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert!(answer.content_type.starts_with("application/json"), "{answer:?}");
    let body = answer.json();
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    let message = body["error"].as_str();
    message
        .unwrap_or_else(|| panic!("no message: {body}"))
        .to_string()
}

#[test]
fn metadata_readiness_and_base64_images_match_v1() {
    let server = tiny_server(&[]);
    let server_metadata = get(&server.url("/v2")).json();
    assert_eq!(server_metadata["name"], "classifier");
    assert_eq!(server_metadata["extensions"], json!(["binary_tensor_data"]));
    let metadata = get(&server.url("/v2/models/mobilenetv2-tiny")).json();
    assert_eq!(
        metadata["inputs"][1],
        json!({"name": "pixels", "datatype": "FP32", "shape": [-1, 224, 224, 3]})
    );
    assert_eq!(metadata["outputs"][0]["shape"], json!([-1, 10]));
    let ready = get(&server.url("/v2/models/mobilenetv2-tiny/ready"));
    assert_eq!((ready.status, ready.json()["ready"].clone()), (200, json!(true)));
    assert_eq!(get(&server.url("/v2/health/ready")).json()["ready"], true);
    assert_eq!(get(&server.url("/v2/health/live")).json()["live"], true);

    let photos: Vec<Vec<u8>> = fixture_photos()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let encoded: Vec<String> = photos
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p))
        .collect();
    let request = json!({
        "id": "request-7",
        "parameters": {"top_k": 3},
        "inputs": [{"name": "image", "shape": [photos.len()], "datatype": "BYTES", "data": encoded}],
    });
    let answer = infer(&server, "mobilenetv2-tiny", &request);
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body = answer.json();
    assert_eq!(
        (body["model_name"].clone(), body["id"].clone()),
        (json!("mobilenetv2-tiny"), json!("request-7"))
    );
    let names: Vec<&str> = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["probabilities", "labels", "scores", "indices"]);
    let output = |name: &str| {
        body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(output("probabilities")["shape"], json!([photos.len(), 10]));
    assert_eq!(output("labels")["shape"], json!([photos.len(), 3]));
    assert_eq!(output("indices")["datatype"], "INT64");
    for (i, photo) in photos.iter().enumerate() {
        let v1 = post(&server.url("/v1/classify?top_k=3"), Some("image/png"), photo, &[]).json();
        let predictions = v1["results"][0]["predictions"].as_array().unwrap();
        for (k, prediction) in predictions.iter().enumerate() {
            assert_eq!(output("labels")["data"][i * 3 + k], prediction["label"]);
            assert_eq!(output("indices")["data"][i * 3 + k], prediction["index"]);
            // Both are the same f32, written with more or fewer digits.
            let as_f32 = |v: &Value| v.as_f64().map(|x| x as f32);
            assert_eq!(
                as_f32(&output("scores")["data"][i * 3 + k]),
                as_f32(&prediction["score"])
            );
            let index = prediction["index"].as_u64().unwrap() as usize;
            assert_eq!(
                as_f32(&output("probabilities")["data"][i * 10 + index]),
                as_f32(&prediction["score"])
            );
        }
    }
    let features = infer(
        &server,
        "mobilenetv2-tiny",
        &json!({"inputs": request["inputs"], "outputs": [{"name": "features"}]}),
    );
    assert_eq!(features.json()["outputs"][0]["shape"], json!([photos.len(), 64]));
}

#[test]
fn bad_requests_get_the_protocols_error_shape_and_the_server_stays_healthy() {
    let server = tiny_server(&[]);
    let image =
        |data: Value| json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": data}]});
    let pixels = |shape: Value, data: Value| json!({"inputs": [{"name": "pixels", "shape": shape, "datatype": "FP32", "data": data}]});
    let zeros = vec![0.0f32; 224 * 224 * 3];
    // 5e38 is a JSON number past f32's range.
    let mut overflowing = json!(zeros);
    overflowing[5] = json!(5e38);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("mobilenetv2-tiny", b"{not json".to_vec(), 400, "invalid inference request"),
        ("other-model", image(json!(["aGk="])).to_string().into_bytes(), 404, "no model `other-model`"),
        ("mobilenetv2-tiny", image(json!(["%%%"])).to_string().into_bytes(), 422, "invalid base64"),
        ("mobilenetv2-tiny", image(json!(["aGVsbG8="])).to_string().into_bytes(), 422, "image 0"),
        ("mobilenetv2-tiny", pixels(json!([1, 10, 10, 3]), json!(vec![0.0; 300])).to_string().into_bytes(), 422, "[N, 224, 224, 3] or [N, 3, 224, 224]"),
        ("mobilenetv2-tiny", pixels(json!([1, 224, 224, 3]), json!(vec![0.0; 10])).to_string().into_bytes(), 400, "holds 150528 elements but the data has 10"),
        ("mobilenetv2-tiny", pixels(json!([1, 224, 224, 3]), overflowing).to_string().into_bytes(), 422, "holds inf at 5"),
        ("mobilenetv2-tiny", pixels(json!([0, 224, 224, 3]), json!([])).to_string().into_bytes(), 400, "holds no image"),
        (
            "mobilenetv2-tiny",
            json!({"inputs": [image(json!(["aGk="]))["inputs"][0], pixels(json!([1, 224, 224, 3]), json!(zeros))["inputs"][0]]}).to_string().into_bytes(),
            400,
            "2 inputs; the classifier takes one",
        ),
        ("mobilenetv2-tiny", json!({"inputs": pixels(json!([1, 224, 224, 3]), json!(zeros))["inputs"], "outputs": [{"name": "logits"}]}).to_string().into_bytes(), 400, "no output `logits`"),
        ("mobilenetv2-tiny", json!({"inputs": pixels(json!([1, 224, 224, 3]), json!(zeros))["inputs"], "parameters": {"top_k": 11}}).to_string().into_bytes(), 422, "top_k must be between 1 and 10"),
        ("mobilenetv2-tiny", json!({"inputs": pixels(json!([1, 224, 224, 3]), json!(zeros))["inputs"], "parameters": {"top_k": "many"}}).to_string().into_bytes(), 422, "not a non-negative integer"),
    ];
    for (model, body, status, expected) in cases {
        let answer = post(
            &server.url(&format!("/v2/models/{model}/infer")),
            Some("application/json"),
            &body,
            &[],
        );
        let message = expect_v2_error(&answer, status);
        assert!(message.contains(expected), "`{message}` lacks `{expected}`");
    }
    let unknown = get(&server.url("/v2/models/other-model"));
    assert!(expect_v2_error(&unknown, 404).contains("serves `mobilenetv2-tiny`"));
    let wrong_method = get(&server.url("/v2/models/mobilenetv2-tiny/infer"));
    expect_v2_error(&wrong_method, 405);
    let too_large = post(
        &server.url("/v2/models/mobilenetv2-tiny/infer"),
        Some("application/json"),
        &vec![b' '; 21 * 1024 * 1024],
        &[],
    );
    expect_v2_error(&too_large, 413);
    // Outside /v2 errors keep the OpenAI shape.
    let v1 = post(&server.url("/v1/classify"), Some("image/png"), b"not a png", &[]);
    assert_eq!(v1.expect_error(422), "invalid_image");

    // NaN through the binary tensor data extension.
    let header = br#"{"inputs":[{"name":"pixels","shape":[1,3,224,224],"datatype":"FP32","parameters":{"binary_data_size":602112}}]}"#;
    let mut body = header.to_vec();
    for i in 0..zeros.len() {
        body.extend(if i == 7 { f32::NAN } else { 0.0 }.to_le_bytes());
    }
    let length = header.len().to_string();
    let headers = [("Inference-Header-Content-Length", length.as_str())];
    let url = server.url("/v2/models/mobilenetv2-tiny/infer");
    let nan = post(&url, Some("application/octet-stream"), &body, &headers);
    assert!(expect_v2_error(&nan, 422).contains("holds NaN at 7"));

    let good = infer(
        &server,
        "mobilenetv2-tiny",
        &pixels(json!([1, 3, 224, 224]), json!(zeros)),
    );
    assert_eq!(good.status, 200, "{}", good.text);
}

#[test]
fn the_kserve_python_client_gets_the_same_top5_as_v1_for_every_input_form() {
    let Ok(python) = std::env::var("DEPLOY_TEST_PYTHON") else {
        eprintln!("skipped: DEPLOY_TEST_PYTHON is not set (.ci/run sets it to a Python with `kserve`)");
        return;
    };
    let server = tiny_server(&[]);
    let mut photos = fixture_photos();
    // Real photos too where the shared data is there: their decoding and resizing are the
    // server's for BYTES and Pillow's for FP32.
    if let Some(tulips) = common::shared_data("flowers5/tulips") {
        let mut found: Vec<_> = std::fs::read_dir(tulips)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        found.sort();
        photos.extend(found.into_iter().take(3));
    }
    let mut args = vec![server.base.clone()];
    args.extend(photos.iter().map(|p| p.display().to_string()));
    let seen = common::run_python(&python, "tests/kserve_client.py", &args);
    assert_eq!(seen["photos"], photos.len());
    eprintln!("kserve client: {seen}");
}
