//! Hostile input from the wire: numbers out of range in a message are clamped or ignored
//! with a logged reason — the task runs, its result is stored, no pool slot is lost.

use std::time::Duration;

use celeriac::{Pool, Signature};
use celeriac_testing::services::ScratchDir;
use serde_json::json;

use crate::proc::WorkerProcess;
use crate::support::*;

/// More tasks than slots, each with `timelimit: [1e300, -5]`: `1e300` s overflowed
/// `Duration::from_secs_f64` (a panic: no result, and in prefork a slot lost per message).
fn far_limits(n: i64) -> Vec<Signature> {
    (0..n)
        .map(|i| add::new(i, 1).time_limit(1e300).soft_time_limit(-5.0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_time_limits_run_the_task_in_the_async_and_thread_pools() {
    for pool in [Pool::Async, Pool::Threads] {
        let app = app().await;
        let w = start(&app, |b| b.concurrency(2).pool(pool));
        for (i, r) in app
            .send_many(far_limits(6))
            .await
            .unwrap()
            .iter()
            .enumerate()
        {
            let v = r
                .get::<i64>(WAIT)
                .await
                .unwrap_or_else(|e| panic!("{pool:?} task {i}: {e}"));
            assert_eq!(v, i as i64 + 1);
        }
        // A chain step carries its own limit into its message.
        let chained = celeriac::chain![add::new(1, 1), add::s(1).time_limit(1e300)]
            .apply_async(&app)
            .await
            .unwrap();
        assert_eq!(chained.get::<i64>(WAIT).await.unwrap(), 3);
        w.warm().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_time_limits_run_the_task_in_the_prefork_pool() {
    let dir = ScratchDir::new("celeriac-hostile");
    let url = dir.sqlite_url("q.sqlite", "");
    let _worker = WorkerProcess::spawn(&url, &["--pool", "prefork", "-c", "2"], &[]);
    let app = celeriac::App::builder()
        .broker_url(&url)
        .build()
        .await
        .unwrap();
    let sigs: Vec<Signature> = (0..6)
        .map(|i| {
            Signature::new("tasks.add")
                .args(vec![json!(i), json!(1)])
                .time_limit(1e300)
                .soft_time_limit(-5.0)
        })
        .collect();
    for (i, r) in app.send_many(sigs).await.unwrap().iter().enumerate() {
        let v = r
            .get::<i64>(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("prefork task {i}: {e}"));
        assert_eq!(v, i as i64 + 1);
    }
}
