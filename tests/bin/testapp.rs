//! A user's binary as the CLI and interop tests see it: the interop task set (the same
//! names and behaviour as `tests/python/celeriac_interop/tasks.py`) and
//! `celeriac::cli::run`.
//!
//! `tasks.record` appends to the Redis list `<CELERIAC_INTEROP_KEYPREFIX>celeriac-interop:record:<key>`
//! on `CELERIAC_INTEROP_RECORD` (default `CELERIAC_INTEROP_BROKER`), exactly as the Python
//! task does, so tests count every execution across Rust and Python workers; the chaos
//! harness points it at a Redis of its own that no fault touches.
//!
//! `CELERIAC_INTEROP_ACKS_LATE=1` acknowledges every task late, as `task_acks_late` does
//! for the Python app (`tasks.py` reads the same variable).

use std::time::Duration;

use celeriac::{TaskContext, TaskError, TaskResult};
use serde_json::{json, Value};

/// Adds two numbers.
#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

/// Multiplies two numbers.
#[celeriac::task(name = "tasks.mul")]
async fn mul(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x * y)
}

/// Sums a list.
#[celeriac::task(name = "tasks.xsum")]
async fn xsum(numbers: Vec<i64>) -> TaskResult<i64> {
    Ok(numbers.iter().sum())
}

/// Returns its argument.
#[celeriac::task(name = "tasks.echo")]
async fn echo(value: Value) -> TaskResult<Value> {
    Ok(value)
}

/// Fails with a ValueError.
#[celeriac::task(name = "tasks.fail")]
fn fail(message: String) -> TaskResult<()> {
    Err(TaskError::value_error(message))
}

/// Sleeps, then returns how long.
#[celeriac::task(name = "tasks.sleep")]
async fn sleep(seconds: f64) -> TaskResult<f64> {
    tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
    Ok(seconds)
}

/// Does nothing.
#[celeriac::task(name = "tasks.noop")]
async fn noop() -> TaskResult<()> {
    Ok(())
}

/// Retries once after 0.5 s, then returns "ok".
#[celeriac::task(name = "tasks.retry_once")]
async fn retry_once(ctx: &TaskContext, key: String) -> TaskResult<String> {
    let _ = key;
    if ctx.retries() == 0 {
        return Err(ctx.retry(Some(0.5)));
    }
    Ok("ok".into())
}

/// Says which worker ran it.
#[celeriac::task(name = "tasks.whoami")]
async fn whoami(ctx: &TaskContext) -> TaskResult<Value> {
    Ok(json!({"lang": "rust", "hostname": ctx.hostname()}))
}

/// The routing tutorial's task A: `x + y`, with the worker and the routing key that
/// brought it.
#[celeriac::task(name = "tasks.taskA")]
async fn task_a(ctx: &TaskContext, x: i64, y: i64) -> TaskResult<Value> {
    Ok(routed(ctx, x + y))
}

/// The routing tutorial's task B: `x + y + z`, with the worker and the routing key that
/// brought it.
#[celeriac::task(name = "tasks.taskB")]
async fn task_b(ctx: &TaskContext, x: i64, y: i64, z: i64) -> TaskResult<Value> {
    Ok(routed(ctx, x + y + z))
}

/// `{"result", "hostname", "queue"}`: where a routed task ran (`queue` is the routing key
/// of its delivery).
fn routed(ctx: &TaskContext, result: i64) -> Value {
    json!({
        "result": result,
        "hostname": ctx.hostname(),
        "queue": ctx.delivery_info().routing_key,
    })
}

/// Works for `seconds` (a sleep; none by default), then appends `n` to the shared record
/// list of `key`.
#[celeriac::task(name = "tasks.record")]
async fn record(key: String, n: i64, seconds: Option<f64>) -> TaskResult<i64> {
    if let Some(s) = seconds.filter(|s| *s > 0.0 && s.is_finite()) {
        tokio::time::sleep(Duration::from_secs_f64(s)).await;
    }
    let url = std::env::var("CELERIAC_INTEROP_RECORD")
        .or_else(|_| std::env::var("CELERIAC_INTEROP_BROKER"))
        .map_err(|_| {
            TaskError::runtime_error(
                "neither CELERIAC_INTEROP_RECORD nor CELERIAC_INTEROP_BROKER is set",
            )
        })?;
    let prefix = std::env::var("CELERIAC_INTEROP_KEYPREFIX").unwrap_or_default();
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("RPUSH")
        .arg(format!("{prefix}celeriac-interop:record:{key}"))
        .arg(n)
        .exec_async(&mut conn)
        .await?;
    Ok(n)
}

/// Sleeps `seconds` (at once when redelivered), acknowledged late: survives its worker
/// being killed.
#[celeriac::task(name = "tasks.slow_late", acks_late = true)]
async fn slow_late(ctx: &TaskContext, seconds: f64) -> TaskResult<f64> {
    if !ctx.delivery_info().redelivered {
        tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
    }
    Ok(seconds)
}

/// Appends `n` to the file named by `CELERIAC_MARK_FILE`: one line per execution, so tests
/// count every run across worker processes.
#[celeriac::task(name = "tasks.mark", ignore_result = true)]
fn mark(n: u64) -> TaskResult<u64> {
    append_mark(&n.to_string())?;
    Ok(n)
}

/// Appends `line` to the file named by `CELERIAC_MARK_FILE`.
fn append_mark(line: &str) -> TaskResult<()> {
    use std::io::Write;
    let path = std::env::var("CELERIAC_MARK_FILE")
        .map_err(|_| TaskError::runtime_error("CELERIAC_MARK_FILE is not set"))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line: appends of a few bytes are atomic, so lines from several
    // processes never interleave.
    f.write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}

/// A chord body that counts its runs: appends `body <count> <sum>` to the file named by
/// `CELERIAC_MARK_FILE` and returns the numbers it was given.
#[celeriac::task(name = "tasks.mark_all")]
fn mark_all(numbers: Vec<i64>) -> TaskResult<Vec<i64>> {
    let sum: i64 = numbers.iter().sum();
    append_mark(&format!("body {} {sum}", numbers.len()))?;
    Ok(numbers)
}

/// Sends `tasks.add(n, n)` from inside the task and returns the new task's id: in a prefork
/// child this proves the child reaches the worker's broker.
#[celeriac::task(name = "tasks.relay")]
async fn relay(ctx: &TaskContext, n: i64) -> TaskResult<String> {
    let sent = ctx
        .send(add::new(n, n))
        .await
        .map_err(|e| TaskError::runtime_error(e.to_string()))?;
    Ok(sent.id().to_string())
}

/// Returns the id of the process running it (prefork tests tell children apart).
#[celeriac::task(name = "tasks.pid")]
async fn pid() -> TaskResult<u32> {
    Ok(std::process::id())
}

/// Returns the id and the environment of the process running it (prefork tests check what
/// a child's tasks inherit).
#[celeriac::task(name = "tasks.environ")]
async fn environ() -> TaskResult<Value> {
    let vars: serde_json::Map<String, Value> = std::env::vars_os()
        .map(|(k, v)| {
            let v = Value::String(v.to_string_lossy().into_owned());
            (k.to_string_lossy().into_owned(), v)
        })
        .collect();
    Ok(json!({"pid": std::process::id(), "vars": vars}))
}

/// Aborts the process running it, as a `panic = "abort"` build or a C library would.
#[celeriac::task(name = "tasks.abort")]
fn abort() -> TaskResult<()> {
    std::process::abort()
}

/// Kills the process running it with SIGSEGV, as a segfault would. (Safe Rust cannot
/// fault; the first SIGSEGV is taken by std's stack-overflow handler, which then restores
/// the default action, so the second one kills.)
#[celeriac::task(name = "tasks.segfault")]
fn segfault() -> TaskResult<()> {
    let me = std::process::id().to_string();
    for _ in 0..50 {
        let _ = std::process::Command::new("kill")
            .args(["-SEGV", &me])
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Leaks `mb` MiB (written, so it is resident) and returns the process id.
#[celeriac::task(name = "tasks.leak")]
fn leak(mb: usize) -> TaskResult<u32> {
    let v: Vec<u8> = vec![7u8; mb * 1024 * 1024];
    std::hint::black_box(Box::leak(v.into_boxed_slice()));
    Ok(std::process::id())
}

/// Burns a core for `secs` seconds, then returns how many rounds it did.
#[celeriac::task(name = "tasks.spin")]
fn spin(secs: f64) -> TaskResult<u64> {
    let start = std::time::Instant::now();
    let mut x: u64 = 0;
    while start.elapsed().as_secs_f64() < secs {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    Ok(x % 1000)
}

/// A blocking loop that stops at its soft time limit.
#[celeriac::task(name = "tasks.grind")]
fn grind(ctx: &TaskContext, secs: f64) -> TaskResult<u64> {
    let start = std::time::Instant::now();
    let mut rounds = 0;
    while start.elapsed().as_secs_f64() < secs {
        ctx.check_soft_time_limit()?;
        std::thread::sleep(Duration::from_millis(5));
        rounds += 1;
    }
    Ok(rounds)
}

/// Whether `CELERIAC_INTEROP_ACKS_LATE` asks for late acknowledgement (`1` or `true`).
fn acks_late_from_env() -> bool {
    std::env::var("CELERIAC_INTEROP_ACKS_LATE")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The Celery tutorial's beat schedule when `CELERIAC_TESTAPP_BEAT=<queue>,<scale>` is
/// set (periods times `scale`, sent to `queue`): `worker -B` and `beat` then send it.
fn tutorial_schedule(mut app: celeriac::AppBuilder) -> celeriac::AppBuilder {
    let Ok(spec) = std::env::var("CELERIAC_TESTAPP_BEAT") else {
        return app;
    };
    let (queue, scale) = spec.split_once(',').unwrap_or((spec.as_str(), "1"));
    let scale: f64 = scale.parse().unwrap_or(1.0);
    let every = |secs: f64| celeriac::beat::every(secs * scale);
    app = app
        .periodic(
            "taskA-every-20",
            task_a::new(5, 6).queue(queue),
            every(20.0),
        )
        .periodic(
            "taskB-every-200",
            task_b::new(10, 20, 30).queue(queue),
            every(200.0),
        )
        .periodic("add-every-10", add::new(1, 2).queue(queue), every(10.0));
    app
}

fn main() {
    celeriac::cli::run(tutorial_schedule(
        celeriac::App::builder()
            .acks_late(acks_late_from_env())
            .task(add)
            .task(mul)
            .task(xsum)
            .task(echo)
            .task(fail)
            .task(sleep)
            .task(noop)
            .task(retry_once)
            .task(whoami)
            .task(task_a)
            .task(task_b)
            .task(record)
            .task(slow_late)
            .task(mark)
            .task(mark_all)
            .task(relay)
            .task(pid)
            .task(environ)
            .task(abort)
            .task(segfault)
            .task(leak)
            .task(spin)
            .task(grind),
    ))
}
