//! Allocator tuning for training on the CPU.
//!
//! A training step allocates and frees hundreds of activation-sized buffers (megabytes each).
//! glibc serves such sizes with `mmap` and returns them with `munmap`, so every step pays
//! fresh page faults and page zeroing for all of them — measured at ~20% of a roberta-base
//! step. [`tune_for_training`] keeps large blocks in the heap for reuse instead. Binaries call
//! it once at start-up (the CLI and the benchmarks do); a library never changes it silently.

/// Keep freed large blocks for reuse (glibc `mallopt`); a no-op on other platforms.
pub fn tune_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
