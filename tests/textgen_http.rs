//! The real `textgen` binary over real HTTP, on the tiny GPT-2 fixture with GPT-2's real
//! tokenizer: greedy text identical to `transformers`' `generate`, echo logprobs within 1e-5
//! (on random weights and on trained ones),
//! streaming framing and equality with the plain answer, seeds, stop strings, bad requests,
//! a client that goes away, and the official `openai` client.

mod common;

use std::io::{BufRead, BufReader, Write};

use common::{get, post, Server};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_textgen");

/// The tiny GPT-2 fixture (no tokenizer files: the built-in BPE is used).
fn start(extra: &[&str]) -> Option<Server> {
    Some(start_fixture("gpt2-tiny", extra))
}

/// A committed GPT-2 fixture: `gpt2-tiny` (random weights) or `gpt2-tiny-trained`.
fn start_fixture(name: &str, extra: &[&str]) -> Server {
    let dir = common::root().join("tests/fixtures").join(name);
    let mut args = vec!["--model", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(BINARY, &args, &[])
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

fn reference(fixture: &str) -> Value {
    let path = common::root()
        .join("tests/fixtures")
        .join(fixture)
        .join("reference.json");
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
    for fixture in ["gpt2-tiny", "gpt2-tiny-trained"] {
        let server = start_fixture(fixture, &[]);
        for case in reference(fixture)["prompts"].as_array().unwrap() {
            greedy_text_and_echo_logprobs_match(&server, case);
        }
    }
}

fn greedy_text_and_echo_logprobs_match(server: &Server, case: &Value) {
    let prompt = ids(&case["tokens"]);
    let greedy = ids(&case["greedy"]);
    // Token prompts, so the comparison does not depend on re-encoding decoded text.
    let body = json!({"prompt": prompt, "max_tokens": greedy.len(), "temperature": 0, "logprobs": 0});
    let answer = complete(server, body);
    let choice = &answer["choices"][0];
    let tokens = choice["logprobs"]["tokens"].as_array().unwrap().len();
    assert_eq!(tokens, greedy.len());
    assert_eq!(answer["usage"]["completion_tokens"], greedy.len());
    assert_eq!(choice["finish_reason"], "length");
    // Text identical to transformers' greedy tokens, decoded (echo of them with 0 new tokens).
    let decoded = complete(server, json!({"prompt": greedy, "max_tokens": 0, "echo": true}));
    assert_eq!(choice["text"], decoded["choices"][0]["text"]);

    // The same prompt as text, through the engines path, gives the same completion text.
    let text_prompt = complete(server, json!({"prompt": prompt, "max_tokens": 0, "echo": true}))["choices"]
        [0]["text"]
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
        server,
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
            (got - want).abs() < 1e-5,
            "echo logprob {got} vs transformers {want}"
        );
    }
}

/// Reads an SSE response: the `data:` payloads in order.
fn sse(server: &Server, body: Value) -> Vec<String> {
    common::sse(server.address(), "/v1/completions", &body)
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
    let args = [server.base.as_str(), "The quick brown fox jumps over the"];
    let seen = common::run_python(&python, "tests/openai_client.py", &args);
    assert_eq!(seen["text"], seen["streamed"]);
    assert_eq!(seen["scored_tokens"].as_array().unwrap().len(), 7);
    assert_eq!(seen["embedding_dims"], json!([16, 16]));
    eprintln!("openai client: {seen}");
}

/// The news corpus from ../shared/data when it is there, else the committed toy corpus; with a
/// query made from one of its documents and that document's index and id.
fn corpus() -> (std::path::PathBuf, &'static str, usize, &'static str) {
    match common::shared_data("corpus/news.jsonl") {
        Some(news) => (news, "bushfire Hill Top residents vacate homes", 0, "news-0000"),
        None => (
            common::root().join("tests/fixtures/corpus-toy.jsonl"),
            "evacuate Hill Top residents as fire crews arrive in winter",
            3,
            "fire-2",
        ),
    }
}

/// The write-up's examples (search, then completions) with one 0.x `openai` client.
fn the_write_ups_examples_run_unchanged_with(variable: &str, version: &str) {
    let Ok(python) = std::env::var(variable) else {
        eprintln!("skipped: {variable} is not set (.ci/run sets it to a Python with openai {version})");
        return;
    };
    let (corpus, query, _, id) = corpus();
    let Some(server) = start(&["--corpus", corpus.to_str().unwrap()]) else {
        return;
    };
    let args = [server.base.as_str(), query, id];
    let seen = common::run_python(&python, "tests/openai_v0_example.py", &args);
    assert_eq!(seen["openai"], version);
    assert_eq!(seen["results"][0]["_id"], id);
    eprintln!("openai {version}, the write-up's examples: {seen}");
}

#[test]
fn the_write_ups_examples_run_unchanged_with_openai_0_7_0() {
    the_write_ups_examples_run_unchanged_with("TEXTGEN_TEST_PYTHON_OPENAI_0_7", "0.7.0");
}

#[test]
fn the_write_ups_examples_run_unchanged_with_openai_0_25() {
    the_write_ups_examples_run_unchanged_with("TEXTGEN_TEST_PYTHON_OPENAI_0_25", "0.25.0");
}

fn search(server: &Server, path: &str, body: Value) -> common::Answer {
    common::post_json(&server.url(path), &body)
}

#[test]
fn search_over_a_loaded_corpus_and_over_request_documents() {
    let (corpus, query, expected, id) = corpus();
    let Some(server) = start(&["--corpus", corpus.to_str().unwrap()]) else {
        return;
    };
    let models = get(&server.url("/v1/models")).json();
    let file = corpus.file_name().unwrap().to_str().unwrap();
    assert_eq!(models["data"][0]["details"]["corpus"]["file"], file);
    assert!(models["data"][0]["init_phases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "load_corpus"));

    // BM25 alone (the rerank weight extension at 0): the source document first.
    let answer = search(
        &server,
        "/v1/search",
        json!({"query": query, "max_rerank": 5, "rerank_weight": 0, "file": file}),
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let lexical = answer.json();
    assert_eq!(lexical["object"], "list");
    assert_eq!(lexical["model"], "gpt2-tiny");
    assert_eq!(lexical["data"][0]["document"], expected);
    assert!(lexical["data"][0].get("text").is_none());

    // With GPT-2 and metadata, through the engines path, unknown fields accepted.
    let answer = search(
        &server,
        "/v1/engines/davinci/search",
        json!({"query": query, "max_rerank": 5, "return_metadata": true, "search_model": "ada", "sort": "relevance"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let reranked = answer.json();
    let data = reranked["data"].as_array().unwrap();
    assert_eq!(data.len(), 5);
    let scores: Vec<f64> = data.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let top = &data[0];
    assert_eq!(top["object"], "search_result");
    assert_eq!(top["metadata"]["id"], id);
    let line = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .nth(expected)
        .unwrap()
        .to_string();
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(top["text"], line["text"]);
    // With metadata, `document` is the document itself, as the write-up's example reads it.
    let document = &top["document"];
    assert_eq!(document["_id"], id);
    assert_eq!(document["_score"], top["score"]);
    assert_eq!(document["content"], line["text"]);
    assert_eq!(
        document["metadata"],
        line.get("metadata").cloned().unwrap_or(json!({}))
    );
    assert_eq!(document["index"], expected);
    // The same candidates as BM25 kept, the scores moved by the model.
    let mut lexical_set: Vec<u64> = lexical["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["document"].as_u64().unwrap())
        .collect();
    let mut reranked_set: Vec<u64> = data
        .iter()
        .map(|r| r["document"]["index"].as_u64().unwrap())
        .collect();
    lexical_set.sort();
    reranked_set.sort();
    assert_eq!(lexical_set, reranked_set);
    assert_ne!(lexical["data"][0]["score"], top["score"]);

    // A request's own documents: all ranked when they fit in max_rerank, indices into the list.
    let documents = json!([
        "The cabinet met today.",
        "Firefighters fought the bushfire.",
        "A bushfire threatens Hill Top homes."
    ]);
    let answer = search(
        &server,
        "/v1/search",
        json!({"query": "bushfire Hill Top", "documents": documents, "return_metadata": true}),
    );
    let data = answer.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["document"]["index"], 2);
    assert_eq!(data[0]["document"]["_id"], "2");
    assert_eq!(data[0]["document"]["content"], documents[2]);
    assert_eq!(data[0]["document"]["metadata"], Value::Null);
    assert_eq!(data[0]["text"], documents[2]);
    assert_eq!(data[0]["metadata"], Value::Null);

    // The model steps the searches took are counted by kind, with their time.
    let metrics = get(&server.url("/metrics")).text;
    for family in [
        "model_step_rows_count{kind=\"search\"}",
        "model_step_duration_seconds_count",
    ] {
        let line = metrics.lines().find(|l| l.starts_with(family));
        let count: f64 = line
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {family}:\n{metrics}"));
        assert!(count >= 2.0, "{family}: {count}");
    }
    assert!(
        !metrics.contains("kind=\"generate\""),
        "no generation ran:\n{metrics}"
    );
}

#[test]
fn reranking_reorders_request_documents_when_the_model_is_weighted_in() {
    let Some(server) = start(&[]) else { return };
    let documents = json!([
        "Fire crews fought a bushfire near Sydney on Tuesday.",
        "The council met to discuss the fire station budget.",
        "A fire broke out in a Melbourne warehouse overnight.",
        "Cricket: Australia beat India by six wickets in Sydney.",
        "Firefighters say the fire near the highway is contained."
    ]);
    let order = |weight: f64| -> Vec<u64> {
        let answer = search(
            &server,
            "/v1/search",
            json!({"query": "fire", "documents": documents, "rerank_weight": weight}),
        );
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["document"].as_u64().unwrap())
            .collect()
    };
    let lexical = order(0.0);
    let reranked = order(100.0);
    assert_eq!(lexical.len(), 5);
    assert_eq!(
        *lexical.last().unwrap(),
        3,
        "the document without `fire` is last by BM25"
    );
    assert_ne!(lexical, reranked, "the model's scores changed nothing");
}

#[test]
fn bad_search_and_embedding_requests_get_4xx_json_errors() {
    let toy = common::root().join("tests/fixtures/corpus-toy.jsonl");
    let Some(server) = start(&[
        "--corpus",
        toy.to_str().unwrap(),
        "--max-search-documents",
        "4",
        "--max-embedding-inputs",
        "3",
    ]) else {
        return;
    };
    let send =
        |path: &str, body: &str| post(&server.url(path), Some("application/json"), body.as_bytes(), &[]);
    assert_eq!(
        send("/v1/search", "{\"query\": ").expect_error(400),
        "bad_request"
    );
    assert_eq!(
        send("/v1/search", "{\"query\": 5}").expect_error(400),
        "bad_request"
    );
    assert_eq!(
        send("/v1/search", "{\"query\": \"x\", \"documents\": [1]}").expect_error(400),
        "bad_request"
    );
    for body in [
        json!({"query": "", "documents": ["a"]}),
        json!({"query": "   "}),
        json!({"documents": ["a"]}),
        json!({"query": "x", "documents": []}),
        json!({"query": "x", "documents": ["a", "b", "c", "d", "e"]}),
        json!({"query": "x", "documents": ["a"], "file": "corpus-toy.jsonl"}),
        json!({"query": "x", "max_rerank": 0}),
        json!({"query": "x", "max_rerank": 5}),
    ] {
        assert_eq!(
            send("/v1/search", &body.to_string()).expect_error(422),
            "invalid_value",
            "{body}"
        );
    }
    let long = "fire ".repeat(2_000);
    assert_eq!(
        send(
            "/v1/search",
            &json!({"query": long, "documents": ["a"]}).to_string()
        )
        .expect_error(422),
        "context_length_exceeded"
    );
    let answer = send(
        "/v1/search",
        &json!({"query": "x", "file": "other.jsonl"}).to_string(),
    );
    assert_eq!(answer.expect_error(404), "file_not_found");
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("corpus-toy.jsonl"));

    assert_eq!(
        send("/v1/embeddings", "{\"input\": {}}").expect_error(400),
        "bad_request"
    );
    for body in [
        json!({}),
        json!({"input": ""}),
        json!({"input": []}),
        json!({"input": ["a", ""]}),
        json!({"input": [[464], []]}),
        json!({"input": [[464, 99999]]}),
        json!({"input": ["a", "b", "c", "d"]}),
        json!({"input": "a", "dimensions": 8}),
    ] {
        assert_eq!(
            send("/v1/embeddings", &body.to_string()).expect_error(422),
            "invalid_value",
            "{body}"
        );
    }
    assert_eq!(
        send(
            "/v1/embeddings",
            &json!({"input": "hello ".repeat(2_000)}).to_string()
        )
        .expect_error(422),
        "context_length_exceeded"
    );
    assert_eq!(get(&server.url("/health")).status, 200);
}

#[test]
fn embeddings_match_transformers_in_every_input_form() {
    let Some(server) = start(&[]) else { return };
    let reference = reference("gpt2-tiny");
    let cases = reference["prompts"].as_array().unwrap();
    let want: Vec<Vec<f64>> = cases
        .iter()
        .map(|c| {
            c["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    let token_lists: Vec<Value> = cases.iter().map(|c| c["tokens"].clone()).collect();
    let embed = |body: Value| -> Value {
        let answer = post(
            &server.url("/v1/embeddings"),
            Some("application/json"),
            body.to_string().as_bytes(),
            &[],
        );
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.json()
    };
    let close = |got: &Value, want: &[f64]| {
        let got: Vec<f64> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4),
            "{got:?} vs {want:?}"
        );
    };
    let answer = embed(json!({"input": token_lists, "model": "text-embedding-ada-002"}));
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "gpt2-tiny");
    let tokens: usize = cases.iter().map(|c| c["tokens"].as_array().unwrap().len()).sum();
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);
    for (i, item) in answer["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        close(&item["embedding"], &want[i]);
    }
    // One token list; and text, which the tokenizer turns into the same tokens.
    close(
        &embed(json!({"input": cases[0]["tokens"]}))["data"][0]["embedding"],
        &want[0],
    );
    let text = "The quick brown fox jumps over the";
    close(&embed(json!({"input": text}))["data"][0]["embedding"], &want[0]);
    close(&embed(json!({"input": [text]}))["data"][0]["embedding"], &want[0]);
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

#[test]
fn the_search_command_prints_results_best_first() {
    let model = common::root().join("tests/fixtures/gpt2-tiny");
    let toy = common::root().join("tests/fixtures/corpus-toy.jsonl");
    let run = |extra: &[&str]| {
        let output = std::process::Command::new(BINARY)
            .args([
                "search",
                "--model",
                model.to_str().unwrap(),
                "--corpus",
                toy.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let table = run(&["--max-rerank", "3", "evacuate Hill Top residents"]);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].contains("score") && rows[0].contains("id"), "{table}");
    assert!(rows[1].contains("fire-2"), "{table}");
    let answer: Value = serde_json::from_str(&run(&["--json", "evacuate Hill Top residents"])).unwrap();
    assert_eq!(answer["data"][0]["metadata"]["id"], "fire-2");
    assert_eq!(answer["data"][0]["document"]["index"], 3);
    assert_eq!(answer["data"][0]["document"]["_id"], "fire-2");
}

#[test]
fn a_bad_corpus_fails_start_up_with_the_line_and_the_reason() {
    let model = common::root().join("tests/fixtures/gpt2-tiny");
    let dir = common::temp_dir("bad-corpus");
    let good = r#"{"id": "a", "text": "alpha"}"#;
    // `None`: the file is not there at all.
    for (name, text, expected) in [
        (
            "broken.jsonl",
            Some(format!("{good}\n{{\"id\": \"b\", \"text\": }}\n")),
            "corpus line 2: not JSON",
        ),
        (
            "duplicate.jsonl",
            Some(format!("{good}\n{good}\n")),
            "corpus line 2: id `a` is already the id of line 1",
        ),
        (
            "no-text.jsonl",
            Some("{\"id\": \"a\"}\n".to_string()),
            "corpus line 1: missing `text`",
        ),
        ("empty.jsonl", Some(String::new()), "the corpus has no documents"),
        ("missing.jsonl", None, "cannot read corpus"),
    ] {
        let path = dir.join(name);
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let output = std::process::Command::new(BINARY)
            .args([
                "serve",
                "--model",
                model.to_str().unwrap(),
                "--port",
                "0",
                "--corpus",
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

#[test]
fn concurrent_generations_are_batched_and_answer_as_if_alone() {
    let Some(server) = start(&[]) else { return };
    let requests: Vec<Value> = [
        ("The quick brown fox", 30),
        ("Hello, world", 12),
        ("I am a", 24),
        ("In the beginning", 40),
        ("Rust is", 18),
        ("Once upon a time", 33),
    ]
    .iter()
    .map(|(prompt, max_tokens)| json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1}))
    .collect();
    let alone: Vec<Value> = requests
        .iter()
        .map(|body| complete(&server, body.clone())["choices"][0].clone())
        .collect();
    let url = server.url("/v1/completions");
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|body| {
                let url = &url;
                scope.spawn(move || {
                    let answer = post(url, Some("application/json"), body.to_string().as_bytes(), &[]);
                    assert_eq!(answer.status, 200, "{}", answer.text);
                    answer.json()["choices"][0].clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(a["text"], t["text"]);
        assert_eq!(a["finish_reason"], t["finish_reason"]);
        let (a, t) = (&a["logprobs"]["token_logprobs"], &t["logprobs"]["token_logprobs"]);
        for (x, y) in a.as_array().unwrap().iter().zip(t.as_array().unwrap()) {
            assert!(
                (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-3,
                "{x} vs {y}"
            );
        }
    }
    // Some decode steps carried more than one generation.
    let metrics = get(&server.url("/metrics")).text;
    let value = |prefix: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let single = value("model_batch_size_bucket{le=\"1\"}");
    let steps = value("model_batch_size_count");
    assert!(single < steps, "every step ran one generation:\n{metrics}");
}

#[test]
fn error_messages_quote_only_the_start_of_a_huge_input() {
    let Some(server) = start(&[]) else { return };
    let huge = "A".repeat(200_000);
    let answers = [
        // A parser's message, which quotes the offending value.
        post(
            &server.url("/v1/completions"),
            Some("application/json"),
            json!({"prompt": "x", "max_tokens": huge}).to_string().as_bytes(),
            &[],
        ),
        post(
            &server.url("/v1/completions"),
            Some("application/json"),
            json!({"prompt": "x", "logit_bias": {huge.clone(): 1}})
                .to_string()
                .as_bytes(),
            &[],
        ),
        search(&server, "/v1/search", json!({"query": "x", "file": huge})),
    ];
    for answer in answers {
        assert!(answer.status >= 400 && answer.status < 500, "{}", answer.status);
        let message = answer.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.chars().count() <= 1100, "{} characters", message.len());
        assert!(message.contains("AAAA"), "{message}");
    }
}

#[test]
fn broken_weights_or_config_stop_the_start_with_exit_2_and_one_line_naming_the_file() {
    let fixture = common::root().join("tests/fixtures/gpt2-tiny");
    common::broken_weights_stop_the_start(BINARY, &fixture);
    // A config that disagrees with the weights, and tokenizer files that cannot be read.
    let disagreeing = common::temp_dir("gpt2-wider-config");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(file), disagreeing.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&config).unwrap();
    config["n_embd"] = json!(32);
    std::fs::write(disagreeing.join("config.json"), config.to_string()).unwrap();
    let (code, lines) = common::failed_start(BINARY, &disagreeing);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    eprintln!("wider config: {}", lines[0]);
    std::fs::write(
        disagreeing.join("config.json"),
        std::fs::read(fixture.join("config.json")).unwrap(),
    )
    .unwrap();
    std::fs::write(disagreeing.join("tokenizer.json"), b"{not json").unwrap();
    let (code, lines) = common::failed_start(BINARY, &disagreeing);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("tokenizer.json"), "{}", lines[0]);
}
