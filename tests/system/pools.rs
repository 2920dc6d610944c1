//! Pools and time limits: hard limits stop async tasks (the future is dropped) and fail
//! thread tasks (the thread is abandoned); soft limits reach the task through its
//! context; the solo pool runs one task at a time, within the same limits.

use std::time::{Duration, Instant};

use celeriac::Pool;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_time_limit_drops_an_async_task() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let k = key();
    let t0 = Instant::now();
    let r = sleepy::new(k.clone(), 1_500)
        .time_limit(0.2)
        .apply_async(&app)
        .await
        .unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(exc.exc_type, "TimeLimitExceeded");
    assert_eq!(exc.exc_module.as_deref(), Some("billiard.exceptions"));
    assert_eq!(exc.exc_message, json!([0.2]));
    assert!(
        // Not stopped, it would take its whole 1.5 s; stopped, it fails after 0.2 s.
        t0.elapsed() < Duration::from_millis(1_500),
        "the task was not stopped at its limit"
    );
    // A marker: the same task, started after the stopped one and without a limit. Once it
    // is done, the stopped one would have been done too had it kept running.
    let marker = key();
    run::<()>(&app, sleepy::new(marker.clone(), 1_500)).await;
    assert_eq!(count(&format!("{marker}:done")), 1, "marker");
    assert_eq!(
        count(&format!("{k}:done")),
        0,
        "the stopped task kept running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_wide_time_limit_applies_to_tasks_without_one() {
    let app = app().await;
    let _w = start(&app, |b| b.time_limit(0.2));
    let r = sleepy::new(key(), 5_000).apply_async(&app).await.unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "TimeLimitExceeded");
    // A limit on the message wins over the worker's.
    let ok = sleepy::new(key(), 400)
        .time_limit(5.0)
        .apply_async(&app)
        .await
        .unwrap();
    ok.get::<()>(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_time_limit_lets_an_async_task_clean_up() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let k = key();
    let r = tidy::new(k.clone())
        .soft_time_limit(0.2)
        .time_limit(5.0)
        .apply_async(&app)
        .await
        .unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(
        (exc.exc_type.as_str(), exc.exc_module.as_deref()),
        ("SoftTimeLimitExceeded", Some("billiard.exceptions"))
    );
    assert_eq!(count(&format!("{k}:cleaned")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_in_the_threads_pool() {
    let app = app().await;
    let w = start(&app, |b| b.pool(Pool::Threads));
    // Soft: a blocking loop sees it and stops.
    let r = grind::new(10_000)
        .soft_time_limit(0.2)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "SoftTimeLimitExceeded");
    // Hard: the task fails at the limit; its thread cannot be killed and is abandoned.
    let t0 = Instant::now();
    let r = grind::new(1_500)
        .time_limit(0.3)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "TimeLimitExceeded");
    assert!(
        t0.elapsed() < Duration::from_millis(1_400),
        "waited for the thread"
    );
    assert_eq!(
        run::<i64>(&app, add::new(1, 1)).await,
        2,
        "the worker goes on"
    );
    w.warm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solo_pool_runs_one_task_at_a_time() {
    let app = app().await;
    let _w = start(&app, |b| b.pool(Pool::Solo).concurrency(8));
    let k = key();
    let results = app
        .send_many((0..5).map(|_| gauge::new(k.clone(), 40)).collect())
        .await
        .unwrap();
    for r in results {
        r.get::<()>(WAIT).await.unwrap();
    }
    assert_eq!(count(&format!("{k}:max")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_in_the_solo_pool() {
    let app = app().await;
    let _w = start(&app, |b| b.pool(Pool::Solo));
    let k = key();
    let t0 = Instant::now();
    let r = sleepy::new(k.clone(), 5_000)
        .time_limit(0.2)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "TimeLimitExceeded");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "not stopped at its limit"
    );
    let r = tidy::new(k.clone())
        .soft_time_limit(0.2)
        .time_limit(5.0)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "SoftTimeLimitExceeded");
    assert_eq!(count(&format!("{k}:cleaned")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_grows_under_load_and_shrinks_when_idle() {
    let app = app().await;
    let w = start(&app, |b| {
        b.autoscale(4, 1)
            .autoscale_keepalive(Duration::from_millis(300))
            .prefetch(20)
    });
    until("started with MIN slots", || async {
        w.stats.snapshot().concurrency == 1
    })
    .await;
    let k = key();
    let results = app
        .send_many((0..12).map(|_| gauge::new(k.clone(), 200)).collect())
        .await
        .unwrap();
    for r in results {
        r.get::<()>(WAIT).await.unwrap();
    }
    assert_eq!(
        count(&format!("{k}:max")),
        4,
        "never more than MAX at once, and it grew to MAX"
    );
    until("shrunk back to MIN", || async {
        w.stats.snapshot().concurrency == 1
    })
    .await;
}
