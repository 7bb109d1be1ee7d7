//! textgen as an AWS Lambda function, behind cargo-lambda's Runtime API emulator: a completion
//! through a Function URL and through an API Gateway REST event, and a completion streamed
//! through a Function URL in response-streaming mode, each the plain server's text. Skipped,
//! with the reason printed, where CARGO_LAMBDA is not set.

mod common;

use std::io::{BufRead, BufReader, Write};

use common::{post, LambdaFunction, Server};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_textgen");

fn completion(prompt: &str) -> Value {
    json!({"prompt": prompt, "max_tokens": 12, "temperature": 0})
}

#[test]
fn completions_through_the_lambda_emulator_answer_as_the_plain_server() {
    let model = common::root().join("tests/fixtures/gpt2-tiny");
    let args = ["--model", model.to_str().unwrap()];
    let Some(function) = LambdaFunction::start(BINARY, &args, &[]) else {
        return;
    };
    assert!(
        function.init_log.iter().any(|l| l.contains("init phase")),
        "{:?}",
        function.init_log
    );
    let plain = Server::start(BINARY, &args, &[]);
    let prompt = "The quick brown fox";
    let body = completion(prompt).to_string();
    let want = post(
        &plain.url("/v1/completions"),
        Some("application/json"),
        body.as_bytes(),
        &[],
    )
    .json();
    let text = want["choices"][0]["text"].clone();
    assert!(text.as_str().is_some_and(|t| !t.is_empty()), "{want}");

    let through_url = post(
        &function.url("/v1/completions"),
        Some("application/json"),
        body.as_bytes(),
        &[],
    );
    assert_eq!(through_url.status, 200, "{}", through_url.text);
    let got = through_url.json();
    assert_eq!(
        (&got["choices"], &got["usage"]),
        (&want["choices"], &want["usage"])
    );

    let event = common::api_gateway_rest_event(
        "POST",
        "/v1/completions",
        "application/json",
        body.as_bytes(),
        false,
    );
    let response = function.invoke(&event);
    assert_eq!(response["statusCode"], 200, "{response}");
    let got: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(got["choices"], want["choices"]);
}

#[test]
fn a_streamed_completion_comes_through_a_response_streaming_function_url() {
    let model = common::root().join("tests/fixtures/gpt2-tiny");
    let args = ["--model", model.to_str().unwrap()];
    let envs = [("LAMBDA_INVOKE_MODE", "response_stream")];
    let Some(function) = LambdaFunction::start(BINARY, &args, &envs) else {
        return;
    };
    let plain = Server::start(BINARY, &args, &[]);
    let prompt = "The quick brown fox";
    let want = post(
        &plain.url("/v1/completions"),
        Some("application/json"),
        completion(prompt).to_string().as_bytes(),
        &[],
    )
    .json();

    let mut streamed = completion(prompt);
    streamed["stream"] = json!(true);
    let body = streamed.to_string();
    let mut stream = std::net::TcpStream::connect(function.address()).unwrap();
    write!(
        stream,
        "POST /lambda-url/_/v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let lines: Vec<String> = BufReader::new(stream).lines().map_while(Result::ok).collect();
    assert!(lines[0].contains(" 200 "), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.eq_ignore_ascii_case("content-type: text/event-stream")),
        "{lines:?}"
    );
    let events: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{lines:?}");
    // One event per token, then the one that says why it stopped.
    assert_eq!(events.len(), 12 + 2, "{events:?}");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, want["choices"][0]["text"].as_str().unwrap());
}
