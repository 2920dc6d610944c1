//! Retries: explicit `ctx.retry(countdown)`, retryable errors under a backoff policy, and
//! what happens when retries run out.
//!
//! `cargo run -p celeriac-examples --example retries`

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use celeriac::{App, TaskContext, TaskError, TaskResult};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Asks to be retried in 100 ms until its third attempt.
#[celeriac::task(name = "examples.poll_job", max_retries = 5)]
async fn poll_job(ctx: &TaskContext, job: String) -> TaskResult<String> {
    if ctx.retries() < 2 {
        println!(
            "  {job}: not ready (attempt {}), retry in 0.1 s",
            ctx.retries() + 1
        );
        return Err(ctx.retry(Some(0.1)));
    }
    Ok(format!("{job} ready after {} retries", ctx.retries()))
}

/// A flaky call: retryable errors are retried with exponential backoff and jitter
/// (0.05 s × 2^n, capped at 1 s); after `max_retries` the last error is the FAILURE.
#[celeriac::task(
    name = "examples.call_service",
    max_retries = 3,
    retry_backoff = 0.05,
    retry_backoff_max = 1.0
)]
async fn call_service(ctx: &TaskContext, endpoint: String) -> TaskResult<u32> {
    let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    println!("  {endpoint}: call {n} (retries so far: {})", ctx.retries());
    Err(TaskError::new("ServiceUnavailable", format!("{endpoint} answered 503")).retryable())
}

#[tokio::main]
async fn main() -> Result<(), celeriac::Error> {
    let app = App::builder()
        .broker_url("memory://retries-example")
        .task(poll_job)
        .task(call_service)
        .build()
        .await?;
    let worker = app.worker().build();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    println!("explicit retry:");
    let r = poll_job::new("report-7".into()).apply_async(&app).await?;
    println!(
        "  result: {}",
        r.get::<String>(Duration::from_secs(10)).await?
    );

    println!("retryable error with backoff, retries run out:");
    let r = call_service::new("https://billing.internal/charge".into())
        .apply_async(&app)
        .await?;
    match r.get::<u32>(Duration::from_secs(10)).await {
        Err(e) => println!("  result: {e}"),
        Ok(v) => println!("  unexpected success: {v}"),
    }

    stop.warm();
    let report = running.await.expect("worker task")?;
    println!(
        "worker: {} retries sent, {} failed",
        report.stats.retried, report.stats.failed
    );
    Ok(())
}
