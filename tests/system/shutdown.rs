//! Warm and cold shutdown: unstarted messages go back, running late-ack tasks are
//! requeued when abandoned, and nothing is lost or run twice.

use std::time::Duration;

use celeriac::Signature;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_returns_unstarted_messages_and_finishes_running_ones() {
    let app = app().await;
    let k = key();
    let sigs: Vec<Signature> = (0..5).map(|_| hold::new(k.clone(), 300)).collect();
    let results = app.send_many(sigs).await.unwrap();
    let w = start(&app, |b| b.concurrency(1).prefetch(10));
    until("first task started", || async {
        count(&format!("{k}:started")) == 1
    })
    .await;
    let report = w.warm().await;
    assert_eq!(report.returned, 4, "prefetched, unstarted messages go back");
    assert_eq!(report.abandoned, 0);
    assert_eq!(count(&format!("{k}:done")), 1, "the running task finished");
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 4);
    // A new worker runs exactly the four returned ones.
    let w2 = start(&app, |b| b.concurrency(4));
    for r in &results {
        r.get::<i64>(WAIT).await.unwrap();
    }
    assert_eq!(count(&format!("{k}:done")), 5, "each task ran exactly once");
    w2.warm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_shutdown_requeues_a_running_late_ack_task() {
    let app = app().await;
    let k = key();
    let r = hold_late::new(k.clone(), 60_000)
        .apply_async(&app)
        .await
        .unwrap();
    let w = start(&app, |b| b);
    until("task started", || async {
        count(&format!("{k}:started")) == 1
    })
    .await;
    let report = w.cold().await;
    assert_eq!(report.abandoned, 1);
    assert_eq!(
        app.broker().queue_depth("celery").await.unwrap(),
        1,
        "late-ack message not requeued"
    );
    assert_eq!(r.state().await.unwrap(), celeriac::State::Pending);
    // Redelivered (and, seeing that, the task skips its sleep).
    let _w2 = start(&app, |b| b);
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_goes_cold_after_its_timeout() {
    let app = app().await;
    let k = key();
    hold_late::new(k.clone(), 60_000)
        .apply_async(&app)
        .await
        .unwrap();
    let w = start(&app, |b| b.shutdown_timeout(Duration::from_millis(200)));
    until("task started", || async {
        count(&format!("{k}:started")) == 1
    })
    .await;
    let report = w.warm().await;
    assert_eq!(report.abandoned, 1);
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_held_eta_messages() {
    let app = app().await;
    let k = key();
    // Published without native delay, so the worker itself holds it.
    let sig = count_task::new(k.clone()).countdown(60.0);
    let msg = celeriac::core::TaskMessage::from_signature(
        &sig,
        &celeriac::Route::queue("celery"),
        &celeriac::core::protocol::SendContext::default(),
    )
    .unwrap();
    app.broker()
        .publish(msg.encode(), celeriac::core::PublishOptions::default())
        .await
        .unwrap();
    let w = start(&app, |b| b);
    until("message taken", || async {
        app.broker().queue_depth("celery").await.unwrap() == 0
    })
    .await;
    let report = w.warm().await;
    assert_eq!(report.returned, 1);
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 1);
    assert_eq!(count(&k), 0);
}
