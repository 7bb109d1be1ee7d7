//! textgen on a CPU without AVX: the real binary under `qemu-x86_64 -cpu Westmere` picks the
//! portable kernels and writes the native run's greedy text, token for token.

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_textgen");

fn greedy(qemu: Option<&std::path::Path>) -> String {
    let model = common::root().join("tests/fixtures/gpt2-tiny");
    common::run_maybe_emulated(
        qemu,
        BINARY,
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "The quick brown fox",
        ],
    )
}

#[test]
fn a_cpu_without_avx_writes_the_same_greedy_text() {
    let Some(qemu) = common::qemu() else { return };
    let native = greedy(None);
    let emulated = greedy(Some(&qemu));
    assert!(native.len() > "The quick brown fox".len(), "{native:?}");
    assert_eq!(native, emulated);
    eprintln!("native and without AVX: {native:?}");
}
