//! The classifier as an AWS Lambda function, behind cargo-lambda's Runtime API emulator: its
//! answers through a Function URL and through an API Gateway REST event are the plain
//! server's, and the model loads in the function's init, before any invocation. Skipped, with
//! the reason printed, where CARGO_LAMBDA is not set.

mod common;

use common::{post, LambdaFunction, Server};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

#[test]
fn classify_through_the_lambda_emulator_answers_as_the_plain_server() {
    let model = common::tiny_model();
    let args = ["--model", model.to_str().unwrap()];
    let Some(function) = LambdaFunction::start(BINARY, &args, &[]) else {
        return;
    };
    // Every init phase, the warm-up included, ran before the function asked for its first event.
    let phases: Vec<&String> = function
        .init_log
        .iter()
        .filter(|l| l.contains("init phase"))
        .collect();
    assert!(
        phases.iter().any(|l| l.contains("warm_up")),
        "{:?}",
        function.init_log
    );
    assert!(
        !function.init_log.iter().any(|l| l.contains("\"bind\"")),
        "a Lambda function binds no port"
    );
    let plain = Server::start(BINARY, &args, &[]);

    let photo = std::fs::read(model.join("images/synthetic-1-224x224.png")).unwrap();
    let want = post(&plain.url("/v1/classify?top_k=3"), Some("image/png"), &photo, &[]);
    assert_eq!(want.status, 200, "{}", want.text);

    let through_url = post(
        &function.url("/v1/classify?top_k=3"),
        Some("image/png"),
        &photo,
        &[],
    );
    assert_eq!(through_url.status, 200, "{}", through_url.text);
    assert_eq!(through_url.json(), want.json());

    let mut event = common::api_gateway_rest_event("POST", "/v1/classify", "image/png", &photo, true);
    event["queryStringParameters"] = serde_json::json!({"top_k": "3"});
    event["multiValueQueryStringParameters"] = serde_json::json!({"top_k": ["3"]});
    let response = function.invoke(&event);
    assert_eq!(response["statusCode"], 200, "{response}");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, want.json());

    // Bad input gets the same JSON error as from the plain server.
    let bad = post(
        &function.url("/v1/classify"),
        Some("image/png"),
        b"not a png",
        &[],
    );
    let plain_bad = post(&plain.url("/v1/classify"), Some("image/png"), b"not a png", &[]);
    assert_eq!((bad.status, bad.json()), (plain_bad.status, plain_bad.json()));
}
