//! The worker end to end on memory://: results, failures, panics, retries, countdown,
//! expiry, unknown tasks, malformed messages, concurrency, prefetch, priorities, routing.

use std::time::{Duration, Instant};

use celeriac::core::broker::PublishOptions;
use celeriac::core::message::{DeliveryInfo, Message, Properties};
use celeriac::core::protocol::{SendContext, TaskMessage};
use celeriac::core::Route;
use celeriac::{Error, Signature, State};
use serde_json::{json, Value};

use crate::support::*;

fn raw(queue: &str, headers: Value, content_type: &str, body: &[u8]) -> Message {
    Message {
        headers: headers.as_object().cloned().unwrap_or_default(),
        properties: Properties {
            delivery_info: DeliveryInfo {
                exchange: String::new(),
                routing_key: queue.into(),
                redelivered: None,
            },
            ..Properties::default()
        },
        content_type: content_type.into(),
        content_encoding: "utf-8".into(),
        body: body.to_vec().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_task_and_stores_celerys_record() {
    let app = app().await;
    let w = start(&app, |b| b);
    let r = add::new(2, 3).apply_async(&app).await.unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 5);
    assert!(r.ready().await.unwrap());
    assert!(r.successful().await.unwrap());
    assert!(!r.failed().await.unwrap());
    assert_eq!(r.state().await.unwrap(), State::Success);
    let stored = app.backend().unwrap().get(r.id()).await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&stored.to_json()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "status",
            "result",
            "traceback",
            "children",
            "date_done",
            "task_id"
        ]
    );
    assert_eq!(v["children"], json!([]));
    assert!(v["date_done"].as_str().unwrap().ends_with("+00:00"));
    r.forget().await.unwrap();
    assert_eq!(r.state().await.unwrap(), State::Pending);
    let report = w.warm().await;
    assert_eq!(report.stats.succeeded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_error_becomes_failure_with_type_and_message() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let r = fail::new("boom".into()).apply_async(&app).await.unwrap();
    let err = r.get::<()>(WAIT).await.unwrap_err();
    let Error::TaskFailed {
        exception,
        traceback,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(exception.exc_type, "ValueError");
    assert_eq!(exception.exc_module.as_deref(), Some("builtins"));
    assert_eq!(exception.exc_message, json!(["boom"]));
    assert!(traceback
        .as_deref()
        .unwrap()
        .ends_with("ValueError: boom\n"));
    assert!(r.failed().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_task_fails_and_worker_stays_up() {
    let app = app().await;
    let w = start(&app, |b| b);
    for sig in [
        panic_async::new("async boom".into()),
        panic_blocking::new("thread boom".into()),
    ] {
        let r = sig.apply_async(&app).await.unwrap();
        let exc = exception_of(&r).await;
        assert_eq!(exc.exc_type, "RustPanic");
        assert!(exc.message().ends_with("boom"), "{exc}");
    }
    // Still serving.
    let r = add::new(1, 1).apply_async(&app).await.unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 2);
    let report = w.warm().await;
    assert_eq!((report.stats.failed, report.stats.succeeded), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_succeeds_on_the_third_try() {
    let app = app().await;
    let w = start(&app, |b| b);
    let k = key();
    let r = flaky::new(k.clone(), 2).apply_async(&app).await.unwrap();
    let v: Value = r.get(WAIT).await.unwrap();
    assert_eq!(v, json!({"attempt": 3, "retries": 2}));
    assert_eq!(count(&k), 3);
    let report = w.warm().await;
    assert_eq!((report.stats.retried, report.stats.succeeded), (2, 1));
    assert_eq!(report.stats.per_task["tasks.flaky"].retried, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_and_the_task_fails_with_its_last_error() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let k = key();
    let r = always_flaky::new(k.clone())
        .apply_async(&app)
        .await
        .unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        ("FlakyError", "attempt 3".to_string())
    );
    assert_eq!(count(&k), 3, "1 run + max_retries=2 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backoff_doubles_the_delay() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let k = key();
    let r = backoff::new(k.clone()).apply_async(&app).await.unwrap();
    assert_eq!(r.get::<u32>(WAIT).await.unwrap(), 3);
    let t: Vec<i64> = entries(&k).iter().map(|v| v.as_i64().unwrap()).collect();
    let gaps: Vec<i64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    // factor 0.1 s, no jitter: 0.1, 0.2, 0.4 s (lower bounds; the machine may be slower).
    for (gap, min) in gaps.iter().zip([100_000, 200_000, 400_000]) {
        assert!(*gap >= min, "gaps {gaps:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_is_honoured_without_blocking_other_tasks() {
    let app = app().await;
    let _w = start(&app, |b| b.concurrency(1));
    let t0 = Instant::now();
    let later = add::new(1, 2)
        .countdown(0.6)
        .apply_async(&app)
        .await
        .unwrap();
    let now = add::new(2, 2).apply_async(&app).await.unwrap();
    assert_eq!(now.get::<i64>(WAIT).await.unwrap(), 4);
    assert!(!later.ready().await.unwrap(), "ran before its countdown");
    assert_eq!(later.get::<i64>(WAIT).await.unwrap(), 3);
    assert!(t0.elapsed() >= Duration::from_millis(600));
}

/// A broker without native delay (Redis, a Python client's message) hands the worker an
/// ETA message at once; the worker holds it without taking a slot or a prefetch place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_message_is_held_by_the_worker_without_a_slot() {
    let app = app().await;
    let _w = start(&app, |b| b.concurrency(1).prefetch(1));
    let eta = chrono::Utc::now() + chrono::Duration::milliseconds(700);
    let sig = add::new(5, 5).eta(eta);
    let msg = TaskMessage::from_signature(&sig, &Route::queue("celery"), &SendContext::default())
        .unwrap();
    let id = msg.headers.id.clone();
    app.broker()
        .publish(msg.encode(), PublishOptions::default())
        .await
        .unwrap();
    let quick = add::new(1, 1).apply_async(&app).await.unwrap();
    assert_eq!(
        quick.get::<i64>(WAIT).await.unwrap(),
        2,
        "a held ETA task blocked the only slot"
    );
    let held = app.async_result(id);
    assert_eq!(held.get::<i64>(WAIT).await.unwrap(), 10);
    assert!(chrono::Utc::now() >= eta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_task_is_revoked_and_not_run() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let k = key();
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let r = count_task::new(k.clone())
        .expires_at(past)
        .apply_async(&app)
        .await
        .unwrap();
    let err = r.get::<i64>(WAIT).await.unwrap_err();
    let Error::TaskRevoked { exception, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (exception.exc_type.as_str(), &exception.exc_message),
        ("TaskRevokedError", &json!(["expired"]))
    );
    // One that expires while it waits for its countdown is not run either.
    let r2 = count_task::new(k.clone())
        .countdown(0.3)
        .expires(0.1)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r2.wait(WAIT).await.unwrap().status, State::Revoked);
    assert_eq!(count(&k), 0, "an expired task ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_name_stores_not_registered_and_drops_the_message() {
    let app = app().await;
    let w = start(&app, |b| b);
    let r = app
        .send_task("tasks.nope", json!([1]), json!({}))
        .await
        .unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(exc.exc_type, "NotRegistered");
    assert_eq!(exc.exc_message, json!(["tasks.nope"]));
    assert_eq!(run::<i64>(&app, add::new(1, 2)).await, 3);
    assert_eq!(
        app.broker().queue_depth("celery").await.unwrap(),
        0,
        "unknown task was requeued"
    );
    assert_eq!(w.warm().await.stats.rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_rejected_and_the_worker_keeps_going() {
    let app = app().await;
    let w = start(&app, |b| b);
    let q = "celery";
    let id = |n: u8| format!("00000000-0000-4000-8000-00000000000{n}");
    let bad = [
        raw(
            q,
            json!({"task": "tasks.add", "id": id(1)}),
            "application/json",
            b"not json",
        ),
        raw(
            q,
            json!({"task": "tasks.add", "id": id(2)}),
            "application/x-python-serialize",
            b"\x80\x04cos\nsystem\n.",
        ),
        raw(
            q,
            json!({"task": "tasks.add", "id": id(3)}),
            "application/json",
            b"[1, 2, 3]",
        ),
        raw(
            q,
            json!({"task": "tasks.add", "id": id(4), "eta": "not-a-date"}),
            "application/json",
            b"[[1, 2], {}, {}]",
        ),
        raw(
            q,
            json!({"task": "tasks.add"}),
            "application/json",
            b"[[1, 2], {}, {}]",
        ),
        raw(
            q,
            json!({"id": id(5)}),
            "application/json",
            b"[[1, 2], {}, {}]",
        ),
        raw(q, json!({}), "application/json", b"[[1, 2], {}, {}]"),
    ];
    let n_bad = bad.len() as u64;
    for m in bad {
        app.broker()
            .publish(m, PublishOptions::default())
            .await
            .unwrap();
    }
    // Later good tasks still run.
    assert_eq!(run::<i64>(&app, add::new(2, 3)).await, 5);
    let expect = [
        (1, "DecodeError"),
        (2, "ContentDisallowed"),
        (3, "InvalidTaskError"),
        (4, "InvalidTaskError"),
        (5, "InvalidTaskError"),
    ];
    for (n, exc_type) in expect {
        let exc = exception_of(&app.async_result(id(n))).await;
        assert_eq!(exc.exc_type, exc_type, "message {n}: {exc}");
    }
    let pickle = exception_of(&app.async_result(id(2))).await.message();
    assert!(
        pickle.contains("refusing to deserialize untrusted content of type pickle"),
        "{pickle}"
    );
    until("all bad messages rejected", || async {
        w.stats.snapshot().rejected == n_bad
    })
    .await;
    assert_eq!(app.broker().queue_depth(q).await.unwrap(), 0);
    let report = w.warm().await;
    assert_eq!(report.stats.succeeded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_argument_types_fail_with_type_error() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let r = app
        .send_task("tasks.add", json!(["two", 3]), json!({}))
        .await
        .unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(exc.exc_type, "TypeError");
    assert!(
        exc.message().starts_with("tasks.add() argument 'x'"),
        "{exc}"
    );
    let r = app
        .send_task("tasks.add", json!([1]), json!({"y": 2, "z": 3}))
        .await
        .unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(
        exc.message(),
        "tasks.add() got an unexpected keyword argument 'z'"
    );
    // kwargs bind by name.
    let r = app
        .send_task("tasks.add", json!([]), json!({"y": 2, "x": 40}))
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_errors_are_typed() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let r = add::new(1, 1).apply_async(&app).await.unwrap();
    let err = r.get::<String>(WAIT).await.unwrap_err();
    assert!(matches!(err, Error::ResultType { .. }), "{err:?}");
    let nobody = add::new(1, 1)
        .queue("nobody-listens")
        .apply_async(&app)
        .await
        .unwrap();
    let err = nobody
        .get::<i64>(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "task {} did not finish within 100ms (state PENDING)",
            nobody.id()
        )
    );
    let err = app
        .send_task("tasks.add", json!({"x": 1}), json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArguments { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_tasks_in_flight() {
    let app = app().await;
    let _w = start(&app, |b| b.concurrency(3).prefetch(20));
    let k = key();
    let sigs = (0..12).map(|_| gauge::new(k.clone(), 50)).collect();
    let results = app.send_many(sigs).await.unwrap();
    for r in results {
        r.get::<()>(WAIT).await.unwrap();
    }
    assert_eq!(count(&format!("{k}:max")), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_tasks_run_in_parallel_on_threads_without_blocking_async_ones() {
    let app = app().await;
    let _w = start(&app, |b| b.concurrency(5));
    let k = key();
    let mut blocking = Vec::new();
    for _ in 0..4 {
        blocking.push(
            gauge_blocking::new(k.clone(), 300)
                .apply_async(&app)
                .await
                .unwrap(),
        );
    }
    until("4 blocking tasks running", || async { count(&k) == 4 }).await;
    // An async task completes while every blocking one still sleeps.
    let quick = add::new(1, 1).apply_async(&app).await.unwrap();
    assert_eq!(quick.get::<i64>(WAIT).await.unwrap(), 2);
    assert!(
        count(&k) > 0,
        "blocking tasks finished before the async one"
    );
    let mut threads = std::collections::HashSet::new();
    for r in blocking {
        threads.insert(r.get::<String>(WAIT).await.unwrap());
    }
    assert_eq!(count(&format!("{k}:max")), 4);
    assert_eq!(threads.len(), 4, "blocking tasks shared threads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_pool_runs_async_tasks_too() {
    let app = app().await;
    let _w = start(&app, |b| b.pool(celeriac::Pool::Threads).concurrency(2));
    let r = add::new(20, 22).apply_async(&app).await.unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_what_the_worker_takes() {
    let app = app().await;
    let k = key();
    let sigs: Vec<Signature> = (0..10).map(|_| hold_late::new(k.clone(), 400)).collect();
    app.send_many(sigs).await.unwrap();
    let w = start(&app, |b| b.concurrency(1).prefetch(2));
    until("first task started", || async {
        count(&format!("{k}:started")) == 1
    })
    .await;
    // Late ack: the running task and one waiting hold the 2 prefetch places.
    until("8 left in the queue", || async {
        app.broker().queue_depth("celery").await.unwrap() == 8
    })
    .await;
    w.cold().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_are_served_lowest_number_first() {
    let app = app().await;
    let k = key();
    for (n, p) in [(1, 9), (2, 5), (3, 0), (4, 9), (5, 0)] {
        log_task::new(k.clone(), n)
            .priority(p)
            .apply_async(&app)
            .await
            .unwrap();
    }
    let w = start(&app, |b| b.concurrency(1).prefetch(1));
    until("all logged", || async { entries(&k).len() == 5 }).await;
    assert_eq!(
        entries(&k),
        [json!(3), json!(5), json!(2), json!(1), json!(4)]
    );
    w.warm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_tasks_to_the_worker_on_that_queue() {
    let app = builder()
        .route("tasks.context", "images")
        .build()
        .await
        .unwrap();
    let general = start(&app, |b| b.queues(["celery"]).name("general@%h"));
    let images = start(&app, |b| b.queues(["images", "q2"]).name("images@test"));
    let ctx: Value = run(&app, context::new()).await;
    assert_eq!(
        (ctx["hostname"].as_str(), ctx["routing_key"].as_str()),
        (Some("images@test"), Some("images"))
    );
    let ctx: Value = run(&app, context::new().queue("q2")).await;
    assert_eq!(
        (ctx["hostname"].as_str(), ctx["routing_key"].as_str()),
        (Some("images@test"), Some("q2"))
    );
    assert_eq!(run::<i64>(&app, add::new(1, 1)).await, 2);
    assert_eq!(general.warm().await.stats.succeeded, 1);
    assert_eq!(images.warm().await.stats.succeeded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_knows_its_request_and_children_carry_its_ids() {
    let app = app().await;
    let _w = start(&app, |b| b.name("ctx@test"));
    let r = context::new()
        .priority(4)
        .header("x-trace", "abc")
        .apply_async(&app)
        .await
        .unwrap();
    let ctx: Value = r.get(WAIT).await.unwrap();
    assert_eq!(ctx["id"], json!(r.id()));
    assert_eq!(ctx["root_id"], json!(r.id()));
    assert_eq!(ctx["parent_id"], Value::Null);
    assert_eq!(ctx["name"], json!("tasks.context"));
    assert_eq!(ctx["priority"], json!(4));
    assert_eq!(ctx["headers"]["x-trace"], json!("abc"));
    assert_eq!(ctx["eager"], json!(false));
    let parent = spawn_child::new().apply_async(&app).await.unwrap();
    let child_id: String = parent.get(WAIT).await.unwrap();
    let child = app.async_result(child_id);
    let child_ctx: Value = child.get(WAIT).await.unwrap();
    assert_eq!(child_ctx["parent_id"], json!(parent.id()));
    assert_eq!(child_ctx["root_id"], json!(parent.id()));
    let meta = child.info().await.unwrap();
    assert_eq!(meta.parent_id.as_deref(), Some(parent.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_started_stores_started_with_pid_and_hostname() {
    let app = builder().track_started(true).build().await.unwrap();
    let _w = start(&app, |b| b.name("tracker@test"));
    let k = key();
    let r = hold::new(k.clone(), 300).apply_async(&app).await.unwrap();
    until("STARTED stored", || async {
        r.state().await.unwrap() == State::Started
    })
    .await;
    let meta = r.info().await.unwrap();
    assert_eq!(meta.result["hostname"], json!("tracker@test"));
    assert_eq!(meta.result["pid"], json!(std::process::id()));
    assert_eq!(meta.date_done, None);
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_result_stores_nothing() {
    let app = app().await;
    let w = start(&app, |b| b);
    let k = key();
    let r = count_task::new(k.clone())
        .ignore_result(true)
        .apply_async(&app)
        .await
        .unwrap();
    until("task ran", || async { w.stats.snapshot().succeeded == 1 }).await;
    assert_eq!(count(&k), 1);
    assert!(app.backend().unwrap().get(r.id()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_with_requeue_runs_the_task_again() {
    let app = app().await;
    let w = start(&app, |b| b);
    let k = key();
    let r = reject::new(k.clone()).apply_async(&app).await.unwrap();
    r.get::<()>(WAIT).await.unwrap();
    assert_eq!(count(&k), 2);
    assert_eq!(w.warm().await.stats.rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_round_trip_unicode_nested_and_large_values() {
    let app = app().await;
    let _w = start(&app, |b| b);
    let big: Vec<i64> = (0..10_000).collect();
    for v in [
        json!("héllo ☃ 😀"),
        json!({"a": [1, {"b": null}], "c": 1.5}),
        json!(big),
    ] {
        let got: Value = run(&app, echo::new(v.clone())).await;
        assert_eq!(got, v);
    }
}

#[tokio::test]
async fn default_task_name_is_the_module_path_with_dots() {
    assert_eq!(noname::name(), "system.support.noname");
    assert_eq!(add::name(), "tasks.add");
}

/// An ETA centuries away (beyond what timers can arm) is held, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_eta_is_held_without_crashing_the_worker() {
    let app = app().await;
    let w = start(&app, |b| b);
    let far = celeriac::core::time::parse_iso("9999-12-31T23:59:59Z").unwrap();
    for sig in [add::new(1, 1).eta(far), add::new(2, 2).countdown(1e300)] {
        let msg =
            TaskMessage::from_signature(&sig, &Route::queue("celery"), &SendContext::default())
                .unwrap();
        app.broker()
            .publish(msg.encode(), PublishOptions::default())
            .await
            .unwrap();
        // And through the native-delay path.
        sig.apply_async(&app).await.unwrap();
    }
    assert_eq!(run::<i64>(&app, add::new(3, 3)).await, 6);
    let report = w.warm().await;
    assert_eq!(
        report.returned, 2,
        "the two held messages go back on shutdown"
    );
    assert_eq!(report.stats.succeeded, 1);
}
