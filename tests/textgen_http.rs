//! The real `textgen` binary over real HTTP, on the tiny GPT-2 fixture with GPT-2's real
//! tokenizer: greedy text identical to `transformers`' `generate`, echo logprobs within 1e-4,
//! streaming framing and equality with the plain answer, seeds, stop strings, bad requests,
//! a client that goes away, and the official `openai` client.

mod common;

use std::io::{BufRead, BufReader, Write};

use common::{get, post, Server};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_textgen");

/// The tiny GPT-2 fixture (no tokenizer files: the built-in BPE is used).
fn start(extra: &[&str]) -> Option<Server> {
    let dir = common::root().join("tests/fixtures/gpt2-tiny");
    let mut args = vec!["--model", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Some(Server::start(BINARY, &args, &[]))
}

/// The fixture with GPT-2's vocab.json and merges.txt from ../shared/data next to it.
fn start_with_tokenizer_files() -> Option<Server> {
    let vocab = common::shared_data("gpt2-tokenizer")?;
    let dir = common::temp_dir("gpt2-tiny");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(
            common::root().join("tests/fixtures/gpt2-tiny").join(file),
            dir.join(file),
        )
        .unwrap();
    }
    std::fs::copy(vocab.join("encoder.json"), dir.join("vocab.json")).unwrap();
    std::fs::copy(vocab.join("vocab.bpe"), dir.join("merges.txt")).unwrap();
    Some(Server::start(BINARY, &["--model", dir.to_str().unwrap()], &[]))
}

fn reference() -> Value {
    let path = common::root().join("tests/fixtures/gpt2-tiny/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn complete(server: &Server, body: Value) -> Value {
    let answer = post(
        &server.url("/v1/completions"),
        Some("application/json"),
        body.to_string().as_bytes(),
        &[],
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn greedy_text_and_echo_logprobs_match_transformers() {
    let Some(server) = start(&[]) else { return };
    for case in reference()["prompts"].as_array().unwrap() {
        let prompt = ids(&case["tokens"]);
        let greedy = ids(&case["greedy"]);
        // Token prompts, so the comparison does not depend on re-encoding decoded text.
        let body = json!({"prompt": prompt, "max_tokens": greedy.len(), "temperature": 0, "logprobs": 0});
        let answer = complete(&server, body);
        let choice = &answer["choices"][0];
        let tokens = choice["logprobs"]["tokens"].as_array().unwrap().len();
        assert_eq!(tokens, greedy.len());
        assert_eq!(answer["usage"]["completion_tokens"], greedy.len());
        assert_eq!(choice["finish_reason"], "length");
        // Text identical to transformers' greedy tokens, decoded (echo of them with 0 new tokens).
        let decoded = complete(&server, json!({"prompt": greedy, "max_tokens": 0, "echo": true}));
        assert_eq!(choice["text"], decoded["choices"][0]["text"]);

        // The same prompt as text, through the engines path, gives the same completion text.
        let text_prompt = complete(&server, json!({"prompt": prompt, "max_tokens": 0, "echo": true}))
            ["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let engines = post(
            &server.url("/v1/engines/davinci/completions"),
            Some("application/json"),
            json!({"prompt": text_prompt, "max_tokens": greedy.len(), "temperature": 0})
                .to_string()
                .as_bytes(),
            &[],
        );
        assert_eq!(engines.json()["choices"][0]["text"], choice["text"]);

        let scored = complete(
            &server,
            json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 0}),
        );
        let logprobs = scored["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(logprobs.len(), prompt.len());
        assert!(logprobs[0].is_null());
        for (got, want) in logprobs[1..]
            .iter()
            .zip(case["token_logprobs"].as_array().unwrap())
        {
            let (got, want) = (got.as_f64().unwrap(), want.as_f64().unwrap());
            assert!(
                (got - want).abs() < 1e-4,
                "echo logprob {got} vs transformers {want}"
            );
        }
    }
}

/// Reads an SSE response: the `data:` payloads in order.
fn sse(server: &Server, body: Value) -> Vec<String> {
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let reader = BufReader::new(stream);
    let mut lines = reader.lines().map_while(Result::ok);
    let status = lines.next().unwrap();
    assert!(status.contains("200"), "{status}");
    let mut saw_event_stream = false;
    for line in lines.by_ref() {
        if line
            .to_ascii_lowercase()
            .starts_with("content-type: text/event-stream")
        {
            saw_event_stream = true;
        }
        if line.is_empty() {
            break;
        }
    }
    assert!(saw_event_stream, "not an event stream");
    lines
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[test]
fn streaming_sends_one_chunk_per_token_then_done_and_equals_the_plain_answer() {
    let Some(server) = start(&[]) else { return };
    let body =
        json!({"prompt": "The quick brown fox", "max_tokens": 9, "temperature": 0, "n": 2, "logprobs": 1});
    let plain = complete(&server, body.clone());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let data = sse(&server, streamed);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for index in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0])
            .filter(|c| c["index"] == index)
            .collect();
        let tokens: Vec<&&Value> = mine.iter().filter(|c| c["finish_reason"].is_null()).collect();
        assert_eq!(tokens.len(), 9, "one chunk per token");
        assert!(tokens
            .iter()
            .all(|c| c["logprobs"]["tokens"].as_array().unwrap().len() == 1));
        assert_eq!(mine.last().unwrap()["finish_reason"], "length");
        let text: String = mine.iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert_eq!(text, plain["choices"][index]["text"].as_str().unwrap());
    }
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "text_completion" && c["id"] == chunks[0]["id"]));
}

#[test]
fn seeds_and_stop_strings() {
    let Some(server) = start(&[]) else { return };
    let sampled = |seed: u64| {
        let body = json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "top_k": 50, "seed": seed});
        complete(&server, body)["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(sampled(42), sampled(42));
    assert_ne!(sampled(42), sampled(43));

    let greedy = complete(
        &server,
        json!({"prompt": "Hello", "max_tokens": 12, "temperature": 0}),
    );
    let text = greedy["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    // A stop string spanning the boundary between tokens, in the middle of the text.
    let stop: String = chars[chars.len() / 2 - 1..chars.len() / 2 + 2].iter().collect();
    let cut = complete(
        &server,
        json!({"prompt": "Hello", "max_tokens": 12, "temperature": 0, "stop": ["zzzz", stop]}),
    );
    let choice = &cut["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        choice["text"].as_str().unwrap(),
        &text[..text.find(&stop).unwrap()]
    );
}

#[test]
fn bad_requests_get_4xx_json_errors() {
    let Some(server) = start(&[]) else { return };
    let url = server.url("/v1/completions");
    let send = |body: &str| post(&url, Some("application/json"), body.as_bytes(), &[]);
    assert_eq!(send("{\"prompt\": ").expect_error(400), "bad_request");
    assert_eq!(
        send("{\"prompt\": \"x\", \"max_tokens\": \"many\"}").expect_error(400),
        "bad_request"
    );
    assert_eq!(send("{\"prompt\": 17}").expect_error(400), "bad_request");
    for body in [
        json!({"prompt": "x", "temperature": 3}),
        json!({"prompt": "x", "top_p": 1.5}),
        json!({"prompt": "x", "n": 0}),
        json!({"prompt": "x", "logprobs": 6}),
        json!({"prompt": "x", "presence_penalty": -3}),
        json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
        json!({"prompt": "x", "logit_bias": {"99999999": 1}}),
        json!({"prompt": []}),
        json!({"prompt": [[]]}),
    ] {
        let code = send(&body.to_string()).expect_error(422);
        assert_eq!(code, "invalid_value", "{body}");
    }
    let long = "hello ".repeat(5_000);
    let answer = send(&json!({"prompt": long}).to_string());
    assert_eq!(answer.expect_error(422), "context_length_exceeded");
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 1024"));
    let answer = send(&json!({"prompt": "x", "max_tokens": 1024}).to_string());
    assert_eq!(answer.expect_error(422), "context_length_exceeded");
    assert_eq!(get(&server.url("/health")).status, 200);
    assert_eq!(
        complete(&server, json!({"prompt": "x", "max_tokens": 2}))["choices"][0]["finish_reason"],
        "length"
    );
}

#[test]
fn a_client_that_goes_away_stops_its_generation() {
    let Some(server) = start(&[]) else { return };
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let body = json!({"prompt": "x", "max_tokens": 1000, "stream": true}).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = get(&server.url("/metrics")).text;
        if metrics.contains("textgen_generations_cancelled_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generation was not cancelled:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_official_openai_client_works_unchanged() {
    let Ok(python) = std::env::var("TEXTGEN_TEST_PYTHON") else {
        eprintln!("skipped: TEXTGEN_TEST_PYTHON is not set (.ci/run sets it to a Python with `openai`)");
        return;
    };
    let Some(server) = start(&[]) else { return };
    let script = common::root().join("tests/openai_client.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .args([server.base.as_str(), "The quick brown fox jumps over the"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["text"], seen["streamed"]);
    assert_eq!(seen["scored_tokens"].as_array().unwrap().len(), 7);
    eprintln!("openai client: {seen}");
}

#[test]
fn tokenizer_files_next_to_the_weights_give_the_same_answers() {
    let Some(with_files) = start_with_tokenizer_files() else {
        return;
    };
    let Some(builtin) = start(&[]) else { return };
    let body = json!({"prompt": "Héllo wörld 🦀, the quick brown fox", "max_tokens": 12, "temperature": 0, "echo": true});
    assert_eq!(
        complete(&with_files, body.clone())["choices"],
        complete(&builtin, body)["choices"]
    );
}
