//! This machine's ceilings, on one thread and on all: multiply-adds per second and read
//! bandwidth with one and four streams per thread, and what the other threads add. Run it
//! beside the model figures: on a machine whose second core adds little arithmetic, no amount
//! of batching makes concurrency 16 twice concurrency 1.

use benches::machine::{multiply_add_rate, read_rate};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let measure = |threads: usize| -> anyhow::Result<[f64; 3]> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        Ok(pool.install(|| [multiply_add_rate(threads), read_rate(1) / 1e9, read_rate(4) / 1e9]))
    };
    let one = measure(1)?;
    let every = measure(all)?;
    if args.json {
        let row = |r: [f64; 3]| serde_json::json!({"multiply_adds_g_per_s": r[0], "read_one_stream_gb_s": r[1], "read_four_streams_gb_s": r[2]});
        println!(
            "{}",
            serde_json::json!({"threads": all, "one_thread": row(one), "all_threads": row(every)})
        );
        return Ok(());
    }
    println!(
        "threads  f32 multiply-adds ({})  read, 1 stream per thread  read, 4 streams per thread",
        simd::level()
    );
    for (threads, r) in [(1, one), (all, every)] {
        println!(
            "{threads:>7}  {:>14.2} G/s  {:>20.1} GB/s  {:>21.1} GB/s",
            r[0], r[1], r[2]
        );
    }
    println!(
        "{all} threads over 1: {:.2}x the arithmetic, {:.2}x the reads (4 streams)",
        every[0] / one[0],
        every[2] / one[2]
    );
    Ok(())
}
