//! GPT-2 greedy decoding speed at batch 1: prefill time for a prompt and tokens per second
//! for the decode steps, on the weights of a directory (see `scripts/make_random_gpt2.py`).
//! Decoding reads every dense weight once per token, so it also measures this machine's read
//! bandwidth and prints the fraction of the floor it reaches (weight bytes per token over
//! bandwidth). `scripts/reference/bench_gpt2.py` runs it beside `transformers` and llama.cpp.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use text::{Gpt2, KvCache, WeightPrecision};

#[derive(Parser)]
struct Args {
    /// Directory with config.json and model.safetensors.
    #[arg(long)]
    model: PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Timed prefills (after an untimed one); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Hold the dense weights in bf16 (activations stay f32).
    #[arg(long)]
    bf16: bool,
    /// Leave f32 weights where they lie in the mapped file, as a service's first second
    /// does, instead of packing them for the kernels as it does then.
    #[arg(long)]
    mapped: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    runtime::pin_compute_threads();
    runtime::keep_large_allocations();
    let args = Args::parse();
    let (precision, engine) = if args.bf16 {
        (WeightPrecision::Bf16, "candle (ours) bf16")
    } else {
        (WeightPrecision::F32, "candle (ours) f32")
    };
    let model = Gpt2::load(
        &args.model.join("config.json"),
        &args.model.join("model.safetensors"),
        precision,
        simd::Level::from_env()?,
    )?;
    if !args.mapped {
        model.pack_weights();
    }
    let prompt: Vec<u32> = (0..args.prompt as u32).map(|i| (i * 7919) % 50_000).collect();
    // The prompt read into a fresh cache and its first token chosen, as llama-bench times it:
    // once untimed, then the median of `--repeats` runs. The cache holds room for the decode,
    // as a generation's does (and as llama.cpp's context does).
    let prefill_once = || -> anyhow::Result<(KvCache, u32)> {
        let mut cache = KvCache::default();
        cache.reserve(args.prompt + args.tokens);
        let logits = model.next_logits(&prompt, &mut cache)?;
        Ok((cache, logits.get(0)?.argmax(0)?.to_scalar::<u32>()?))
    };
    let (mut cache, mut next) = prefill_once()?;
    let mut prefills = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats.max(1) {
        let start = Instant::now();
        (cache, next) = prefill_once()?;
        prefills.push(start.elapsed().as_secs_f64());
    }
    prefills.sort_by(f64::total_cmp);
    let prefill = prefills[prefills.len() / 2];
    let start = Instant::now();
    for _ in 0..args.tokens {
        next = model
            .next_logits(&[next], &mut cache)?
            .get(0)?
            .argmax(0)?
            .to_scalar::<u32>()?;
    }
    let decode = start.elapsed().as_secs_f64();
    let tokens_per_s = args.tokens as f64 / decode;
    let config = model.config();
    let dense = config.n_layer * 12 * config.n_embd * config.n_embd + config.vocab_size * config.n_embd;
    let bytes_per_token = dense * if args.bf16 { 2 } else { 4 };
    let bandwidth = benches::machine::read_bandwidth();
    let floor = bandwidth / bytes_per_token as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"engine": engine, "kernels": model.level().name(), "prefill_tokens": args.prompt, "prefill_ms": prefill * 1e3,
                "decode_tokens": args.tokens, "decode_tokens_per_s": tokens_per_s,
                "weight_bytes_per_token": bytes_per_token, "read_bandwidth_gb_s": bandwidth / 1e9,
                "floor_tokens_per_s": floor})
        );
    } else {
        println!(
            "{engine} ({})  prefill {} tokens: {:.1} ms   decode: {tokens_per_s:.1} tokens/s ({} tokens), \
             {:.0}% of the floor ({:.0} MB per token at {:.1} GB/s read: {floor:.1} tokens/s)",
            model.level(),
            args.prompt,
            prefill * 1e3,
            args.tokens,
            100.0 * tokens_per_s / floor,
            bytes_per_token as f64 / 1e6,
            bandwidth / 1e9,
        );
    }
    Ok(())
}
