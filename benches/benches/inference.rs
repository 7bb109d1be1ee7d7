//! In-process benchmarks (criterion): the kernels, the two models' forward passes, the
//! tokenizer and image intake.
//!
//! ```text
//! python scripts/make_random_mobilenetv2.py /tmp/mnv2-224           # and --size 160 /tmp/mnv2-160
//! python scripts/make_random_gpt2.py /tmp/gpt2-124m
//! BENCH_MOBILENETV2=/tmp/mnv2-224,/tmp/mnv2-160 BENCH_GPT2=/tmp/gpt2-124m \
//!     cargo bench -p benches --bench inference
//! ```
//!
//! Full-size weights are generated, never committed: without `BENCH_MOBILENETV2` or
//! `BENCH_GPT2` those models' groups are skipped with a printed reason, and without
//! `../shared/data` so are the tokenizer and image groups. The kernel groups always run.
//! `scripts/reference/bench_inputs.py` times ONNX Runtime and PyTorch on the same inputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simd::gemm::Weights;
use text::{Gpt2, Gpt2Tokenizer, KvCache, WeightPrecision};
use vision::ops::{self, Activation, ConvGeometry, Padding};
use vision::{decode_image, DecodeLimits, ImageClassifier, ModelConfig};

/// `../shared/data`, beside the repository.
fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    dir.is_dir().then_some(dir)
}

/// The directories named by the comma-separated environment variable `name`.
fn model_dirs(name: &str, make: &str) -> Vec<PathBuf> {
    match std::env::var(name) {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => {
            eprintln!("skipped: set {name} to weights made by scripts/{make}");
            Vec::new()
        }
    }
}

fn random(shape: &[usize]) -> Tensor {
    Tensor::rand(-1f32, 1f32, shape, &Device::Cpu).expect("random tensor")
}

/// MobileNetV2's depthwise 3x3 layers: the first (32 channels at 112x112) and a late one
/// (960 channels at 7x7), stride 1, batch 1.
fn depthwise(c: &mut Criterion) {
    // The first group to run: the thread count is pinned as the services pin it.
    runtime::pin_compute_threads();
    runtime::keep_large_allocations();
    let mut group = c.benchmark_group("depthwise_3x3");
    for (channels, side) in [(32, 112), (144, 56), (960, 7)] {
        let x = random(&[1, side, side, channels]);
        let weight = random(&[3, 3, channels]);
        let bias = random(&[channels]);
        let geometry = ConvGeometry {
            kernel: 3,
            stride: 1,
            padding: Padding::Symmetric,
        };
        group.throughput(Throughput::Elements((side * side * channels) as u64));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{channels}x{side}x{side}")),
            |b| {
                b.iter(|| {
                    ops::depthwise_conv(simd::level(), &x, &weight, &bias, geometry, Activation::Relu6)
                        .expect("depthwise")
                })
            },
        );
    }
    group.finish();
}

/// A pointwise (1x1) convolution of MobileNetV2's second block: 56x56, 144 -> 24 channels.
fn pointwise(c: &mut Criterion) {
    let x = random(&[1, 56, 56, 144]);
    let values = |tensor: Tensor| {
        tensor
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values")
    };
    let weights = Weights::pack(
        simd::level(),
        &values(random(&[144, 24])),
        &values(random(&[24])),
        144,
        24,
    );
    let geometry = ConvGeometry {
        kernel: 1,
        stride: 1,
        padding: Padding::Symmetric,
    };
    c.bench_function("pointwise_1x1/144to24x56x56", |b| {
        b.iter(|| ops::conv2d(&x, &weights, geometry, Activation::Identity, None).expect("pointwise"))
    });
}

/// MobileNetV2 logits at batch 1, 8 and 32, for each weights directory (224 and 160 inputs).
fn mobilenetv2(c: &mut Criterion) {
    for dir in model_dirs("BENCH_MOBILENETV2", "make_random_mobilenetv2.py") {
        let classifier = ImageClassifier::load(&dir.join("config.json"), &dir.join("model.safetensors"))
            .expect("MobileNetV2 weights");
        let [_, h, w] = classifier.preprocessing().input_size;
        let mut group = c.benchmark_group(format!("mobilenetv2_{h}"));
        group.sample_size(10).measurement_time(Duration::from_secs(5));
        for batch in [1, 8, 32] {
            let images = classifier
                .batch(&vec![vec![0.5f32; h * w * 3]; batch])
                .expect("batch");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new("batch", batch), |b| {
                b.iter(|| classifier.model().logits(&images).expect("forward"))
            });
        }
        group.finish();
    }
}

/// GPT-2 prefill of 128 tokens, and 16 decode steps after 128, f32 and bf16 weights.
fn gpt2(c: &mut Criterion) {
    for dir in model_dirs("BENCH_GPT2", "make_random_gpt2.py") {
        let prompt: Vec<u32> = (0..128u32).map(|i| (i * 7919) % 50_000).collect();
        let mut group = c.benchmark_group("gpt2");
        group.sample_size(10);
        for (precision, name) in [(WeightPrecision::F32, "f32"), (WeightPrecision::Bf16, "bf16")] {
            let model = Gpt2::load(
                &dir.join("config.json"),
                &dir.join("model.safetensors"),
                precision,
                simd::level(),
            )
            .expect("GPT-2 weights");
            group.throughput(Throughput::Elements(prompt.len() as u64));
            group.bench_function(BenchmarkId::new("prefill_128", name), |b| {
                b.iter(|| {
                    let hidden = model.forward(&prompt, &mut KvCache::default()).expect("prefill");
                    model
                        .logits(&hidden.narrow(0, 127, 1).expect("last row"))
                        .expect("logits")
                })
            });
            group.throughput(Throughput::Elements(16));
            group.bench_function(BenchmarkId::new("decode_16_after_128", name), |b| {
                b.iter_batched(
                    || {
                        let mut cache = KvCache::default();
                        model.forward(&prompt, &mut cache).expect("prefill");
                        cache
                    },
                    |mut cache| {
                        for token in 0..16 {
                            let hidden = model.forward(&[token], &mut cache).expect("decode");
                            model.logits(&hidden).expect("logits");
                        }
                    },
                    criterion::BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

/// GPT-2's BPE over the news corpus (bytes per second).
fn tokenizer(c: &mut Criterion) {
    let Some(data) = shared_data() else {
        eprintln!("skipped tokenizer: ../shared/data is absent");
        return;
    };
    let text = std::fs::read_to_string(data.join("corpus/news.jsonl")).expect("news corpus");
    let tokenizer = Gpt2Tokenizer::builtin().expect("built-in BPE");
    let mut group = c.benchmark_group("tokenizer");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("encode_news_corpus", |b| {
        b.iter(|| tokenizer.encode(&text).expect("encode"))
    });
    group.finish();
}

/// One flower photo: JPEG decode, then resize, crop and normalise to the 224 input.
fn image_intake(c: &mut Criterion) {
    let Some(data) = shared_data() else {
        eprintln!("skipped image intake: ../shared/data is absent");
        return;
    };
    let bytes = std::fs::read(data.join("flowers5/tulips/train2_tulip500.jpg")).expect("photo");
    let config_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mobilenetv2-tiny/config.json");
    let config = ModelConfig::from_json(&std::fs::read_to_string(config_path).expect("fixture config"))
        .expect("fixture config");
    let preprocessing = config.preprocessing();
    let image = decode_image(&bytes, DecodeLimits::default()).expect("decode");
    let mut group = c.benchmark_group("image");
    group.bench_function("decode_jpeg", |b| {
        b.iter(|| decode_image(&bytes, DecodeLimits::default()).expect("decode"))
    });
    group.bench_function("preprocess_224", |b| b.iter(|| preprocessing.apply(&image)));
    // A phone-sized photo through timm's transform (shorter side to 256, centre crop 224).
    let photo = image::imageops::resize(&image, 1600, 1200, image::imageops::FilterType::Triangle);
    let timm = vision::Preprocessing {
        crop_pct: 0.875,
        ..preprocessing.clone()
    };
    group.bench_function("preprocess_224_from_1600x1200", |b| b.iter(|| timm.apply(&photo)));
    group.finish();
}

criterion_group!(kernels, depthwise, pointwise);
criterion_group!(models, mobilenetv2, gpt2);
criterion_group!(intake, tokenizer, image_intake);
criterion_main!(kernels, models, intake);
