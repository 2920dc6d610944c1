//! The benchmark's tasks, the same names and behaviour as `bench/python/bench_tasks.py`,
//! so both implementations run identical work.

use std::time::Duration;

use celeriac::TaskResult;

/// Does nothing; its result (None) is stored.
#[celeriac::task(name = "bench.noop")]
pub async fn noop() -> TaskResult<()> {
    Ok(())
}

/// Does nothing and stores no result.
#[celeriac::task(name = "bench.noop_ignored", ignore_result = true)]
pub async fn noop_ignored() -> TaskResult<()> {
    Ok(())
}

/// Returns how long ago (seconds) the client stamped `sent_at` (Unix time): publish → start.
#[celeriac::task(name = "bench.latency")]
pub async fn latency(sent_at: f64) -> TaskResult<f64> {
    Ok(crate::unix_now() - sent_at)
}

/// Waits `seconds` without holding a thread (an I/O-bound task).
#[celeriac::task(name = "bench.sleep")]
pub async fn sleep(seconds: f64) -> TaskResult<()> {
    tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
    Ok(())
}

/// The app every benchmark process uses (workers are this binary's `worker` command).
pub fn app() -> celeriac::AppBuilder {
    celeriac::App::builder()
        .task(noop)
        .task(noop_ignored)
        .task(latency)
        .task(sleep)
}
