//! A user's binary as the CLI and interop tests see it: the interop task set (the same
//! names and behaviour as `tests/python/celeriac_interop/tasks.py`) and
//! `celeriac::cli::run`.
//!
//! `tasks.record` appends to the Redis list `<CELERIAC_INTEROP_KEYPREFIX>celeriac-interop:record:<key>`
//! on `CELERIAC_INTEROP_BROKER`, exactly as the Python task does, so tests count every
//! execution across Rust and Python workers.

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

/// Appends `n` to the shared record list of `key`.
#[celeriac::task(name = "tasks.record")]
async fn record(key: String, n: i64) -> TaskResult<i64> {
    let url = std::env::var("CELERIAC_INTEROP_BROKER")
        .map_err(|_| TaskError::runtime_error("CELERIAC_INTEROP_BROKER is not set"))?;
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
    use std::io::Write;
    let path = std::env::var("CELERIAC_MARK_FILE")
        .map_err(|_| TaskError::runtime_error("CELERIAC_MARK_FILE is not set"))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line: appends of a few bytes are atomic, so lines from several
    // processes never interleave.
    f.write_all(format!("{n}\n").as_bytes())?;
    Ok(n)
}

fn main() {
    celeriac::cli::run(
        celeriac::App::builder()
            .task(add)
            .task(mul)
            .task(xsum)
            .task(echo)
            .task(fail)
            .task(sleep)
            .task(noop)
            .task(retry_once)
            .task(whoami)
            .task(record)
            .task(slow_late)
            .task(mark),
    )
}
