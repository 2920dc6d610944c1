//! Quickstart: define two tasks, start a worker in this process, send tasks, read results.
//!
//! `cargo run -p celeriac-examples --example quickstart`

use std::time::Duration;

use celeriac::{App, TaskContext, TaskError, TaskResult};

/// Adds two numbers (an `async fn` task: runs on the async runtime).
#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

/// Counts words (a plain `fn` task: runs on a blocking thread).
#[celeriac::task(name = "tasks.word_count")]
fn word_count(ctx: &TaskContext, text: String) -> TaskResult<usize> {
    if text.is_empty() {
        return Err(TaskError::value_error(format!(
            "task {} got empty text",
            ctx.id()
        )));
    }
    Ok(text.split_whitespace().count())
}

#[tokio::main]
async fn main() -> Result<(), celeriac::Error> {
    let app = App::builder()
        .broker_url("memory://")
        .task(add)
        .task(word_count)
        .build()
        .await?;

    let worker = app.worker().concurrency(4).build();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    let sum = add::new(2, 3).apply_async(&app).await?;
    println!(
        "add(2, 3) = {}",
        sum.get::<i64>(Duration::from_secs(5)).await?
    );

    let words = word_count::new("the quick brown fox".into())
        .delay(&app)
        .await?;
    println!(
        "word_count = {}",
        words.get::<usize>(Duration::from_secs(5)).await?
    );

    let failed = word_count::new(String::new()).delay(&app).await?;
    match failed.get::<usize>(Duration::from_secs(5)).await {
        Err(e) => println!("word_count(\"\") failed as expected: {e}"),
        Ok(n) => println!("unexpected success: {n}"),
    }

    stop.warm();
    let report = running.await.expect("worker task")?;
    println!(
        "worker processed {} tasks",
        report.stats.succeeded + report.stats.failed
    );
    Ok(())
}
