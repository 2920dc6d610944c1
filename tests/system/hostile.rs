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

/// A message over the worker's `max_message_size` is rejected unread: FAILURE
/// `MessageTooLarge` under its id, and the next task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_rejected_with_a_failure() {
    let dir = ScratchDir::new("celeriac-hostile");
    let app = builder_on(&dir.sqlite_url("q.sqlite", ""))
        .build()
        .await
        .unwrap();
    let w = start(&app, |b| b.concurrency(2).max_message_size(4_096));
    let big = echo::new(json!("x".repeat(10_000)))
        .apply_async(&app)
        .await
        .unwrap();
    let exc = exception_of(&big).await;
    assert_eq!(exc.exc_type, "MessageTooLarge");
    assert!(exc.message().contains("4096"), "{}", exc.message());
    assert_eq!(
        run::<i64>(&app, add::new(1, 2)).await,
        3,
        "the worker goes on"
    );
    let report = w.warm().await;
    assert_eq!(report.stats.rejected, 1);
}

/// Far-future ETAs beyond `max_held_eta` stay in the broker: the worker holds 10 (and
/// its consumer buffers one prefetch more), and fetches again only when some leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_eta_messages_are_bounded_in_memory() {
    let Some(scope) =
        celeriac_testing::services::RedisScope::new("held_eta_messages_are_bounded_in_memory")
    else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let sigs: Vec<Signature> = (0..50).map(|i| add::new(i, 0).countdown(3_600.0)).collect();
    let sent = app.send_many(sigs).await.unwrap();
    let w = start(&app, |b| b.concurrency(2).prefetch(8).max_held_eta(10));
    let depth = || async { app.broker().queue_depth("celery").await.unwrap() };
    // Without the bound the worker takes all 50 (held messages free their prefetch).
    until("10 held, 8 buffered, 32 left in Redis", || async {
        depth().await == 32
    })
    .await;
    assert_eq!(w.stats.snapshot().received, 10);
    let ids: Vec<&str> = sent.iter().map(|r| r.id()).collect();
    app.control().revoke(&ids, false).await.unwrap();
    until("every message fetched, as the held ones left", || async {
        depth().await == 0
    })
    .await;
    // At least the ten it held were settled (REVOKED) when the revoke came.
    let report = w.warm().await;
    assert!(report.stats.revoked >= 10, "{report:?}");
}

/// Unknown task names do not grow the worker's per-task counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_task_names_do_not_grow_the_stats() {
    let app = app().await;
    let w = start(&app, |b| b.concurrency(2));
    let bogus: Vec<Signature> = (0..200)
        .map(|i| Signature::new(format!("bogus.{i}")))
        .collect();
    for r in app.send_many(bogus).await.unwrap() {
        exception_of(&r).await;
    }
    assert_eq!(run::<i64>(&app, add::new(1, 2)).await, 3);
    let stats = w.warm().await.stats;
    assert_eq!(stats.failed, 200);
    assert_eq!(
        stats.per_task.keys().collect::<Vec<_>>(),
        vec!["tasks.add"],
        "unknown names were counted by name"
    );
}

/// `prefetch(0)` is not "unlimited": the worker takes the default instead.
#[tokio::test]
async fn prefetch_zero_is_not_unlimited() {
    let app = app().await;
    let banner = app.worker().concurrency(2).prefetch(0).build().banner();
    assert!(banner.contains(".> prefetch:    8"), "{banner}");
}
