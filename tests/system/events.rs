//! Events in one process (memory://): worker heartbeats, task events with Celery's
//! fields, `task.multi` batches read one event at a time, task events switched on and off
//! by remote control, and the client's `task-sent`. Python's side (Celery's
//! `EventReceiver`, Flower) is in `monitoring.rs`.

use std::time::Duration;

use celeriac::events::{ClusterState, Event, EventKind, EventStream};
use serde_json::json;

use crate::support::*;

/// The next event of `kind` (for task events: of task `uuid`), skipping others; panics
/// after 10 s.
async fn next_of(events: &mut EventStream, kind: EventKind, uuid: Option<&str>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.next().await.expect("the event stream ended");
            if e.kind == kind && (uuid.is_none() || e.uuid() == uuid) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} event for {uuid:?} within 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sends_heartbeats_and_task_events_with_celerys_fields() {
    let app = builder().task_events(true).build().await.unwrap();
    let mut events = app.events().await.unwrap();
    let w = start(&app, |b| b.name("ev@test"));
    let online = next_of(&mut events, EventKind::WorkerOnline, None).await;
    assert_eq!(online.hostname, "ev@test");
    for field in [
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
        "utcoffset",
        "pid",
        "clock",
        "timestamp",
    ] {
        assert!(
            online.fields.contains_key(field),
            "worker-online lacks {field}: {online:?}"
        );
    }
    assert_eq!(online.fields["freq"], json!(2.0));
    assert_eq!(online.fields["sw_ident"], json!("celeriac"));

    let ok = add::new(2, 3).apply_async(&app).await.unwrap();
    let received = next_of(&mut events, EventKind::TaskReceived, Some(ok.id())).await;
    assert_eq!(received.str("name"), Some("tasks.add"));
    assert_eq!(received.str("args"), Some("(2, 3)"));
    assert_eq!(received.str("kwargs"), Some("{}"));
    assert_eq!(received.str("root_id"), Some(ok.id()));
    assert_eq!(received.fields["retries"], json!(0));
    assert_eq!(received.fields["eta"], serde_json::Value::Null);
    let started = next_of(&mut events, EventKind::TaskStarted, Some(ok.id())).await;
    let succeeded = next_of(&mut events, EventKind::TaskSucceeded, Some(ok.id())).await;
    assert_eq!(succeeded.str("result"), Some("5"));
    assert!(succeeded.f64("runtime").unwrap() >= 0.0);
    assert!(received.clock < started.clock && started.clock < succeeded.clock);

    let bad = fail::new("boom".into()).apply_async(&app).await.unwrap();
    let failed = next_of(&mut events, EventKind::TaskFailed, Some(bad.id())).await;
    assert_eq!(failed.str("exception"), Some("ValueError('boom')"));
    assert!(failed.str("traceback").unwrap().contains("ValueError"));

    // Revoked before it is sent: it arrives, is not run, and gets `task-revoked`.
    let id = uuid::Uuid::new_v4().to_string();
    app.control().revoke(&[&id], false).await.unwrap();
    until("the worker holds the revoke", || async {
        let r = app
            .control()
            .broadcast("revoked", json!({}), None, Some(Duration::from_millis(200)))
            .await
            .unwrap();
        r.first().is_some_and(|(_, ids)| *ids == json!([id]))
    })
    .await;
    let later = count_task::new(key())
        .task_id(id.clone())
        .apply_async(&app)
        .await
        .unwrap();
    let revoked = next_of(&mut events, EventKind::TaskRevoked, Some(later.id())).await;
    assert_eq!(revoked.fields["terminated"], json!(false));
    assert_eq!(revoked.fields["expired"], json!(false));
    assert_eq!(revoked.fields["signum"], serde_json::Value::Null);

    let heartbeat = next_of(&mut events, EventKind::WorkerHeartbeat, None).await;
    assert_eq!(heartbeat.fields["processed"], json!(2), "{heartbeat:?}");
    w.warm().await;
    let offline = next_of(&mut events, EventKind::WorkerOffline, None).await;
    assert_eq!(offline.hostname, "ev@test");
}

/// A retried task: `task-retried`, then the next try's `task-received` with
/// `retries: 1` and its ETA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_task_retried_and_a_new_received() {
    let app = builder().task_events(true).build().await.unwrap();
    let mut events = app.events().await.unwrap();
    let w = start(&app, |b| b);
    let r = flaky::new(key(), 1).apply_async(&app).await.unwrap();
    let retried = next_of(&mut events, EventKind::TaskRetried, Some(r.id())).await;
    assert!(
        retried.str("exception").unwrap().starts_with("Retry("),
        "{retried:?}"
    );
    let again = next_of(&mut events, EventKind::TaskReceived, Some(r.id())).await;
    assert_eq!(again.fields["retries"], json!(1));
    next_of(&mut events, EventKind::TaskSucceeded, Some(r.id())).await;
    w.warm().await;
}

/// Without task events a worker still sends heartbeats; `enable_events` turns task
/// events on, `disable_events` off — "no task event" proven by the heartbeat the
/// `heartbeat` command makes after the task finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_events_follow_enable_and_disable_events() {
    let app = app().await;
    let mut events = app.events().await.unwrap();
    let w = start(&app, |b| b);
    next_of(&mut events, EventKind::WorkerOnline, None).await;
    let quiet = add::new(1, 1).apply_async(&app).await.unwrap();
    quiet.get::<i64>(WAIT).await.unwrap();
    let none = ask(&app, "heartbeat", json!({})).await;
    assert_eq!(
        none,
        serde_json::Value::Null,
        "heartbeat is answered with null"
    );
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !e.kind.is_task(),
            "a task event with task events off: {e:?}"
        );
        if e.kind == EventKind::WorkerHeartbeat && e.fields["freq"] == json!(5.0) {
            break;
        }
    }
    let on = ask(&app, "enable_events", json!({})).await;
    assert_eq!(on, json!({"ok": "task events enabled"}));
    let loud = add::new(2, 2).apply_async(&app).await.unwrap();
    next_of(&mut events, EventKind::TaskSucceeded, Some(loud.id())).await;
    let again = ask(&app, "enable_events", json!({})).await;
    assert_eq!(again, json!({"ok": "task events already enabled"}));
    let off = ask(&app, "disable_events", json!({})).await;
    assert_eq!(off, json!({"ok": "task events disabled"}));
    w.warm().await;
}

/// A client with `send_sent_event` sends `task-sent` (Celery's `task_send_sent_event`)
/// under its own `gen<pid>@host` name; a `ClusterState` follows the task to SUCCESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_send_task_sent_and_the_cluster_state_follows() {
    let app = builder()
        .task_events(true)
        .send_sent_event(true)
        .build()
        .await
        .unwrap();
    let mut events = app.events().await.unwrap();
    let w = start(&app, |b| b.name("state@test"));
    let r = add::new(4, 5).apply_async(&app).await.unwrap();
    let sent = next_of(&mut events, EventKind::TaskSent, Some(r.id())).await;
    assert_eq!(sent.hostname, app.origin());
    assert_eq!(sent.str("name"), Some("tasks.add"));
    assert_eq!(sent.str("queue"), Some("celery"));
    assert_eq!(sent.str("routing_key"), Some("celery"));
    let mut state = ClusterState::default();
    state.apply(&sent);
    assert_eq!(state.task(r.id()).unwrap().state, "PENDING");
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap();
        state.apply(&e);
        if e.kind == EventKind::TaskSucceeded && e.uuid() == Some(r.id()) {
            break;
        }
    }
    let t = state.task(r.id()).unwrap();
    assert_eq!(
        (t.state.as_str(), t.result.as_deref(), t.worker.as_deref()),
        ("SUCCESS", Some("9"), Some("state@test"))
    );
    assert!(state.workers["state@test"].alive(celeriac_now()));
    w.warm().await;
}

fn celeriac_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
