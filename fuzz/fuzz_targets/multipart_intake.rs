//! Any bytes as a multipart/form-data body (and as JSON and raw bodies, by the first byte's
//! choice of Content-Type) through the classifier's intake: the list of encoded images and
//! `top_k`, or a 4xx error.
#![no_main]

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::Request;
use classifier::intake::Images;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 4] = [
    "multipart/form-data; boundary=X",
    "multipart/form-data; boundary=----classifier-test-boundary-7d1f",
    "application/json",
    "image/png",
];

fuzz_target!(|input: (u8, &[u8])| {
    let (choice, body) = input;
    let content_type = CONTENT_TYPES[usize::from(choice) % CONTENT_TYPES.len()];
    let Ok(request) = Request::builder()
        .method("POST")
        .uri("/v1/classify")
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    match runtime.block_on(Images::from_request(request, &())) {
        Ok(images) => assert!(!images.encoded.iter().any(|image| image.is_empty())),
        Err(error) => assert!(error.status.is_client_error(), "{error}"),
    }
});
