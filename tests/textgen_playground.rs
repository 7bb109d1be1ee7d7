//! textgen's playground page (`GET /`) in headless Chromium: a completion streamed and stopped
//! part-way (the server cancels the generation), a search over the loaded corpus with
//! `/v1/search`'s hits, and two texts' similarity. Skipped, with the reason printed, where
//! PLAYGROUND_TEST_PYTHON is not set.

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_textgen");

#[test]
fn the_playground_streams_stops_searches_and_compares() {
    let model = common::root().join("tests/fixtures/gpt2-tiny");
    let corpus = common::root().join("tests/fixtures/corpus-toy.jsonl");
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
    ];
    let server = common::Server::start(BINARY, &args, &[]);
    common::assert_playground_page(&server);
    // POST / stays the FaaS endpoint.
    let faas = common::post_json(
        &server.url("/"),
        &serde_json::json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(faas.status, 200, "{}", faas.text);
    let Some(seen) = common::drive_playground(&server, "textgen", &[]) else {
        return;
    };
    assert!(
        seen["stopped"]
            .as_str()
            .is_some_and(|s| s.starts_with("stopped after")),
        "{seen}"
    );
    assert_eq!(seen["hits"], 8, "{seen}");
    assert!(
        seen["similarity"]
            .as_str()
            .is_some_and(|s| s.starts_with("cosine similarity")),
        "{seen}"
    );
}
