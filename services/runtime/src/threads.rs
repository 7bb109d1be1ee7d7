//! The number of compute threads, fixed once per process.

/// Sets `RAYON_NUM_THREADS`, when unset, to the thread count rayon chooses anyway. Call it first
/// in `main`, before any thread starts. candle reads that variable before every matrix product
/// and, when it is unset, works the count out again from `/proc` and `/sys` files each time: a
/// sixth of a MobileNetV2 forward pass here (21 ms against 17.5 at batch 1). rayon's own pool
/// reads the same variable, so it is unchanged.
pub fn pin_compute_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Setting the environment is sound only while no other thread can read it: this runs first
    // in `main` (the Rust 2024 edition marks it unsafe for that reason).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}
