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

/// `rate_limit` really limits a task on the worker: with "4/s", five tasks sent at once
/// start at least 0.25 s apart (kombu's token bucket: the first at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_out_a_tasks_starts() {
    let app = app().await;
    let w = start(&app, |b| b);
    listening(&app, 1).await;
    let set = json!({"task_name": "tasks.stamp", "rate_limit": "4/s"});
    assert_eq!(
        ask(&app, "rate_limit", set).await,
        json!({"ok": "new rate limit set successfully"})
    );
    let registered = ask(&app, "registered", json!({})).await;
    assert!(
        registered
            .as_array()
            .unwrap()
            .contains(&json!("tasks.stamp [rate_limit=4/s]")),
        "{registered}"
    );
    let k = key();
    let sent = app
        .send_many((0..5).map(|_| stamp::new(k.clone())).collect())
        .await
        .unwrap();
    for r in &sent {
        r.get::<()>(WAIT).await.unwrap();
    }
    let mut times: Vec<f64> = entries(&k).iter().filter_map(|v| v.as_f64()).collect();
    times.sort_by(f64::total_cmp);
    assert_eq!(times.len(), 5);
    let spread = times[4] - times[0];
    assert!(
        spread >= 0.9,
        "5 starts at 4/s took only {spread:.3}s: {times:?}"
    );
    // Lifted, invalid and unknown.
    let off = json!({"task_name": "tasks.stamp", "rate_limit": "0"});
    assert_eq!(
        ask(&app, "rate_limit", off).await,
        json!({"ok": "rate limit disabled successfully"})
    );
    let bad = json!({"task_name": "tasks.stamp", "rate_limit": "abc"});
    assert_eq!(
        ask(&app, "rate_limit", bad).await,
        json!({"error": "Invalid rate limit string: \"abc\""})
    );
    let unknown = json!({"task_name": "tasks.nope", "rate_limit": "1/s"});
    assert_eq!(
        ask(&app, "rate_limit", unknown).await,
        json!({"error": "unknown task"})
    );
    w.warm().await;
}

/// `add_consumer` makes the worker consume a new queue at once; `cancel_consumer` stops
/// it — a task sent there afterwards waits, proven by a marker on the first queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_added_and_cancelled_while_the_worker_runs() {
    let app = app().await;
    let w = start(&app, |b| b);
    listening(&app, 1).await;
    assert_eq!(
        ask(&app, "add_consumer", json!({"queue": "extra"})).await,
        json!({"ok": "add consumer extra"})
    );
    let names = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(ask(&app, "active_queues", json!({})).await),
        ["celery", "extra"]
    );
    let k = key();
    let r = count_task::new(k.clone())
        .queue("extra")
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 1);
    assert_eq!(
        ask(&app, "cancel_consumer", json!({"queue": "extra"})).await,
        json!({"ok": "no longer consuming from extra"})
    );
    assert_eq!(
        names(ask(&app, "active_queues", json!({})).await),
        ["celery"]
    );
    let waits = key();
    count_task::new(waits.clone())
        .queue("extra")
        .apply_async(&app)
        .await
        .unwrap();
    let marker = count_task::new(key()).apply_async(&app).await.unwrap();
    assert_eq!(marker.get::<i64>(WAIT).await.unwrap(), 1, "marker");
    assert_eq!(count(&waits), 0, "a task ran from a cancelled queue");
    assert_eq!(app.broker().queue_depth("extra").await.unwrap(), 1);
    w.warm().await;
}

/// `pool_grow` and `pool_shrink` change how many tasks run at once, as `stats` shows;
/// `autoscale` is refused on a worker started without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_and_shrinks_on_command() {
    let app = app().await;
    let w = start(&app, |b| b);
    listening(&app, 1).await;
    let size = |v: serde_json::Value| v["pool"]["max-concurrency"].as_u64().unwrap();
    assert_eq!(size(ask(&app, "stats", json!({})).await), 4);
    assert_eq!(
        ask(&app, "pool_grow", json!({"n": 2})).await,
        json!({"ok": "pool will grow"})
    );
    assert_eq!(size(ask(&app, "stats", json!({})).await), 6);
    assert_eq!(
        ask(&app, "pool_shrink", json!({"n": 3})).await,
        json!({"ok": "pool will shrink"})
    );
    assert_eq!(size(ask(&app, "stats", json!({})).await), 3);
    // Three slots: three holds run together, a fourth waits for one of them.
    let k = key();
    let sent = app
        .send_many((0..4).map(|_| hold::new(k.clone(), 400)).collect())
        .await
        .unwrap();
    until("three tasks running", || async {
        count(&format!("{k}:started")) == 3
    })
    .await;
    let active = ask(&app, "active", json!({})).await;
    assert_eq!(active.as_array().unwrap().len(), 3, "{active}");
    for r in &sent {
        r.get::<i64>(WAIT).await.unwrap();
    }
    assert_eq!(
        ask(&app, "autoscale", json!({"max": 4, "min": 1})).await,
        json!({"error": "ValueError('Autoscale not enabled')"})
    );
    // Off the wire, an absurd size is refused, and the worker goes on.
    let huge = ask(
        &app,
        "pool_grow",
        json!({"n": 4_611_686_018_427_387_904u64}),
    )
    .await;
    assert!(
        huge["error"].as_str().unwrap().contains("at most 10000"),
        "{huge}"
    );
    assert_eq!(size(ask(&app, "stats", json!({})).await), 3);
    w.warm().await;
}

/// `active`, `reserved`, `scheduled` and `query_task` show where each task is, with
/// Celery's request-info fields. On Redis, where the worker (not the broker) holds ETA
/// tasks, as with Celery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_active_reserved_and_scheduled_tasks() {
    let Some(scope) = celeriac_testing::services::RedisScope::new(
        "inspect_shows_active_reserved_and_scheduled_tasks",
    ) else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let w = start(&app, |b| b.concurrency(1));
    listening(&app, 1).await;
    let k = key();
    let running = hold::new(k.clone(), 4000).apply_async(&app).await.unwrap();
    until("the hold running", || async {
        count(&format!("{k}:started")) == 1
    })
    .await;
    let waiting = count_task::new(key()).apply_async(&app).await.unwrap();
    let later = count_task::new(key())
        .countdown(60.0)
        .apply_async(&app)
        .await
        .unwrap();
    until("both held", || async {
        let r = ask(&app, "reserved", json!({})).await;
        let s = ask(&app, "scheduled", json!({})).await;
        r.as_array().unwrap().len() == 1 && s.as_array().unwrap().len() == 1
    })
    .await;
    let active = ask(&app, "active", json!({})).await;
    let info = &active[0];
    assert_eq!(info["id"], json!(running.id()));
    assert_eq!(info["name"], json!("tasks.hold"));
    assert_eq!(info["type"], json!("tasks.hold"));
    assert_eq!(info["args"][1], json!(4000));
    assert_eq!(info["acknowledged"], json!(true));
    assert!(info["time_start"].as_f64().unwrap() > 1.7e9, "{info}");
    assert_eq!(info["delivery_info"]["routing_key"], json!("celery"));
    let scheduled = ask(&app, "scheduled", json!({})).await;
    assert_eq!(scheduled[0]["request"]["id"], json!(later.id()));
    assert!(scheduled[0]["eta"].as_str().unwrap().ends_with("+00:00"));
    let ids = json!({"ids": [running.id(), waiting.id(), later.id(), "no-such-id"]});
    let q = ask(&app, "query_task", ids).await;
    assert_eq!(q[running.id()][0], json!("active"));
    assert_eq!(q[waiting.id()][0], json!("reserved"));
    assert_eq!(q[later.id()][0], json!("scheduled"));
    assert!(q.get("no-such-id").is_none(), "{q}");
    later.revoke(false).await.unwrap();
    waiting.get::<i64>(WAIT).await.unwrap();
    w.warm().await;
}

/// `time_limit` replaces a task's limits on the worker from its next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_command_applies_to_the_next_runs() {
    let app = app().await;
    let w = start(&app, |b| b);
    listening(&app, 1).await;
    let set = json!({"task_name": "tasks.sleepy", "soft": null, "hard": 0.3});
    assert_eq!(
        ask(&app, "time_limit", set).await,
        json!({"ok": "time limits set successfully"})
    );
    let r = sleepy::new(key(), 5_000).apply_async(&app).await.unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(exc.exc_type, "TimeLimitExceeded", "{exc:?}");
    let unknown = json!({"task_name": "tasks.nope", "hard": 1.0});
    assert_eq!(
        ask(&app, "time_limit", unknown).await,
        json!({"error": "unknown task"})
    );
    w.warm().await;
}

/// `shutdown` gets no reply (as Celery's) and stops the worker warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_command_stops_the_worker_warm() {
    let app = app().await;
    let w = start(&app, |b| b);
    listening(&app, 1).await;
    let replies = app
        .control()
        .broadcast(
            "shutdown",
            json!({}),
            None,
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(replies.is_empty(), "{replies:?}");
    let report = tokio::time::timeout(Duration::from_secs(10), w.handle)
        .await
        .expect("the worker stopped")
        .unwrap()
        .expect("a warm stop is a clean stop");
    assert_eq!(report.abandoned, 0);
}

/// `hello` (Celery's mingle): another node's revoked ids are merged, and the reply holds
/// them with this worker's clock; `clock` answers the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_merges_revoked_ids_and_answers_with_the_clock() {
    let app = app().await;
    let w = start(&app, |b| b);
    listening(&app, 1).await;
    // A plain revoke never fails on its signal (it only matters to terminate).
    let plain = json!({"task_id": "r-0", "terminate": false, "signal": "SIGBOGUS"});
    assert_eq!(
        ask(&app, "revoke", plain).await,
        json!({"ok": "tasks {'r-0'} flagged as revoked"})
    );
    let bogus = json!({"task_id": "r-0", "terminate": true, "signal": "SIGBOGUS"});
    assert_eq!(
        ask(&app, "revoke", bogus).await,
        json!({"error": "unknown signal \"SIGBOGUS\""})
    );
    let hello = json!({"from_node": "other@elsewhere", "revoked": ["r-1", "r-2"]});
    let reply = ask(&app, "hello", hello).await;
    assert_eq!(reply["revoked"], json!(["r-0", "r-1", "r-2"]));
    assert!(reply["clock"].as_u64().unwrap() > 0, "{reply}");
    assert_eq!(
        ask(&app, "revoked", json!({})).await,
        json!(["r-0", "r-1", "r-2"])
    );
    let clock = ask(&app, "clock", json!({})).await;
    assert!(clock["clock"].as_u64().unwrap() > 0);
    // The node's own hello gets `null` (mingle ignores it).
    let own = json!({"from_node": w_name(&app).await, "revoked": []});
    assert_eq!(ask(&app, "hello", own).await, serde_json::Value::Null);
    w.warm().await;
}

/// The name the only worker of `app` answers under.
async fn w_name(app: &celeriac::App) -> String {
    let replies = app
        .control()
        .ping(Duration::from_millis(300))
        .await
        .unwrap();
    replies.into_iter().next().unwrap().0
}

/// A worker with a state file keeps the ids revoked before a restart: a task sent with
/// one of them after the restart is not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_ids_survive_a_restart_with_a_state_file() {
    let dir = celeriac_testing::services::ScratchDir::new("celeriac-statedb");
    let state = dir.path().join("worker.state");
    let app = app().await;
    let w = start(&app, |b| b.statedb(&state));
    listening(&app, 1).await;
    let id = uuid::Uuid::new_v4().to_string();
    app.control().revoke(&[&id], false).await.unwrap();
    until("the revoke arrived", || async {
        ask(&app, "revoked", json!({})).await == json!([id])
    })
    .await;
    w.warm().await;
    let again = start(&app, |b| b.statedb(&state));
    listening(&app, 1).await;
    let k = key();
    let r = count_task::new(k.clone())
        .task_id(id.clone())
        .apply_async(&app)
        .await
        .unwrap();
    let got = r.get::<i64>(WAIT).await;
    assert!(matches!(got, Err(Error::TaskRevoked { .. })), "{got:?}");
    assert_eq!(count(&k), 0);
    again.warm().await;
}

/// Mingle: a worker that starts on a shared broker learns the ids the running workers
/// hold as revoked before it takes a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_worker_learns_revoked_ids_by_mingle() {
    let dir = celeriac_testing::services::ScratchDir::new("celeriac-mingle");
    let url = dir.sqlite_url("q.sqlite", "");
    let app = builder_on(&url).build().await.unwrap();
    let a = start(&app, |b| b.name("a@mingle"));
    listening(&app, 1).await;
    let id = uuid::Uuid::new_v4().to_string();
    app.control().revoke(&[&id], false).await.unwrap();
    until("a holds the revoke", || async {
        ask(&app, "revoked", json!({})).await == json!([id])
    })
    .await;
    let app_b = builder_on(&url).build().await.unwrap();
    let b = start(&app_b, |b| b.name("b@mingle"));
    listening(&app, 2).await;
    let from_b = app
        .control()
        .broadcast(
            "revoked",
            json!({}),
            Some(&["b@mingle".to_string()]),
            Some(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert_eq!(from_b, vec![("b@mingle".to_string(), json!([id]))]);
    a.warm().await;
    b.warm().await;
}

/// `revoke_by_stamped_headers`: a task whose `stamps` header carries a revoked value is
/// not run (REVOKED), one stamped otherwise runs — on SQLite, where messages are decoded
/// as they come from the wire, stamps included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_by_stamped_headers_revokes_the_stamped_tasks() {
    let dir = celeriac_testing::services::ScratchDir::new("celeriac-stamps");
    let app = builder_on(&dir.sqlite_url("q.sqlite", ""))
        .build()
        .await
        .unwrap();
    let w = start(&app, |b| b.mingle(false));
    listening(&app, 1).await;
    let reply = ask(
        &app,
        "revoke_by_stamped_headers",
        json!({"headers": {"monitoring_id": "run-7"}}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"ok": "headers {'monitoring_id': 'run-7'} flagged as revoked"})
    );
    // Stamped as Celery's canvas stamping does: `stamped_headers` names the options
    // that are stamps.
    let stamped = |value: &str, k: &str| {
        count_task::new(k.to_string())
            .set_option("stamped_headers", json!(["monitoring_id"]))
            .set_option("monitoring_id", value)
    };
    let (hit, miss) = (key(), key());
    let revoked = stamped("run-7", &hit).apply_async(&app).await.unwrap();
    let kept = stamped("run-8", &miss).apply_async(&app).await.unwrap();
    assert_eq!(kept.get::<i64>(WAIT).await.unwrap(), 1);
    let got = revoked.get::<i64>(WAIT).await;
    assert!(matches!(got, Err(Error::TaskRevoked { .. })), "{got:?}");
    assert_eq!(count(&hit), 0, "a task with a revoked stamp ran");
    w.warm().await;
}
