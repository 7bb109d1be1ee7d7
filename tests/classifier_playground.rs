//! The classifier's playground page (`GET /`) in headless Chromium: a photo picked in the page
//! is shown with `/v1/classify`'s top labels as bars, and the latency. Skipped, with the reason
//! printed, where PLAYGROUND_TEST_PYTHON is not set.

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

#[test]
fn the_playground_classifies_a_photo_picked_in_the_browser() {
    let model = common::tiny_model();
    let server = common::Server::start(BINARY, &["--model", model.to_str().unwrap()], &[]);
    common::assert_playground_page(&server);
    let photo = model.join("images/synthetic-1-224x224.png");
    let Some(seen) = common::drive_playground(&server, "classifier", &["--photo", photo.to_str().unwrap()])
    else {
        return;
    };
    assert_eq!(seen["labels"].as_array().map(Vec::len), Some(3), "{seen}");
}
