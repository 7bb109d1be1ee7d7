//! How the process and its threads are set up: what `main` sets once before any other thread
//! starts (the number of compute threads, the allocator's thresholds), and background threads'
//! priority.

/// Sets `RAYON_NUM_THREADS`, when unset, to the thread count rayon chooses anyway. Call it first
/// in `main`, before any thread starts. candle reads that variable before every matrix product
/// and, when it is unset, works the count out again from `/proc` and `/sys` files each time, a
/// large share of a small forward pass. rayon's own pool
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

/// Keeps the large buffers a forward pass allocates (activations of a prompt, a batch of
/// images) in the heap for reuse: by default glibc gives each one over 128 KiB its own
/// mapping, unmapped when freed, so that every layer of every request faulted in fresh zeroed
/// pages (a tenth of a long prompt's time went to page faults). Freed memory beyond
/// [`TRIM_BYTES`] at the heap's top is still handed back to the system after a burst.
pub fn keep_large_allocations() {
    /// Largest allocation still served from the heap.
    const MMAP_BYTES: libc::c_int = 64 << 20;
    /// Free memory at the heap's top kept for reuse rather than returned.
    const TRIM_BYTES: libc::c_int = 128 << 20;
    // One arena per core rather than glibc's eight: each arena keeps its own free memory, and
    // the threads that decode a burst's photos would each leave theirs behind.
    let arenas = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` only changes glibc's allocation thresholds; it runs at start, before
    // the allocations it affects.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_BYTES);
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Raises the soft limit on open files to the hard one, so that `--max-connections`, not the
/// shell's default of 1,024 descriptors, is what bounds the connections.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the process's own limit through a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Hands the heap's free memory back to the system, in every arena (the thresholds above keep
/// it otherwise, and each thread that allocated has an arena of its own): what a burst of
/// large request bodies left behind.
pub fn release_free_memory() {
    // SAFETY: `malloc_trim` only returns free pages to the system; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Puts the calling thread in the scheduler's idle class (`SCHED_IDLE`): it runs only on a
/// core that has nothing else to do, so work in the background never delays a request.
pub fn run_at_idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; the call only changes its scheduling class.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
