//! textgen's container image (deploy/Containerfile, built by scripts/container.sh, the weights
//! mounted at /model): a streamed completion through the container's port equals the plain
//! binary's, and on SIGTERM a stream in flight is finished before the container exits 0.
//! Skipped, with the reason printed, where no Podman or Docker runs.

mod common;

use std::io::{BufRead, BufReader, Write};

use common::{post, Server};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_textgen");

/// The `text` of a streamed completion and its number of events, until `[DONE]` (which must
/// come); `after_first` runs once the first event has come.
fn streamed_text(
    server: &Server,
    prompt: &str,
    max_tokens: usize,
    after_first: impl FnOnce(),
) -> (String, usize) {
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    let body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true}).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    let mut after_first = Some(after_first);
    let mut events = 0;
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return (text, events);
        }
        events += 1;
        let event: Value = serde_json::from_str(data).unwrap();
        text += event["choices"][0]["text"].as_str().unwrap();
        if let Some(f) = after_first.take() {
            f();
        }
    }
    panic!("the stream ended without [DONE]");
}

#[test]
fn the_image_streams_what_the_binary_answers_and_drains_on_sigterm() {
    let Some(engine) = common::container_engine() else {
        return;
    };
    let model = common::root().join("tests/fixtures/gpt2-tiny");
    let size = common::build_image(&engine, "textgen", None);
    eprintln!("textgen image: {:.1} MB", size as f64 / 1e6);
    if !common::image_runs(&engine, "textgen") {
        return;
    }
    let mount = format!("{}:/model:ro", model.display());
    let container = common::run_image(&engine, "textgen", &["-v", &mount]);
    let plain = Server::start(BINARY, &["--model", model.to_str().unwrap()], &[]);

    let prompt = "The quick brown fox";
    let expected = post(
        &plain.url("/v1/completions"),
        Some("application/json"),
        json!({"prompt": prompt, "max_tokens": 12, "temperature": 0})
            .to_string()
            .as_bytes(),
        &[],
    )
    .json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!expected.is_empty());
    assert_eq!(streamed_text(&container, prompt, 12, || ()).0, expected);

    // SIGTERM once the first of 1,000 tokens has come (generating them all takes the tiny
    // model hundreds of milliseconds): the stream is still finished, every token and its
    // final event, and the container exits 0.
    let pid = container.pid().to_string();
    let terminate = || {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    let (text, events) = streamed_text(&container, prompt, 1000, terminate);
    assert_eq!(events, 1001, "{text:?}");
    assert!(container
        .log
        .iter()
        .any(|line| line.contains("draining in-flight requests")));
    let status = container.wait_for_exit();
    assert_eq!(status.code(), Some(0), "the container's exit status: {status:?}");
}
