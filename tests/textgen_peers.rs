//! The endpoints peer servers have, on the real `textgen` binary over HTTP: vLLM's `/tokenize`
//! and `/detokenize` (the tokenizer corpus round-trips byte for byte), reranking in
//! text-embeddings-inference's and Cohere's shapes (the same order and scores as search over
//! the same texts), `stream_options.include_usage`, CORS, and the OpenAPI description checked
//! against real answers.

mod common;

use common::Server;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_textgen");

fn start(extra: &[&str]) -> Server {
    let dir = common::root().join("tests/fixtures/gpt2-tiny");
    let mut args = vec!["--model", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(BINARY, &args, &[])
}

fn call(server: &Server, path: &str, body: &Value) -> common::Answer {
    common::post_json(&server.url(path), body)
}

#[test]
fn tokenize_then_detokenize_round_trips_the_tokenizer_corpus_byte_for_byte() {
    let server = start(&[]);
    let corpus =
        std::fs::read_to_string(common::root().join("tests/fixtures/tokenizer-corpus.jsonl")).unwrap();
    let mut lines = 0;
    for line in corpus.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let text = case["text"].as_str().unwrap();
        let tokenized = call(&server, "/tokenize", &json!({"prompt": text, "model": "gpt2"}));
        assert_eq!(tokenized.status, 200, "{}", tokenized.text);
        let tokenized = tokenized.json();
        let want: Vec<u64> = case["ids"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(tokenized["tokens"], json!(want), "{text:?}");
        assert_eq!(tokenized["count"], want.len());
        assert_eq!(tokenized["max_model_len"], 1024);
        let detokenized = call(&server, "/detokenize", &json!({"tokens": tokenized["tokens"]})).json();
        assert_eq!(
            detokenized["prompt"].as_str().map(str::as_bytes),
            Some(text.as_bytes())
        );
        lines += 1;
    }
    assert_eq!(lines, 10_000);
    for (path, body, expected) in [
        (
            "/detokenize",
            json!({"tokens": [50257]}),
            "outside the vocabulary of 50257",
        ),
        (
            "/detokenize",
            json!({"tokens": [4294967296u64]}),
            "outside the vocabulary",
        ),
    ] {
        let answer = call(&server, path, &body);
        answer.expect_error(422);
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{}",
            answer.text
        );
    }
    for (path, body) in [
        ("/tokenize", json!({"prompt": 5})),
        ("/detokenize", json!({"tokens": "x"})),
        ("/tokenize", json!({})),
    ] {
        call(&server, path, &body).expect_error(400);
    }
}

#[test]
fn both_rerank_shapes_give_search_order_and_scores() {
    let server = start(&[]);
    let texts = [
        "The fox jumped over the lazy dog.",
        "Stock markets rallied on Tuesday.",
        "A quick brown fox is a small animal.",
        "Rain is expected over the weekend.",
        "Foxes live in dens.",
    ];
    let query = "quick brown fox";
    let search = call(
        &server,
        "/v1/search",
        &json!({"query": query, "documents": texts}),
    )
    .json();
    let order: Vec<u64> = search["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["document"].as_u64().unwrap())
        .collect();
    let scores: Vec<f64> = search["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["score"].as_f64().unwrap())
        .collect();
    assert_eq!(order.len(), texts.len());

    let tei = call(
        &server,
        "/rerank",
        &json!({"query": query, "texts": texts, "return_text": true}),
    );
    assert_eq!(tei.status, 200, "{}", tei.text);
    let tei = tei.json();
    let tei = tei.as_array().unwrap();
    assert_eq!(
        tei.iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        order
    );
    assert_eq!(
        tei.iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect::<Vec<_>>(),
        scores
    );
    assert_eq!(tei[0]["text"], texts[order[0] as usize]);

    let documents = json!([texts[0], {"text": texts[1]}, texts[2], {"text": texts[3]}, texts[4]]);
    let cohere = call(
        &server,
        "/v1/rerank",
        &json!({"model": "m", "query": query, "documents": documents, "top_n": 3, "return_documents": true}),
    );
    assert_eq!(cohere.status, 200, "{}", cohere.text);
    let results = cohere.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        order[..3]
    );
    assert_eq!(results[0]["relevance_score"].as_f64(), Some(scores[0]));
    assert_eq!(results[0]["document"]["text"], texts[order[0] as usize]);
    let without = call(
        &server,
        "/v1/rerank",
        &json!({"query": query, "documents": texts}),
    )
    .json();
    assert_eq!(without["results"].as_array().unwrap().len(), texts.len());
    assert!(without["results"][0].get("document").is_none());

    for (path, body, status) in [
        (
            "/v1/rerank",
            json!({"query": query, "documents": texts, "top_n": 0}),
            422,
        ),
        (
            "/v1/rerank",
            json!({"query": query, "documents": texts, "top_n": 6}),
            422,
        ),
        ("/v1/rerank", json!({"query": "", "documents": texts}), 422),
        ("/v1/rerank", json!({"query": query, "documents": []}), 422),
        ("/rerank", json!({"query": query, "texts": vec!["x"; 201]}), 422),
        ("/rerank", json!({"query": query}), 400),
        (
            "/v1/rerank",
            json!({"query": query, "documents": [{"body": "x"}]}),
            400,
        ),
    ] {
        call(&server, path, &body).expect_error(status);
    }
}

#[test]
fn include_usage_ends_a_stream_with_the_usage_of_the_plain_answer() {
    let server = start(&[]);
    let body =
        json!({"prompt": ["Hello there", "A second prompt"], "max_tokens": 5, "temperature": 0, "n": 2});
    let plain = call(&server, "/v1/completions", &body).json();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let data = common::sse(server.address(), "/v1/completions", &streamed);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], plain["usage"]);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("usage").is_none()));

    streamed["stream_options"] = json!({"include_usage": false});
    let data = common::sse(server.address(), "/v1/completions", &streamed);
    assert!(data[..data.len() - 1].iter().all(|d| !d.contains("usage")));
    let mut not_streamed = body;
    not_streamed["stream_options"] = json!({"include_usage": true});
    call(&server, "/v1/completions", &not_streamed).expect_error(422);
}

#[test]
fn cors_answers_preflights_for_the_allowed_origins_only() {
    let server = start(&[
        "--cors-allow-origin",
        "http://localhost:3000,https://app.example.com",
        "--api-key",
        "k",
    ]);
    let preflight = |origin: &str| {
        let response = ureq::request("OPTIONS", &server.url("/v1/completions"))
            .set("Origin", origin)
            .set("Access-Control-Request-Method", "POST")
            .set("Access-Control-Request-Headers", "content-type,authorization")
            .call();
        let response = match response {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        (
            response.status(),
            response.header("access-control-allow-origin").map(str::to_string),
        )
    };
    // No API key on a preflight, yet answered.
    assert_eq!(
        preflight("https://app.example.com"),
        (200, Some("https://app.example.com".into()))
    );
    assert_eq!(preflight("http://elsewhere.example").1, None);
    let answer = ureq::post(&server.url("/v1/completions"))
        .set("Origin", "http://localhost:3000")
        .set("Authorization", "Bearer k")
        .send_json(json!({"prompt": "x", "max_tokens": 1}))
        .unwrap();
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(
        answer.header("access-control-expose-headers"),
        Some("x-latency-ms")
    );

    let plain = start(&[]);
    let answer = ureq::get(&plain.url("/health"))
        .set("Origin", "http://localhost:3000")
        .call()
        .unwrap();
    assert_eq!(answer.header("access-control-allow-origin"), None);
    let refused = std::process::Command::new(BINARY)
        .args(["serve", "--cors-allow-origin", "localhost:3000"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not an origin"));
}

#[test]
fn the_openapi_document_validates_and_every_routes_answer_matches_it() {
    let server = start(&[]);
    let Some(seen) = common::check_openapi(&server, "textgen", &[]) else {
        return;
    };
    assert_eq!(seen["openapi"], "3.1.0");
    assert!(seen["routes"].as_u64() >= Some(20), "{seen}");
}
