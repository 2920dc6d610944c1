//! Workflows: a chain, a group, a chord, callbacks, and `Pool.map` over the workers — on the
//! embedded SQLite file by default (set `CANVAS_BROKER=redis://…` for Redis), with a worker
//! in this process.
//!
//! `cargo run -p celeriac-examples --example canvas`

use std::time::{Duration, Instant};

use celeriac::{chain, chord, group, App, TaskResult};
use futures::StreamExt;

#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

#[celeriac::task(name = "tasks.mul")]
async fn mul(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x * y)
}

#[celeriac::task(name = "tasks.xsum")]
fn xsum(numbers: Vec<i64>) -> TaskResult<i64> {
    Ok(numbers.iter().sum())
}

#[celeriac::task(name = "tasks.sq")]
async fn sq(x: i64) -> TaskResult<i64> {
    Ok(x * x)
}

#[celeriac::task(name = "tasks.fail")]
async fn fail(message: String) -> TaskResult<i64> {
    Err(celeriac::TaskError::value_error(message))
}

/// An errback: gets the id of the task that failed.
#[celeriac::task(name = "tasks.report")]
async fn report(failed_id: String) -> TaskResult<()> {
    println!("  errback: task {failed_id} failed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), celeriac::Error> {
    const WAIT: Duration = Duration::from_secs(30);
    // A scratch SQLite file, removed at the end, unless a broker is given.
    let scratch =
        std::env::temp_dir().join(format!("celeriac-canvas-{}.sqlite", std::process::id()));
    let broker = std::env::var("CANVAS_BROKER")
        .unwrap_or_else(|_| format!("sqlite://{}", scratch.display()));
    let app = App::builder()
        .broker_url(&broker)
        .task(add)
        .task(mul)
        .task(xsum)
        .task(sq)
        .task(fail)
        .task(report)
        .build()
        .await?;
    println!("broker: {}", app.broker().url());
    let worker = app.worker().concurrency(8).build();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    let r = chain![add::new(1, 1), add::s(3), mul::s(10)]
        .apply_async(&app)
        .await?;
    println!("chain  ((1+1)+3)*10        = {}", r.get::<i64>(WAIT).await?);

    let g = group((0..10).map(|i| add::new(i, i)))
        .apply_async(&app)
        .await?;
    println!(
        "group  [i+i for i<10]      = {:?}",
        g.get::<i64>(WAIT).await?
    );

    let t0 = Instant::now();
    let r = chord(group((0..1000).map(|i| add::new(i, i))), xsum::s())
        .apply_async(&app)
        .await?;
    let total = r.get::<i64>(WAIT).await?;
    println!(
        "chord  sum(i+i for i<1000)  = {total} ({:.0?} for 1,000 header tasks and the body)",
        t0.elapsed()
    );

    let r = chord(
        group([add::new(1, 1), fail::new("bad input".into())]),
        xsum::s(),
    )
    .apply_async(&app)
    .await?;
    println!(
        "chord with a failing member  -> {}",
        r.get::<i64>(WAIT).await.unwrap_err()
    );

    let f = fail::new("boom".into())
        .link_error(report::s())
        .apply_async(&app)
        .await?;
    let _ = f.get::<i64>(WAIT).await;

    let squares = app.map(sq, 1..=10, 3).await?;
    println!("app.map(sq, 1..=10, 3)     = {squares:?}");
    let mut done = app.imap_unordered(add, (0..5).map(|i| (i, 100)), 1).await?;
    print!("imap_unordered (as they finish):");
    while let Some(v) = done.next().await {
        print!(" {}", v?);
    }
    println!();

    // Let the errback's line print before stopping.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.warm();
    running.await.expect("worker task")?;
    drop(app);
    for suffix in ["", "-wal", "-shm", "-wake"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch.display()));
    }
    Ok(())
}
