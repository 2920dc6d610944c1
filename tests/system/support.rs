//! Tasks and helpers shared by the system tests.
//!
//! Tasks that need to report what happened (how often they ran, how many ran at once)
//! write to process-wide maps under a key each test makes unique, so tests running in
//! parallel never see each other's counts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use celeriac::{App, AppBuilder, TaskContext, TaskError, TaskResult, WorkerReport};
use serde_json::{json, Value};

fn counters() -> &'static Mutex<HashMap<String, i64>> {
    static C: OnceLock<Mutex<HashMap<String, i64>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn logs() -> &'static Mutex<HashMap<String, Vec<Value>>> {
    static L: OnceLock<Mutex<HashMap<String, Vec<Value>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Adds `by` to counter `key`; returns the new value.
pub(crate) fn bump(key: &str, by: i64) -> i64 {
    let mut m = counters().lock().unwrap();
    let c = m.entry(key.to_string()).or_default();
    *c += by;
    *c
}

/// The value of counter `key`.
pub(crate) fn count(key: &str) -> i64 {
    counters().lock().unwrap().get(key).copied().unwrap_or(0)
}

/// Raises counter `key` to at least `v`.
fn raise(key: &str, v: i64) {
    let mut m = counters().lock().unwrap();
    let c = m.entry(key.to_string()).or_default();
    *c = (*c).max(v);
}

/// Appends to log `key`.
pub(crate) fn log(key: &str, v: Value) {
    logs()
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default()
        .push(v);
}

/// The entries of log `key`.
pub(crate) fn entries(key: &str) -> Vec<Value> {
    logs().lock().unwrap().get(key).cloned().unwrap_or_default()
}

/// Shows the worker's log in a test's output when `RUST_LOG` is set (e.g.
/// `RUST_LOG=info cargo test -p celeriac-tests --test system failover -- --nocapture`).
pub(crate) fn show_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// A key no other test uses.
pub(crate) fn key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[celeriac::task(name = "tasks.add")]
pub(crate) async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

#[celeriac::task(name = "tasks.fail")]
pub(crate) async fn fail(message: String) -> TaskResult<()> {
    Err(TaskError::value_error(message))
}

#[celeriac::task(name = "tasks.panic")]
pub(crate) async fn panic_async(message: String) -> TaskResult<()> {
    panic!("{message}")
}

#[celeriac::task(name = "tasks.panic_blocking")]
pub(crate) fn panic_blocking(message: String) -> TaskResult<()> {
    panic!("{message}")
}

/// Counts its runs under `key`.
#[celeriac::task(name = "tasks.count")]
pub(crate) async fn count_task(key: String) -> TaskResult<i64> {
    Ok(bump(&key, 1))
}

/// Retries (after 10 ms) until it has failed `failures` times, then returns its attempt number.
#[celeriac::task(name = "tasks.flaky", max_retries = 5)]
pub(crate) async fn flaky(ctx: &TaskContext, key: String, failures: i64) -> TaskResult<Value> {
    let attempt = bump(&key, 1);
    if attempt <= failures {
        return Err(ctx.retry(Some(0.01)));
    }
    Ok(json!({"attempt": attempt, "retries": ctx.retries()}))
}

/// Always fails with a retryable error naming its attempt; gives up after 2 retries.
#[celeriac::task(
    name = "tasks.always_flaky",
    max_retries = 2,
    default_retry_delay = 0.01
)]
pub(crate) async fn always_flaky(key: String) -> TaskResult<()> {
    let attempt = bump(&key, 1);
    Err(TaskError::new("FlakyError", format!("attempt {attempt}")).retryable())
}

/// Fails retryably until the last allowed try; logs when each attempt ran (backoff test).
#[celeriac::task(
    name = "tasks.backoff",
    max_retries = 3,
    retry_backoff = 0.1,
    retry_jitter = false
)]
pub(crate) fn backoff(ctx: &TaskContext, key: String) -> TaskResult<u32> {
    log(&key, json!(chrono::Utc::now().timestamp_micros()));
    if ctx.retries() < 3 {
        return Err(TaskError::runtime_error("not yet").retryable());
    }
    Ok(ctx.retries())
}

/// Marks itself started, then sleeps `ms` (skipped when redelivered), counting runs.
#[celeriac::task(name = "tasks.hold")]
pub(crate) async fn hold(ctx: &TaskContext, key: String, ms: u64) -> TaskResult<i64> {
    let n = bump(&format!("{key}:started"), 1);
    if !ctx.delivery_info().redelivered {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    bump(&format!("{key}:done"), 1);
    Ok(n)
}

/// As `hold`, acknowledged late.
#[celeriac::task(name = "tasks.hold_late", acks_late = true)]
pub(crate) async fn hold_late(ctx: &TaskContext, key: String, ms: u64) -> TaskResult<i64> {
    let n = bump(&format!("{key}:started"), 1);
    if !ctx.delivery_info().redelivered {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    bump(&format!("{key}:done"), 1);
    Ok(n)
}

/// Tracks how many run at once under `key` (max in `key:max`), async.
#[celeriac::task(name = "tasks.gauge")]
pub(crate) async fn gauge(key: String, ms: u64) -> TaskResult<()> {
    let now = bump(&key, 1);
    raise(&format!("{key}:max"), now);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    bump(&key, -1);
    Ok(())
}

/// Tracks how many run at once under `key`, blocking its thread.
#[celeriac::task(name = "tasks.gauge_blocking")]
pub(crate) fn gauge_blocking(key: String, ms: u64) -> TaskResult<String> {
    let now = bump(&key, 1);
    raise(&format!("{key}:max"), now);
    std::thread::sleep(Duration::from_millis(ms));
    bump(&key, -1);
    Ok(format!("{:?}", std::thread::current().id()))
}

/// Logs `n` under `key` (order tests).
#[celeriac::task(name = "tasks.log")]
pub(crate) async fn log_task(key: String, n: i64) -> TaskResult<()> {
    log(&key, json!(n));
    Ok(())
}

/// Logs when it started (Unix seconds) under `key` (rate-limit tests).
#[celeriac::task(name = "tasks.stamp")]
pub(crate) async fn stamp(key: String) -> TaskResult<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    log(&key, json!(now));
    Ok(())
}

/// Returns what it knows about its request.
#[celeriac::task(name = "tasks.context")]
pub(crate) async fn context(ctx: &TaskContext) -> TaskResult<Value> {
    Ok(json!({
        "id": ctx.id(),
        "name": ctx.name(),
        "retries": ctx.retries(),
        "root_id": ctx.root_id(),
        "parent_id": ctx.parent_id(),
        "routing_key": ctx.delivery_info().routing_key,
        "priority": ctx.delivery_info().priority,
        "hostname": ctx.hostname(),
        "eager": ctx.is_eager(),
        "headers": ctx.headers(),
    }))
}

/// Sends a child `tasks.context` and returns the child's id.
#[celeriac::task(name = "tasks.spawn_child")]
pub(crate) async fn spawn_child(ctx: &TaskContext) -> TaskResult<String> {
    let child = ctx
        .send(context::new())
        .await
        .map_err(|e| TaskError::runtime_error(e.to_string()))?;
    Ok(child.id().to_string())
}

/// Rejects its message.
#[celeriac::task(name = "tasks.reject", acks_late = true)]
pub(crate) async fn reject(ctx: &TaskContext, key: String) -> TaskResult<()> {
    let n = bump(&key, 1);
    if n == 1 {
        return Err(TaskError::reject(true, "not now"));
    }
    let _ = ctx;
    Ok(())
}

/// Returns its argument unchanged.
#[celeriac::task(name = "tasks.echo")]
pub(crate) async fn echo(value: Value) -> TaskResult<Value> {
    Ok(value)
}

/// Sleeps `seconds` unless redelivered, acknowledged late (the killed-worker tests).
#[celeriac::task(name = "tasks.slow_late", acks_late = true)]
pub(crate) async fn slow_late(ctx: &TaskContext, seconds: f64) -> TaskResult<f64> {
    if !ctx.delivery_info().redelivered {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    }
    Ok(seconds)
}

/// Sleeps `ms`, then counts itself done under `key` (never, if stopped first).
#[celeriac::task(name = "tasks.sleepy")]
pub(crate) async fn sleepy(key: String, ms: u64) -> TaskResult<()> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    bump(&format!("{key}:done"), 1);
    Ok(())
}

/// Waits for its soft time limit, cleans up (counted under `key`), and fails as Celery's
/// task would.
#[celeriac::task(name = "tasks.tidy")]
pub(crate) async fn tidy(ctx: &TaskContext, key: String) -> TaskResult<()> {
    tokio::select! {
        _ = ctx.soft_time_limit() => {
            bump(&format!("{key}:cleaned"), 1);
            Err(TaskError::soft_time_limit_exceeded())
        }
        _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(()),
    }
}

/// A blocking loop that checks its soft time limit.
#[celeriac::task(name = "tasks.grind")]
pub(crate) fn grind(ctx: &TaskContext, ms: u64) -> TaskResult<u64> {
    let start = std::time::Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_millis(ms) {
        ctx.check_soft_time_limit()?;
        std::thread::sleep(Duration::from_millis(5));
        rounds += 1;
    }
    Ok(rounds)
}

/// A task with no explicit name (gets `<module path>.noname`).
#[celeriac::task(name = "tasks.mul")]
pub(crate) async fn mul(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x * y)
}

#[celeriac::task(name = "tasks.xsum")]
pub(crate) fn xsum(numbers: Vec<i64>) -> TaskResult<i64> {
    Ok(numbers.iter().sum())
}

#[celeriac::task(name = "tasks.sq")]
pub(crate) async fn sq(x: i64) -> TaskResult<i64> {
    Ok(x * x)
}

/// Logs what it received (a parent's result, or a failed task's id) under `key`, and
/// counts its runs under `<key>:runs`.
#[celeriac::task(name = "tasks.note")]
pub(crate) async fn note(value: Value, key: String) -> TaskResult<Value> {
    bump(&format!("{key}:runs"), 1);
    log(&key, value.clone());
    Ok(value)
}

#[celeriac::task]
pub(crate) async fn noname() -> TaskResult<u8> {
    Ok(1)
}

/// A builder with every test task on a fresh, private memory:// instance.
pub(crate) fn builder() -> AppBuilder {
    builder_on(&format!("memory://{}", key()))
}

/// A builder with every test task on the broker (and backend) at `url`.
pub(crate) fn builder_on(url: &str) -> AppBuilder {
    App::builder()
        .broker_url(url)
        .task(add)
        .task(fail)
        .task(panic_async)
        .task(panic_blocking)
        .task(count_task)
        .task(flaky)
        .task(always_flaky)
        .task(backoff)
        .task(hold)
        .task(hold_late)
        .task(gauge)
        .task(gauge_blocking)
        .task(log_task)
        .task(context)
        .task(spawn_child)
        .task(reject)
        .task(echo)
        .task(noname)
        .task(slow_late)
        .task(sleepy)
        .task(tidy)
        .task(grind)
        .task(mul)
        .task(xsum)
        .task(sq)
        .task(note)
        .task(stamp)
}

/// An app with every test task.
pub(crate) async fn app() -> App {
    builder().build().await.expect("app builds")
}

/// A running worker.
pub(crate) struct Running {
    pub(crate) stop: celeriac::ShutdownHandle,
    pub(crate) stats: std::sync::Arc<celeriac::worker::WorkerStats>,
    pub(crate) handle: tokio::task::JoinHandle<Result<WorkerReport, celeriac::Error>>,
}

impl Running {
    /// Warm shutdown; returns the report.
    pub(crate) async fn warm(self) -> WorkerReport {
        self.stop.warm();
        self.join().await
    }

    /// Cold shutdown; returns the report.
    pub(crate) async fn cold(self) -> WorkerReport {
        self.stop.cold();
        self.join().await
    }

    async fn join(self) -> WorkerReport {
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops")
            .expect("worker task")
            .expect("worker run")
    }
}

/// Starts a worker configured by `f`.
pub(crate) fn start(
    app: &App,
    f: impl FnOnce(celeriac::WorkerBuilder) -> celeriac::WorkerBuilder,
) -> Running {
    let worker = f(app.worker().concurrency(4)).build();
    Running {
        stop: worker.shutdown_handle(),
        stats: worker.stats(),
        handle: tokio::spawn(worker.run()),
    }
}

/// Waits (up to 10 s) for `cond`, polling; panics with `what` on timeout.
pub(crate) async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `sig` and returns its result, panicking on any error.
pub(crate) async fn run<T: serde::de::DeserializeOwned>(app: &App, sig: celeriac::Signature) -> T {
    let r = sig.apply_async(app).await.expect("task sent");
    r.get(WAIT)
        .await
        .unwrap_or_else(|e| panic!("task {} failed: {e}", r.id()))
}

/// The exception a task failed with; panics if it did not fail.
pub(crate) async fn exception_of(r: &celeriac::AsyncResult) -> celeriac::ExceptionInfo {
    let err = r
        .get::<Value>(WAIT)
        .await
        .expect_err("the task should have failed");
    err.exception()
        .cloned()
        .unwrap_or_else(|| panic!("no exception in {err:?}"))
}

/// Five seconds: how long tests wait for results.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Sends remote-control `method` to the workers of `app` and returns the one reply
/// (panics unless exactly one worker answered within 500 ms).
pub(crate) async fn ask(app: &App, method: &str, args: Value) -> Value {
    let replies = app
        .control()
        .broadcast(method, args, None, Some(Duration::from_millis(500)))
        .await
        .expect("command sent");
    assert_eq!(replies.len(), 1, "{method}: {replies:?}");
    replies.into_iter().next().expect("one reply").1
}
