//! The real `classifier` binary over real HTTP: every input form, the operational routes, bad
//! input of every kind, the API key, and draining on SIGTERM.

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

use base64::Engine;
use common::{connect_and_send, get, get_with, multipart, post, read_until_closed, Server};
use serde_json::{json, Value};

fn fixture_image(name: &str) -> Vec<u8> {
    std::fs::read(common::tiny_model().join("images").join(name)).unwrap()
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::tiny_model().join("reference.json")).unwrap())
        .unwrap()
}

fn tiny_server(extra: &[&str]) -> Server {
    let model = common::tiny_model();
    let mut args = vec!["--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(BINARY, &args, &[])
}

/// timm's top-5 for a 224x224 PNG (no resize) must come back with probabilities within 1e-4.
fn assert_matches_reference(predictions: &Value, expected: &Value) {
    let got = predictions.as_array().unwrap();
    let want = expected.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{predictions}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["index"], w["index"], "got {predictions}, want {expected}");
        assert_eq!(g["label"], w["label"]);
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!((gs - ws).abs() < 1e-4, "score {gs} vs reference {ws}");
    }
}

#[test]
fn every_input_form_matches_timm() {
    let server = tiny_server(&[]);
    let reference = reference();
    let names = [
        "synthetic-0-224x224.png",
        "synthetic-1-224x224.png",
        "synthetic-2-224x224.png",
    ];

    for name in names {
        let answer = post(
            &server.url("/v1/classify"),
            Some("image/png"),
            &fixture_image(name),
            &[],
        );
        assert_eq!(answer.status, 200, "{}", answer.text);
        let body = answer.json();
        assert_eq!(body["model"], "mobilenetv2-tiny");
        assert_matches_reference(
            &body["results"][0]["predictions"],
            &reference["images"][name]["top5"],
        );
    }

    // Raw bytes with a generic type are sniffed; `/` and `/invocations` are the same endpoint.
    for path in ["/", "/invocations"] {
        let answer = post(
            &server.url(path),
            Some("application/octet-stream"),
            &fixture_image(names[0]),
            &[],
        );
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_matches_reference(
            &answer.json()["results"][0]["predictions"],
            &reference["images"][names[0]]["top5"],
        );
    }

    // Multipart: one result per file part, in order; top_k as a form field.
    let images: Vec<Vec<u8>> = names.iter().map(|n| fixture_image(n)).collect();
    let files: Vec<(&str, &str, &[u8])> = names
        .iter()
        .zip(&images)
        .map(|(n, b)| ("file", *n, b.as_slice()))
        .collect();
    let (content_type, body) = multipart(&files, &[("top_k", "3")]);
    let answer = post(&server.url("/v1/classify"), Some(&content_type), &body, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text);
    let results = answer.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    for (result, name) in results.iter().zip(names) {
        let want: Vec<Value> = reference["images"][name]["top5"].as_array().unwrap()[..3].to_vec();
        assert_matches_reference(&result["predictions"], &Value::Array(want));
    }

    // JSON with base64 (plain and as a data URL); top_k in the body.
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let request = json!({
        "images": [b64(&images[2]), format!("data:image/png;base64,{}", b64(&images[0]))],
        "top_k": 2,
        "model": "anything",
    });
    let answer = post(
        &server.url("/v1/classify"),
        Some("application/json"),
        request.to_string().as_bytes(),
        &[],
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    let results = answer.json()["results"].clone();
    assert_eq!(results[0]["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(
        results[0]["predictions"][0]["index"],
        reference["images"][names[2]]["top5"][0]["index"]
    );
    assert_eq!(
        results[1]["predictions"][0]["index"],
        reference["images"][names[0]]["top5"][0]["index"]
    );

    // top_k as a query parameter.
    let answer = post(
        &server.url("/v1/classify?top_k=1"),
        Some("image/png"),
        &images[1],
        &[],
    );
    assert_eq!(
        answer.json()["results"][0]["predictions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Features: the pooled vector, whose first values timm also printed.
    let answer = post(&server.url("/v1/features"), Some("image/png"), &images[0], &[]);
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body = answer.json();
    assert_eq!(body["dim"], 64);
    let features = body["results"][0]["features"].as_array().unwrap();
    assert_eq!(features.len(), 64);
    for (got, want) in features
        .iter()
        .zip(reference["images"][names[0]]["features_head"].as_array().unwrap())
    {
        assert!(
            (got.as_f64().unwrap() - want.as_f64().unwrap()).abs() < 1e-4,
            "{got} vs {want}"
        );
    }
}

/// A 300x200 image goes through timm's resize (bicubic, shorter side to 224) and centre crop;
/// the resize reproduces Pillow's exactly, so the answer still matches within 1e-4.
#[test]
fn resized_image_matches_timm() {
    let server = tiny_server(&[]);
    let name = "synthetic-3-300x200.png";
    let answer = post(
        &server.url("/v1/classify"),
        Some("image/png"),
        &fixture_image(name),
        &[],
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_matches_reference(
        &answer.json()["results"][0]["predictions"],
        &reference()["images"][name]["top5"],
    );
}

#[test]
fn operational_routes() {
    let server = tiny_server(&[]);
    let health = get(&server.url("/health"));
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ready");
    assert_eq!(get(&server.url("/v2/health/live")).status, 200);
    assert_eq!(get(&server.url("/v2/health/ready")).status, 200);

    let models = get(&server.url("/v1/models")).json();
    let card = &models["data"][0];
    assert_eq!(models["object"], "list");
    assert_eq!(card["id"], "mobilenetv2-tiny");
    assert_eq!(card["details"]["num_classes"], 10);
    assert_eq!(card["details"]["labels"][4], "tulips");
    assert!(
        card["checksum"].as_str().unwrap().starts_with("sha256:"),
        "{card}"
    );
    let phases: Vec<&str> = card["init_phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "resolve_weights",
            "read_config",
            "load_weights",
            "build_model",
            "warm_up",
            "bind"
        ]
    );

    post(
        &server.url("/v1/classify"),
        Some("image/png"),
        &fixture_image("synthetic-0-224x224.png"),
        &[],
    );
    post(&server.url("/v1/classify"), Some("text/plain"), b"hello", &[]);
    let metrics = get(&server.url("/metrics"));
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type.starts_with("text/plain"));
    for needle in [
        "http_requests_total{route=\"/v1/classify\",method=\"POST\",status=\"200\"} 1",
        "http_requests_total{route=\"/v1/classify\",method=\"POST\",status=\"415\"} 1",
        "http_request_duration_seconds_bucket{route=\"/v1/classify\",le=\"+Inf\"} 2",
        "http_requests_in_flight 1",
        "model_batch_size_count 1",
        "init_phase_duration_seconds{phase=\"warm_up\"}",
    ] {
        assert!(
            metrics.text.contains(needle),
            "missing `{needle}` in\n{}",
            metrics.text
        );
    }
}

#[test]
fn bad_inputs_get_4xx_json_errors_and_the_server_stays_healthy() {
    let server = tiny_server(&["--max-body-bytes", "200000"]);
    let url = server.url("/v1/classify");
    let png = fixture_image("synthetic-0-224x224.png");

    // A truncated image: a real PNG cut in half.
    assert_eq!(
        post(&url, Some("image/png"), &png[..png.len() / 2], &[]).expect_error(422),
        "invalid_image"
    );
    // A truncated JPEG (from shared data when present, else a JPEG header alone).
    let jpeg = common::shared_data("flowers5/tulips")
        .and_then(|dir| std::fs::read_dir(dir).ok()?.flatten().next())
        .map(|entry| std::fs::read(entry.path()).unwrap())
        .unwrap_or_else(|| b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00".to_vec());
    assert_eq!(
        post(&url, Some("image/jpeg"), &jpeg[..jpeg.len() / 3], &[]).expect_error(422),
        "invalid_image"
    );
    assert_eq!(
        post(&url, Some("image/png"), b"", &[]).expect_error(400),
        "bad_request"
    );
    assert_eq!(
        post(&url, Some("image/jpeg"), b"just some text, not an image", &[]).expect_error(422),
        "invalid_image"
    );

    // A PNG header claiming 50000x50000 pixels: refused before decoding.
    let bomb = common::png_bomb();
    let answer = post(&url, Some("image/png"), &bomb, &[]);
    assert_eq!(answer.expect_error(422), "image_too_large");
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("50000x50000"));

    assert_eq!(
        post(&url, Some("text/plain"), &png, &[]).expect_error(415),
        "unsupported_media_type"
    );
    assert_eq!(
        post(&url, None, &png, &[]).expect_error(415),
        "unsupported_media_type"
    );
    let bad_base64 = json!({"images": ["not base64 at all!!"]}).to_string();
    assert_eq!(
        post(&url, Some("application/json"), bad_base64.as_bytes(), &[]).expect_error(422),
        "invalid_base64"
    );
    assert_eq!(
        post(&url, Some("application/json"), b"{\"images\": [", &[]).expect_error(400),
        "bad_request"
    );
    assert_eq!(
        post(&url, Some("application/json"), b"{\"images\": []}", &[]).expect_error(400),
        "bad_request"
    );
    let wrong_type = json!({"images": "abc"}).to_string();
    assert_eq!(
        post(&url, Some("application/json"), wrong_type.as_bytes(), &[]).expect_error(400),
        "bad_request"
    );
    let malformed = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nabc";
    post(&url, Some("multipart/form-data; boundary=xyz"), malformed, &[]).expect_error(400);
    post(&url, Some("multipart/form-data"), &png, &[]).expect_error(400);
    let (ct, no_files) = multipart(&[], &[("note", "no files here")]);
    assert_eq!(
        post(&url, Some(&ct), &no_files, &[]).expect_error(400),
        "bad_request"
    );

    for top_k in ["0", "100000"] {
        let answer = post(&format!("{url}?top_k={top_k}"), Some("image/png"), &png, &[]);
        assert_eq!(answer.expect_error(422), "invalid_top_k");
    }
    post(&format!("{url}?top_k=-1"), Some("image/png"), &png, &[]).expect_error(400);
    let json_top_k =
        json!({"images": [base64::engine::general_purpose::STANDARD.encode(&png)], "top_k": 100000});
    assert_eq!(
        post(
            &url,
            Some("application/json"),
            json_top_k.to_string().as_bytes(),
            &[]
        )
        .expect_error(422),
        "invalid_top_k"
    );

    let too_big = vec![0u8; 300_000];
    assert_eq!(
        post(&url, Some("image/png"), &too_big, &[]).expect_error(413),
        "payload_too_large"
    );

    assert_eq!(get(&server.url("/no/such/route")).expect_error(404), "not_found");
    assert_eq!(get(&url).expect_error(405), "method_not_allowed");

    // Still healthy, and still right.
    assert_eq!(get(&server.url("/health")).status, 200);
    let answer = post(&url, Some("image/png"), &png, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_matches_reference(
        &answer.json()["results"][0]["predictions"],
        &reference()["images"]["synthetic-0-224x224.png"]["top5"],
    );
}

#[test]
fn api_key_guards_everything_but_health() {
    let model = common::tiny_model();
    let server = Server::start(
        BINARY,
        &["--model", model.to_str().unwrap()],
        &[("API_KEY", "s3cret")],
    );
    let png = fixture_image("synthetic-0-224x224.png");
    assert_eq!(get(&server.url("/health")).status, 200);
    assert_eq!(
        post(&server.url("/v1/classify"), Some("image/png"), &png, &[]).expect_error(401),
        "invalid_api_key"
    );
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(
        post(&server.url("/v1/classify"), Some("image/png"), &png, &wrong).expect_error(401),
        "invalid_api_key"
    );
    assert_eq!(get(&server.url("/metrics")).expect_error(401), "invalid_api_key");
    let right = [("Authorization", "Bearer s3cret")];
    assert_eq!(
        post(&server.url("/v1/classify"), Some("image/png"), &png, &right).status,
        200
    );
    assert_eq!(get_with(&server.url("/v1/models"), &right).status, 200);
}

#[test]
fn concurrency_limit_answers_429_with_retry_after() {
    let server = tiny_server(&["--max-concurrency", "1"]);
    let heavy = common::heavy_classify_request();
    let url = server.url("/v1/classify");
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    let answer = post(&url, Some("application/json"), heavy.as_bytes(), &[]);
                    (answer.status, answer.retry_after.clone())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "no request was refused: {statuses:?}");
    assert!(
        refused.iter().all(|(_, retry)| retry.as_deref() == Some("1")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{statuses:?}"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let server = tiny_server(&[]);
    let (answers, status, took) =
        common::stop_with_requests_in_flight(server, "/v1/classify", &common::heavy_classify_request(), 4);
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "stopping took {took:?}, over the shutdown timeout"
    );
    for answer in answers {
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.json()["results"].as_array().unwrap().len(), 48);
    }
}

#[test]
fn real_flower_photos_are_classified() {
    let Some(dir) = common::shared_data("flowers5") else {
        return;
    };
    let server = tiny_server(&[]);
    for class in ["daisy", "tulips"] {
        let photos: Vec<_> = std::fs::read_dir(dir.join(class))
            .unwrap()
            .flatten()
            .take(3)
            .collect();
        for photo in photos {
            let answer = post(
                &server.url("/v1/classify"),
                Some("image/jpeg"),
                &std::fs::read(photo.path()).unwrap(),
                &[],
            );
            assert_eq!(answer.status, 200, "{}: {}", photo.path().display(), answer.text);
            let predictions = answer.json()["results"][0]["predictions"]
                .as_array()
                .unwrap()
                .clone();
            assert_eq!(predictions.len(), 5);
            let total: f64 = predictions.iter().map(|p| p["score"].as_f64().unwrap()).sum();
            assert!(total > 0.0 && total <= 1.0 + 1e-5);
        }
    }
}

#[test]
fn port_comes_from_the_environment() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let model = common::tiny_model();
    let server = Server::start(
        BINARY,
        &["--model", model.to_str().unwrap()],
        &[("PORT", &free.to_string())],
    );
    assert_eq!(server.base, format!("http://127.0.0.1:{free}"));
    assert_eq!(get(&server.url("/health")).status, 200);
}

#[test]
fn slow_requests_time_out_with_503() {
    let server = tiny_server(&["--request-timeout", "0.001"]);
    let answer = post(
        &server.url("/v1/classify"),
        Some("application/json"),
        common::heavy_classify_request().as_bytes(),
        &[],
    );
    assert_eq!(answer.expect_error(503), "timeout");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(get(&server.url("/health")).status, 200);
}

/// `CPU_KERNELS` picks a lower level, which the model card and `/metrics` name; a name that
/// is no level stops the start with exit code 2 and says why.
#[test]
fn cpu_kernels_choose_the_level_or_stop_the_start() {
    let model = common::tiny_model();
    let server = Server::start(
        BINARY,
        &["--model", model.to_str().unwrap()],
        &[("CPU_KERNELS", "portable")],
    );
    let card = get(&server.url("/v1/models")).json();
    assert_eq!(card["data"][0]["kernels"], "portable", "{card}");
    let metrics = get(&server.url("/metrics")).text;
    assert!(metrics.contains("kernels=\"portable\""), "{metrics}");
    drop(server);

    let refused = std::process::Command::new(BINARY)
        .args(["serve", "--port", "0", "--model", model.to_str().unwrap()])
        .env("CPU_KERNELS", "sse9")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("CPU_KERNELS=\"sse9\" is not a level"), "{stderr}");
}

/// The head of a request for /v1/classify with a body of `length` bytes.
fn classify_head(length: usize) -> String {
    format!(
        "POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[test]
fn bodies_past_the_shared_byte_budget_are_refused_at_once_and_the_budget_comes_back() {
    use std::io::Write;
    let server = tiny_server(&["--max-body-bytes", "800000", "--max-buffered-bytes", "1000000"]);
    let image = fixture_image("synthetic-0-224x224.png");
    // A client that has declared 700,000 bytes and sent a few holds them in the budget...
    let declared = 700_000;
    let mut holding = connect_and_send(server.address(), classify_head(declared).as_bytes());
    holding.write_all(&vec![0u8; 1000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // ... so a body of 500,000 more is refused without waiting, and a small one still fits.
    let big = post(
        &server.url("/v1/classify"),
        Some("application/octet-stream"),
        &vec![1u8; 500_000],
        &[],
    );
    assert_eq!(big.expect_error(429), "overloaded");
    assert!(
        big.text.contains("1000000 bytes of request bodies"),
        "{}",
        big.text
    );
    assert_eq!(big.retry_after.as_deref(), Some("1"));
    let small = post(&server.url("/v1/classify"), Some("image/png"), &image, &[]);
    assert_eq!(small.status, 200, "{}", small.text);
    // Once the first body has arrived and been answered, its bytes are back in the budget.
    holding.write_all(&vec![0u8; declared - 1000]).unwrap();
    let (answer, _) = read_until_closed(&mut holding, std::time::Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    let big = post(
        &server.url("/v1/classify"),
        Some("application/octet-stream"),
        &vec![1u8; 500_000],
        &[],
    );
    assert_eq!(big.expect_error(422), "invalid_image");
    let metrics = get(&server.url("/metrics")).text;
    assert!(
        metrics.contains("classifier_bodies_over_budget_total 1"),
        "{metrics}"
    );
}

#[test]
fn half_sent_and_idle_connections_are_closed_after_their_timeouts() {
    use std::time::Duration;
    let server = tiny_server(&["--header-timeout", "1", "--body-timeout", "1.5"]);
    let mut half_body = connect_and_send(
        server.address(),
        format!("{}x", classify_head(100_000)).as_bytes(),
    );
    let mut half_line = connect_and_send(server.address(), b"POST /v1/cla");
    let mut idle = connect_and_send(server.address(), b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n");
    // Meanwhile the server answers.
    assert_eq!(get(&server.url("/health")).status, 200);
    let (answer, waited) = read_until_closed(&mut half_body, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(answer.contains("within 1.5 s"), "{answer}");
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    let (answer, waited) = read_until_closed(&mut half_line, Duration::from_secs(10));
    assert_eq!(answer, "", "a half-sent request line gets no answer");
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    // A kept-alive connection gets its answer, then is closed once idle for the header timeout.
    let (answer, waited) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    let metrics = get(&server.url("/metrics")).text;
    assert!(metrics.contains("classifier_body_timeouts_total 1"), "{metrics}");
}

#[test]
fn connections_over_the_cap_are_answered_429_and_closed() {
    let server = tiny_server(&["--max-connections", "2"]);
    let first = connect_and_send(server.address(), b"");
    let second = connect_and_send(server.address(), b"");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut third = connect_and_send(server.address(), b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n");
    let (answer, _) = read_until_closed(&mut third, std::time::Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("2 connections open, its limit"), "{answer}");
    drop((first, second));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(get(&server.url("/health")).status, 200);
    let metrics = get(&server.url("/metrics")).text;
    assert!(
        metrics.contains("classifier_connections_refused_total 1"),
        "{metrics}"
    );
}

#[test]
fn broken_weights_or_config_stop_the_start_with_exit_2_and_one_line_naming_the_file() {
    common::broken_weights_stop_the_start(env!("CARGO_BIN_EXE_classifier"), &common::tiny_model());
}

#[test]
fn the_openapi_document_validates_and_every_routes_answer_matches_it() {
    let server = tiny_server(&[]);
    let photo = common::tiny_model().join("images/synthetic-0-224x224.png");
    let Some(seen) = common::check_openapi(&server, "classifier", &[photo.to_str().unwrap()]) else {
        return;
    };
    assert_eq!(seen["openapi"], "3.1.0");
    assert!(seen["routes"].as_u64() >= Some(16), "{seen}");
}
