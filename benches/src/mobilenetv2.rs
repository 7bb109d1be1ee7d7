//! MobileNetV2 forward-pass throughput: milliseconds per batch and images per second at each
//! batch size, on the weights of a directory (see `scripts/make_random_mobilenetv2.py`).
//! `scripts/reference/bench_mobilenetv2.py` runs it beside ONNX Runtime and PyTorch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use vision::{ImageClassifier, MobileNetV2, ModelConfig};

#[derive(Parser)]
struct Args {
    /// Directory with config.json and model.safetensors.
    #[arg(long)]
    model: PathBuf,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    batch: Vec<usize>,
    /// Seconds spent measuring each batch size (after one warm-up pass).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Print one JSON object per batch size.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    runtime::pin_compute_threads();
    runtime::keep_large_allocations();
    let args = Args::parse();
    let level = simd::Level::from_env()?;
    let config = ModelConfig::from_json(&std::fs::read_to_string(args.model.join("config.json"))?)?;
    let tensors = hub::load_safetensors(&args.model.join("model.safetensors"))?;
    let model = MobileNetV2::from_tensors(&tensors, config.architecture(), level)?;
    let classifier = ImageClassifier::new(model, &config)?;
    let [_, h, w] = classifier.preprocessing().input_size;
    for &batch in &args.batch {
        let images = classifier.batch(&vec![vec![0.5f32; h * w * 3]; batch])?;
        classifier.model().logits(&images)?;
        let budget = Duration::from_secs_f64(args.seconds);
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed() < budget || times.len() < 3 {
            let t = Instant::now();
            classifier.model().logits(&images)?.to_vec2::<f32>()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let images_per_s = batch as f64 / median;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"engine": "candle (ours)", "kernels": level.name(), "batch": batch, "input": h, "ms_per_batch": median * 1e3, "images_per_s": images_per_s, "runs": times.len()})
            );
        } else {
            println!(
                "candle (ours, {level})  batch {batch:>3}  {:>8.2} ms/batch  {:>8.2} ms/image  {images_per_s:>7.1} images/s  ({} runs)",
                median * 1e3,
                median * 1e3 / batch as f64,
                times.len()
            );
        }
    }
    Ok(())
}
