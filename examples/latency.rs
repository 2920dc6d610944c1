//! Publish-to-start latency across processes: a worker process and this client share a
//! broker (the embedded SQLite file by default); the client sends tasks one at a time at
//! a steady pace, each task reports how long after its publish it started, and the client
//! prints the percentiles.
//!
//! `cargo run --release -p celeriac-examples --example latency`
//!
//! `LATENCY_BROKER` picks another broker URL, `LATENCY_TASKS` how many tasks (default
//! 500), `LATENCY_INTERVAL_MS` the pause between them (default 10).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use celeriac::{App, Error, TaskResult};

/// Microseconds since the Unix epoch.
fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Returns how many microseconds after `sent_us` it started.
#[celeriac::task(name = "latency.probe")]
async fn probe(sent_us: i64) -> TaskResult<i64> {
    Ok(now_us() - sent_us)
}

fn app() -> celeriac::AppBuilder {
    let mut b = App::builder().task(probe);
    if let Ok(url) = std::env::var("LATENCY_BROKER") {
        b = b.broker_url(url);
    }
    b
}

fn main() -> Result<(), Error> {
    if std::env::args().nth(1).is_some() {
        celeriac::cli::run(app());
    }
    tokio::runtime::Runtime::new()
        .map_err(|e| Error::Config(e.to_string()))?
        .block_on(client())
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn client() -> Result<(), Error> {
    let n: usize = std::env::var("LATENCY_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let pause = Duration::from_millis(
        std::env::var("LATENCY_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    let app = app().build().await?;
    app.broker().purge("celery").await?;
    let exe = std::env::current_exe().map_err(|e| Error::Config(e.to_string()))?;
    let mut worker = Command::new(exe)
        .args(["worker", "-c", "4", "-l", "error"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Config(format!("cannot start the worker: {e}")))?;
    let mut lines = BufReader::new(worker.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        if line
            .map_err(|e| Error::Config(e.to_string()))?
            .contains("latency.probe")
        {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        results.push(probe::new(now_us()).apply_async(&app).await?);
        tokio::time::sleep(pause).await;
    }
    let mut lat = Vec::with_capacity(n);
    for r in &results {
        lat.push(r.get::<i64>(Duration::from_secs(30)).await?);
    }
    lat.sort_unstable();
    println!(
        "{} — publish → task start, {n} tasks {pause:?} apart, worker in another process:",
        app.broker_url()
    );
    println!(
        "p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    Ok(())
}
