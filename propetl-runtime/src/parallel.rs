//! Where the parallel CPU work of a model runs.
//!
//! Every parallel kernel of a step (the `gemm` crate's threads, the fused kernels, Candle's
//! matmuls) is a Rayon job. Called from a thread outside Rayon's pool — `main`, say — each
//! of the thousands of jobs in a training step is handed to the pool while the caller sleeps,
//! and the pool's workers fall asleep between jobs, so every job pays a wake-up and a sleep.
//! Run from a worker of the pool instead, the calling thread does its share of each job and the
//! hand-off disappears: a roberta-base training step on 2 cores went from 2.64/2.81 s to
//! 2.32/2.40 s (`docs/performance.md`). [`on_compute_pool`] does that; the CLI runs every
//! command through it, and library callers can wrap their own loops the same way.

use std::sync::OnceLock;

/// Stack of each compute worker: Candle's backward pass walks the graph recursively, and a
/// deep model's graph needs more than the 2 MiB a spawned thread gets by default (only the
/// pages a thread touches are ever committed).
const WORKER_STACK_BYTES: usize = 64 << 20;

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        // the thread count follows Rayon's own default (RAYON_NUM_THREADS, else one per CPU)
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("propetl-compute-{i}"))
            .stack_size(WORKER_STACK_BYTES)
            .build()
            .ok()
    })
    .as_ref()
}

/// Runs `f` on a worker of the compute thread pool (the caller waits), so that the parallel
/// kernels `f` reaches split their work with the thread running it instead of handing every
/// job across threads. Runs `f` in place when already on a Rayon worker, or when no pool
/// can be started (threads could not be spawned).
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    match pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_a_worker_and_returns_the_result() {
        let (on_worker, value) = super::on_compute_pool(|| {
            let nested = super::on_compute_pool(|| 20 + 1);
            (rayon::current_thread_index().is_some(), nested * 2)
        });
        assert!(on_worker);
        assert_eq!(value, 42);
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| super::on_compute_pool(|| panic!("boom")));
        assert!(caught.is_err());
    }
}
