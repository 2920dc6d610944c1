//! The main job: a worker process and a client process sharing the embedded SQLite
//! database (no server to install). The client sends a real mix of tasks — successes,
//! failures, retries, countdowns, expiries, unknown names, blocking work — collects what
//! happened, then measures throughput with a burst.
//!
//! `cargo run --release -p celeriac-examples --example demo`
//!
//! The same binary is the worker: the client starts `demo worker -c 8` (celeriac's CLI,
//! with these tasks registered) as a child process and stops it with SIGTERM at the end.
//! The database is `celeriac.sqlite` in the working directory (the default when no broker
//! is configured); `DEMO_BROKER` picks another URL (`redis://...`), `DEMO_BURST` the size
//! of the throughput burst, `RUST_LOG=info` shows the client's log.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use celeriac::{App, AsyncResult, Error, Signature, State, TaskContext, TaskError, TaskResult};
use serde_json::json;

/// Adds two numbers.
#[celeriac::task(name = "demo.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

/// Parses an integer; bad text fails with `ParseIntError`.
#[celeriac::task(name = "demo.parse_int")]
async fn parse_int(text: String) -> TaskResult<i64> {
    Ok(text.trim().parse::<i64>()?)
}

/// Fails twice with a retryable error (as a flaky service would), then succeeds.
#[celeriac::task(
    name = "demo.flaky",
    max_retries = 5,
    retry_backoff = 0.05,
    retry_backoff_max = 1.0
)]
async fn flaky(ctx: &TaskContext, n: u32) -> TaskResult<String> {
    if ctx.retries() < 2 {
        return Err(TaskError::new(
            "ServiceUnavailable",
            format!("try {} of item {n}", ctx.retries() + 1),
        )
        .retryable());
    }
    Ok(format!("item {n} after {} retries", ctx.retries()))
}

/// CPU and blocking work: a plain `fn`, run on the blocking thread pool.
#[celeriac::task(name = "demo.resize")]
fn resize(width: u32, height: u32) -> TaskResult<u64> {
    std::thread::sleep(Duration::from_millis(10));
    let mut checksum: u64 = 0;
    for y in 0..height {
        for x in 0..width {
            checksum = checksum.wrapping_mul(31).wrapping_add(u64::from(x ^ y));
        }
    }
    Ok(checksum)
}

/// Reports how late it ran relative to the time it was asked for.
#[celeriac::task(name = "demo.remind")]
async fn remind(due_ms: i64) -> TaskResult<String> {
    let late = chrono::Utc::now().timestamp_millis() - due_ms;
    Ok(format!("ran {late} ms after its due time"))
}

#[derive(Default)]
struct Tally {
    sent: usize,
    by_state: BTreeMap<String, usize>,
    sample: Option<String>,
}

async fn collect(
    kind: &'static str,
    results: Vec<AsyncResult>,
    tallies: &mut BTreeMap<&'static str, Tally>,
) {
    let t = tallies.entry(kind).or_default();
    t.sent += results.len();
    for r in results {
        let outcome = match r.get::<serde_json::Value>(Duration::from_secs(30)).await {
            Ok(v) => (State::Success.to_string(), format!("→ {v}")),
            Err(e @ (Error::TaskFailed { .. } | Error::TaskRevoked { .. })) => {
                let state = r
                    .state()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| "?".into());
                let exc = e.exception().map(ToString::to_string).unwrap_or_default();
                (state, format!("✗ {exc}"))
            }
            Err(e) => ("ERROR".to_string(), format!("✗ {e}")),
        };
        *t.by_state.entry(outcome.0).or_default() += 1;
        t.sample.get_or_insert(outcome.1);
    }
}

/// The app both processes use: the tasks, and the broker from `DEMO_BROKER` or the
/// default (the embedded SQLite file).
fn app() -> celeriac::AppBuilder {
    let mut b = App::builder()
        .task(add)
        .task(parse_int)
        .task(flaky)
        .task(resize)
        .task(remind);
    if let Ok(url) = std::env::var("DEMO_BROKER") {
        b = b.broker_url(url);
    }
    b
}

/// Where the worker process's log goes.
const WORKER_LOG: &str = "celeriac-demo-worker.log";

/// Starts `demo worker` as a child process and waits until it is consuming.
fn start_worker() -> std::io::Result<Child> {
    let log = std::fs::File::create(WORKER_LOG)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["worker", "-c", "8", "-l", "info", "-n", "demo-worker@%h"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    // The banner ends with the task list; the worker consumes right after printing it.
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no worker stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if line?.contains("demo.resize") {
            break;
        }
    }
    // Keep draining, so the worker never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(child)
}

fn main() -> Result<(), Error> {
    // `demo worker ...` (and every other celeriac command) is the CLI with these tasks.
    if std::env::args().nth(1).is_some() {
        celeriac::cli::run(app());
    }
    tokio::runtime::Runtime::new()
        .map_err(|e| Error::Config(e.to_string()))?
        .block_on(client())
}

async fn client() -> Result<(), Error> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let app = app().build().await?;
    println!(
        "celeriac demo — broker {}, results {}",
        app.broker_url(),
        app.backend_url()
    );
    let leftover = app.broker().purge("celery").await?;
    if leftover > 0 {
        println!("(purged {leftover} messages left by an earlier run)");
    }
    let mut worker = start_worker()
        .map_err(|e| Error::Config(format!("cannot start the worker process: {e}")))?;
    println!(
        "worker: process {} (`demo worker -c 8`); client: this process ({})",
        worker.id(),
        std::process::id()
    );
    let started = Instant::now();

    // Send everything first, then collect: the worker works while we send.
    let mut batches: Vec<(&'static str, Vec<AsyncResult>)> = Vec::new();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let plan: Vec<(&'static str, Vec<Signature>)> = vec![
        (
            "add (success)",
            (0..200).map(|i| add::new(i, i * 2)).collect(),
        ),
        (
            "parse_int (1 in 4 fails)",
            (0..40)
                .map(|i| {
                    parse_int::new(if i % 4 == 0 {
                        format!("x{i}")
                    } else {
                        i.to_string()
                    })
                })
                .collect(),
        ),
        ("flaky (2 retries each)", (0..40).map(flaky::new).collect()),
        (
            "resize (blocking fn)",
            (0..20).map(|i| resize::new(200 + i, 200)).collect(),
        ),
        (
            "remind (countdown 0.5-1.45 s)",
            (0..20)
                .map(|i| {
                    let delay = 0.5 + f64::from(i) * 0.05;
                    remind::new(now_ms + (delay * 1000.0) as i64).countdown(delay)
                })
                .collect(),
        ),
        (
            "expiring before its countdown",
            (0..10)
                .map(|i| add::new(i, 0).countdown(1.0).expires(0.2))
                .collect(),
        ),
    ];
    for (kind, sigs) in plan {
        batches.push((kind, app.send_many(sigs).await?));
    }
    let mut unknown = Vec::new();
    for i in 0..5 {
        unknown.push(
            app.send_task("demo.not_deployed_yet", json!([i]), json!({}))
                .await?,
        );
    }
    batches.push(("unknown task name", unknown));

    let mut tallies = BTreeMap::new();
    let mut order = Vec::new();
    for (kind, results) in batches {
        order.push(kind);
        collect(kind, results, &mut tallies).await;
    }
    let mixed_secs = started.elapsed().as_secs_f64();

    println!();
    println!("{:<32} {:>5}  {:<40} example", "kind", "sent", "outcome");
    for kind in order {
        let t = &tallies[kind];
        let states = t
            .by_state
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{kind:<32} {:>5}  {states:<40} {}",
            t.sent,
            t.sample.as_deref().unwrap_or("")
        );
    }
    let total: usize = tallies.values().map(|t| t.sent).sum();
    println!("\n{total} tasks of 7 kinds finished in {mixed_secs:.2} s (the longest countdown is 1.45 s)");

    // Throughput: a burst of small tasks, every result stored and read back.
    let burst: i64 = std::env::var("DEMO_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let t0 = Instant::now();
    let results = app
        .send_many((0..burst).map(|i| add::new(i, 1)).collect())
        .await?;
    let mut sum = 0i64;
    for r in &results {
        sum += r.get::<i64>(Duration::from_secs(60)).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let expected: i64 = (0..burst).map(|i| i + 1).sum();
    assert_eq!(sum, expected, "a result was lost or wrong");
    println!(
        "throughput: {burst} tasks sent, run and their results read back in {secs:.2} s = {:.0} tasks/s",
        burst as f64 / secs
    );

    // SIGTERM: the worker shuts down warm and logs its own summary last.
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    let log = std::fs::read_to_string(WORKER_LOG).unwrap_or_default();
    if let Some(last) = log.lines().last() {
        println!("{last}");
    }
    println!(
        "the worker's log ({} lines: every task received, succeeded, retried, failed) is in {WORKER_LOG}",
        log.lines().count()
    );
    Ok(())
}
