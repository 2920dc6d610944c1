//! Remote control: revoke (before start, held, running with terminate) and ping, on the
//! in-process engines; the Python side of it is in `interop.rs`.

use std::time::{Duration, Instant};

use celeriac::Error;
use serde_json::json;

use crate::support::*;

/// Waits until `n` workers answer a ping: they listen for commands.
async fn listening(app: &celeriac::App, n: usize) {
    until("workers listening for commands", || async {
        app.control()
            .ping(Duration::from_millis(200))
            .await
            .unwrap()
            .len()
            == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_task_does_not_run_when_it_comes_due() {
    let app = app().await;
    let w = start(&app, |b| b);
    listening(&app, 1).await;
    let k = key();
    let r = count_task::new(k.clone())
        .countdown(0.8)
        .apply_async(&app)
        .await
        .unwrap();
    r.revoke(false).await.unwrap();
    let err = r.get::<i64>(WAIT).await.unwrap_err();
    let Error::TaskRevoked { exception, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(exception.exc_message, json!(["revoked"]));
    // A marker on the same queue, due after it: once the marker has run and the worker
    // has stopped (warm) with nothing left in the queue, the revoked task came due and
    // would be counted had it run.
    let marker = count_task::new(key())
        .countdown(0.8)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(marker.get::<i64>(WAIT).await.unwrap(), 1, "marker");
    w.warm().await;
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
    assert_eq!(count(&k), 0, "a revoked task ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_reaches_every_worker_and_a_held_task_is_settled_at_once() {
    let dir = celeriac_testing::services::ScratchDir::new("celeriac-revoke");
    // SQLite: shared by two workers, fanout through the file.
    let url = dir.sqlite_url("q.sqlite", "");
    let app = builder_on(&url).build().await.unwrap();
    let a = start(&app, |b| b.name("a@test"));
    let app_b = builder_on(&url).build().await.unwrap();
    let b = start(&app_b, |b| b.name("b@test"));
    listening(&app, 2).await;
    let k = key();
    let results = app
        .send_many(
            (0..4)
                .map(|_| count_task::new(k.clone()).countdown(1.5))
                .collect(),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = results.iter().map(|r| r.id()).collect();
    app.control().revoke(&ids, false).await.unwrap();
    for r in &results {
        let got = r.get::<i64>(WAIT).await;
        assert!(matches!(got, Err(Error::TaskRevoked { .. })), "{got:?}");
    }
    // A marker on the same queue, due after the revoked tasks: once it has run, they came
    // due and were taken; once both workers have stopped (warm: what they started
    // finished) with nothing left in the queue, a revoked task that ran would be counted.
    let marker = count_task::new(key())
        .countdown(1.5)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(marker.get::<i64>(WAIT).await.unwrap(), 1, "marker");
    a.warm().await;
    b.warm().await;
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
    assert_eq!(count(&k), 0, "a revoked task ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_stops_a_running_async_task() {
    let app = app().await;
    let w = start(&app, |b| b);
    let k = key();
    listening(&app, 1).await;
    let r = sleepy::new(k.clone(), 10_000)
        .apply_async(&app)
        .await
        .unwrap();
    until("task running", || async { w.stats.snapshot().active == 1 }).await;
    let t0 = Instant::now();
    r.revoke(true).await.unwrap();
    let err = r.get::<()>(WAIT).await.unwrap_err();
    let Error::TaskRevoked { exception, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(exception.exc_message, json!(["terminated"]));
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(count(&format!("{k}:done")), 0);
    assert_eq!(run::<i64>(&app, add::new(1, 2)).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_collects_a_reply_from_each_worker() {
    let app = app().await;
    let _a = start(&app, |b| b.name("one@test"));
    let _b = start(&app, |b| b.name("two@test"));
    listening(&app, 2).await;
    let mut replies = app
        .control()
        .ping(Duration::from_millis(500))
        .await
        .unwrap();
    replies.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        replies,
        vec![
            ("one@test".to_string(), json!({"ok": "pong"})),
            ("two@test".to_string(), json!({"ok": "pong"}))
        ]
    );
    let stats = app
        .control()
        .broadcast(
            "stats",
            json!({}),
            Some(&["two@test".to_string()]),
            Some(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].1["pid"], json!(std::process::id()));
}
