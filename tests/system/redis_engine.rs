//! The worker on a real Redis: the task set end to end, what lands in Redis (kombu's
//! envelope, buckets, bindings, unacked, result records), shutdown, and the reliability
//! cases — a worker killed mid-task, a Redis restart, garbage on the queue.

use std::time::{Duration, Instant};

use base64::Engine;
use celeriac::{Error, Signature, State};
use celeriac_testing::services::{RedisScope, RedisServer};
use serde_json::{json, Value};

use crate::proc::WorkerProcess;
use crate::support::*;

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn redis_get(scope: &RedisScope, key: &str) -> Option<String> {
    let mut c = conn(&format!("{}/0", scope.base)).await;
    redis::cmd("GET")
        .arg(format!("{}{key}", scope.prefix))
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn hlen_unacked(scope: &RedisScope) -> u64 {
    let mut c = conn(&format!("{}/0", scope.base)).await;
    redis::cmd("HLEN")
        .arg(format!("{}unacked", scope.prefix))
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn lrange(scope: &RedisScope, list: &str) -> Vec<String> {
    let mut c = conn(&format!("{}/0", scope.base)).await;
    redis::cmd("LRANGE")
        .arg(format!("{}{list}", scope.prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_the_task_set_over_redis() {
    let Some(scope) = RedisScope::new("worker_runs_the_task_set_over_redis") else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let w = start(&app, |b| b);
    assert_eq!(run::<i64>(&app, add::new(2, 3)).await, 5);
    let r = fail::new("boom".into()).apply_async(&app).await.unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        ("ValueError", "boom".into())
    );
    let exc = exception_of(
        &panic_async::new("bang".into())
            .apply_async(&app)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(exc.exc_type, "RustPanic");
    let k = key();
    let v: Value = run(&app, flaky::new(k, 2)).await;
    assert_eq!(v["attempt"], json!(3));
    let t0 = Instant::now();
    assert_eq!(run::<i64>(&app, add::new(1, 1).countdown(0.5)).await, 2);
    assert!(t0.elapsed() >= Duration::from_millis(500));
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let r = add::new(1, 1)
        .expires_at(past)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r.wait(WAIT).await.unwrap().status, State::Revoked);
    let r = app
        .send_task("tasks.nope", json!([]), json!({}))
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "NotRegistered");
    // The stored record, as Python's client reads it.
    let r = add::new(20, 22).apply_async(&app).await.unwrap();
    r.wait(WAIT).await.unwrap();
    let raw = redis_get(&scope, &format!("celery-task-meta-{}", r.id()))
        .await
        .unwrap();
    let rec: serde_json::Map<String, Value> = serde_json::from_str(&raw).unwrap();
    let keys: Vec<&str> = rec.keys().map(String::as_str).collect();
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
    assert_eq!(
        (rec["status"].clone(), rec["result"].clone()),
        (json!("SUCCESS"), json!(42))
    );
    // ignore_result: no record at all.
    let k = key();
    let r = count_task::new(k.clone())
        .ignore_result(true)
        .apply_async(&app)
        .await
        .unwrap();
    until("ignored task ran", || async { count(&k) == 1 }).await;
    assert_eq!(
        redis_get(&scope, &format!("celery-task-meta-{}", r.id())).await,
        None
    );
    let report = w.warm().await;
    assert_eq!(report.stats.failed, 3);
    assert_eq!(
        hlen_unacked(&scope).await,
        0,
        "every delivery was acknowledged"
    );
}

/// What every task message on a Redis queue list must be to kombu (Celery 5.7): the
/// envelope's keys, JSON in UTF-8 with a base64 body, `delivery_info` for `queue`, the
/// priority, a uuid delivery tag, the correlation id equal to the task id, and Python's
/// property set (`expiration` only with `expires`; see the capture in
/// tests/python/reference/celery-5.7-beat.md). Returns the headers, the properties and the
/// decoded body.
fn check_kombu_envelope(
    raw: &str,
    queue: &str,
    priority: u8,
) -> (serde_json::Map<String, Value>, Value, Value) {
    let env: serde_json::Map<String, Value> = serde_json::from_str(raw).unwrap();
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "body",
            "content-encoding",
            "content-type",
            "headers",
            "properties"
        ]
    );
    assert_eq!(env["content-type"], json!("application/json"));
    assert_eq!(env["content-encoding"], json!("utf-8"));
    let p = &env["properties"];
    let mut props: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    props.retain(|k| *k != "expiration");
    props.sort_unstable();
    assert_eq!(
        props,
        [
            "body_encoding",
            "correlation_id",
            "delivery_info",
            "delivery_mode",
            "delivery_tag",
            "priority",
            "reply_to"
        ],
        "{p}"
    );
    assert_eq!(p["body_encoding"], json!("base64"));
    assert_eq!(p["delivery_mode"], json!(2));
    assert_eq!(
        p["delivery_info"],
        json!({"exchange": "", "routing_key": queue})
    );
    assert_eq!(p["priority"], json!(priority));
    assert!(uuid::Uuid::parse_str(p["delivery_tag"].as_str().unwrap()).is_ok());
    let h = env["headers"].as_object().unwrap().clone();
    assert_eq!(p["correlation_id"], h["id"]);
    let body = base64::engine::general_purpose::STANDARD
        .decode(env["body"].as_str().unwrap())
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    (h, p.clone(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_redis_are_kombu_envelopes() {
    let Some(scope) = RedisScope::new("messages_in_redis_are_kombu_envelopes") else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let r = add::new(2, 3)
        .queue("q2")
        .priority(5)
        .apply_async(&app)
        .await
        .unwrap();
    let items = lrange(&scope, "q2\x06\x163").await;
    assert_eq!(items.len(), 1, "priority 5 goes to bucket 3");
    let (h, props, body) = check_kombu_envelope(&items[0], "q2", 5);
    assert_eq!(props["correlation_id"], json!(r.id()));
    assert!(
        props.get("expiration").is_none(),
        "no expires, no expiration"
    );
    assert_eq!(
        body,
        json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
    );
    assert_eq!(h.len(), 19);
    assert_eq!(
        (h["id"].clone(), h["task"].clone(), h["root_id"].clone()),
        (json!(r.id()), json!("tasks.add"), json!(r.id()))
    );
    let mut c = conn(&format!("{}/0", scope.base)).await;
    let bound: bool = redis::cmd("SISMEMBER")
        .arg(format!("{}_kombu.binding.q2", scope.prefix))
        .arg("q2\x06\x16\x06\x16q2")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        bound,
        "the queue's binding is declared for Python producers"
    );
}

/// Beat's messages are the client's kombu envelopes with Python beat's header set
/// (`celery_beat_task` added to Celery's protocol-2 headers) plus celeriac's `beat_entry`
/// and `beat_due`, and `expires` one period after the send, like Python's `expires`
/// option (header and `expiration` property).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_messages_are_kombu_envelopes_like_the_clients() {
    let Some(scope) = RedisScope::new("beat_messages_are_kombu_envelopes_like_the_clients") else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let beat = app
        .beat()
        .entry(
            "add-fast",
            Signature::new("tasks.add")
                .args(vec![json!(2), json!(3)])
                .queue("beatq"),
            celeriac::beat::every(0.2),
        )
        .build()
        .unwrap();
    beat.run(tokio::time::sleep(Duration::from_millis(1100)))
        .await
        .unwrap();
    let items = lrange(&scope, "beatq").await;
    assert!(items.len() >= 3, "{} beat messages in 1.1 s", items.len());
    // The header keys of a message Python Celery 5.7's `celery beat` sent (live capture,
    // tests/python/reference/celery-5.7-beat.md: the protocol-2 `as_task_v2` headers, then
    // `celery_beat_task`), plus celeriac's own `beat_entry` and `beat_due`.
    let python_beat = [
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
        "celery_beat_task",
    ];
    let want: std::collections::BTreeSet<&str> = python_beat
        .into_iter()
        .chain([celeriac::beat::ENTRY_HEADER, celeriac::beat::DUE_HEADER])
        .collect();
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("{v}")))
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    let mut dues = Vec::new();
    for raw in &items {
        let (h, props, body) = check_kombu_envelope(raw, "beatq", 0);
        let keys: std::collections::BTreeSet<&str> = h.keys().map(String::as_str).collect();
        assert_eq!(keys, want, "{h:?}");
        assert_eq!(
            body,
            json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
        );
        assert_eq!(h[celeriac::beat::BEAT_TASK_HEADER], json!(true));
        assert_eq!(h[celeriac::beat::ENTRY_HEADER], json!("add-fast"));
        assert_eq!(
            (&h["task"], &h["lang"], &h["root_id"], &h["parent_id"]),
            (&json!("tasks.add"), &json!("py"), &h["id"], &Value::Null)
        );
        assert_eq!(
            (&h["eta"], &h["retries"], &h["timelimit"], &h["kwargsrepr"]),
            (&Value::Null, &json!(0), &json!([null, null]), &json!("{}"))
        );
        // Display only (Flower, logs): Python beat shows its entry's args as a list,
        // "[2, 3]"; celeriac, beat or client, as `task.delay(2, 3)` does, "(2, 3)".
        assert!(
            [json!("[2, 3]"), json!("(2, 3)")].contains(&h["argsrepr"]),
            "{}",
            h["argsrepr"]
        );
        let due = at(&h[celeriac::beat::DUE_HEADER]);
        // Python: `send time + expires` as an aware ISO time; celeriac: one period (0.2 s)
        // after the send (which is at or just after the due time).
        let expires = &h["expires"];
        let valid = (at(expires) - due).num_milliseconds();
        assert!(
            (200..400).contains(&valid),
            "expires {expires} is {valid} ms after due"
        );
        // Python: `expiration` = str(int(expires_s * 1000)), the ms left at the send.
        let expiration: i64 = props["expiration"]
            .as_str()
            .unwrap_or_else(|| panic!("expiration property: {props}"))
            .parse()
            .unwrap();
        assert!((1..=200).contains(&expiration), "expiration {expiration}");
        dues.push(due);
    }
    // kombu LPUSHes and consumes from the right: LRANGE lists the newest first.
    dues.reverse();
    for pair in dues.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::milliseconds(200),
            "due times in order, one period apart: {dues:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_follow_kombus_buckets() {
    let Some(scope) = RedisScope::new("priorities_follow_kombus_buckets") else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let k = key();
    for p in [9u8, 5, 0, 3, 7] {
        log_task::new(k.clone(), i64::from(p))
            .priority(p)
            .apply_async(&app)
            .await
            .unwrap();
    }
    let w = start(&app, |b| b.concurrency(1).prefetch(1));
    until("all logged", || async { entries(&k).len() == 5 }).await;
    // Buckets 0, 3 (5 then 3, FIFO), 6, 9.
    assert_eq!(
        entries(&k),
        [json!(0), json!(5), json!(3), json!(7), json!(9)]
    );
    w.warm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_restores_unstarted_messages_to_redis() {
    let Some(scope) = RedisScope::new("warm_shutdown_restores_unstarted_messages_to_redis") else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let k = key();
    let sigs: Vec<Signature> = (0..5).map(|_| hold::new(k.clone(), 400)).collect();
    let results = app.send_many(sigs).await.unwrap();
    let w = start(&app, |b| b.concurrency(1).prefetch(10));
    until("first started", || async {
        count(&format!("{k}:started")) == 1
    })
    .await;
    let report = w.warm().await;
    assert_eq!(report.returned, 4);
    until("restores landed", || async {
        lrange(&scope, "celery").await.len() == 4
    })
    .await;
    assert_eq!(hlen_unacked(&scope).await, 0);
    for raw in lrange(&scope, "celery").await {
        let env: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(env["headers"]["redelivered"], json!(true));
        assert_eq!(
            env["properties"]["delivery_info"]["redelivered"],
            json!(true)
        );
    }
    let w2 = start(&app, |b| b);
    for r in &results {
        r.get::<i64>(WAIT).await.unwrap();
    }
    assert_eq!(count(&format!("{k}:done")), 5, "each ran exactly once");
    w2.warm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_shutdown_requeues_a_running_late_ack_task_in_redis() {
    let Some(scope) = RedisScope::new("cold_shutdown_requeues_a_running_late_ack_task_in_redis")
    else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let k = key();
    let r = hold_late::new(k.clone(), 60_000)
        .apply_async(&app)
        .await
        .unwrap();
    let w = start(&app, |b| b);
    until("started", || async { count(&format!("{k}:started")) == 1 }).await;
    assert_eq!(w.cold().await.abandoned, 1);
    until("requeued", || async {
        app.broker().queue_depth("celery").await.unwrap() == 1
    })
    .await;
    let _w2 = start(&app, |b| b);
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 2);
}

/// Celery runs an ETA task twice when a sweep restores it while its holder still waits
/// (kombu #337). celeriac keeps the held message's score fresh, so it runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_eta_task_is_not_restored_by_another_workers_sweep() {
    let Some(scope) = RedisScope::new("held_eta_task_is_not_restored_by_another_workers_sweep")
    else {
        return;
    };
    let url = scope.url("visibility_timeout=1&unacked_restore_interval=0.2");
    let app_a = builder_on(&url).build().await.unwrap();
    let app_b = builder_on(&url).build().await.unwrap();
    let k = key();
    let r = count_task::new(k.clone())
        .countdown(2.5)
        .apply_async(&app_a)
        .await
        .unwrap();
    let a = start(&app_a, |b| b.name("a@test"));
    let b = start(&app_b, |b| b.name("b@test"));
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 1);
    // A copy a sweep restored went to the other worker, which holds it for the same ETA (now
    // past): once both workers have stopped (warm: what they run finishes, what they hold
    // goes back) with nothing queued or unacknowledged, a second run would be counted.
    a.warm().await;
    b.warm().await;
    assert_eq!(app_a.broker().queue_depth("celery").await.unwrap(), 0);
    assert_eq!(hlen_unacked(&scope).await, 0);
    assert_eq!(count(&k), 1, "the ETA task ran twice");
}

/// SIGKILL a worker in the middle of an `acks_late` task: after the visibility timeout
/// another worker restores and runs it; the tasks the dead worker finished are not run
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_ack_task_survives_worker_kill() {
    let Some(scope) = RedisScope::new("late_ack_task_survives_worker_kill") else {
        return;
    };
    let url = scope.url("visibility_timeout=2&unacked_restore_interval=0.5");
    let app = builder_on(&url).build().await.unwrap();
    let base = format!("{}/0", scope.base);
    let env = [
        ("CELERIAC_INTEROP_BROKER", base.as_str()),
        ("CELERIAC_INTEROP_KEYPREFIX", scope.prefix.as_str()),
    ];
    let mut doomed = WorkerProcess::spawn(&url, &["-c", "2", "-n", "doomed@test"], &env);
    let k = key();
    let records: Vec<Signature> = (0..20)
        .map(|i| Signature::new("tasks.record").args(vec![json!(k), json!(i)]))
        .collect();
    for r in app.send_many(records).await.unwrap() {
        r.get::<i64>(WAIT).await.unwrap();
    }
    let slow = slow_late::new(30.0).apply_async(&app).await.unwrap();
    doomed.wait_for_log(
        &format!("slow_late[{}] received", slow.id()),
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.kill();
    assert_eq!(
        hlen_unacked(&scope).await,
        1,
        "the killed worker's task is still unacked"
    );
    let t0 = Instant::now();
    let _rescuer = start(&app, |b| b.name("rescuer@test"));
    assert_eq!(
        slow.get::<f64>(Duration::from_secs(20)).await.unwrap(),
        30.0
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "restored before its visibility timeout"
    );
    let mut recorded: Vec<i64> = lrange(&scope, &format!("celeriac-interop:record:{k}"))
        .await
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    recorded.sort_unstable();
    assert_eq!(
        recorded,
        (0..20).collect::<Vec<_>>(),
        "a finished task was lost or run twice"
    );
    until("unacked drained", || async {
        hlen_unacked(&scope).await == 0
    })
    .await;
}

/// Restart redis-server (persistent) in the middle of a run: worker and client reconnect,
/// and every task sent before and after completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_loses_nothing() {
    let Some(server) = RedisServer::start("redis_restart_mid_run_loses_nothing", true) else {
        return;
    };
    let url = format!("{}/0", server.url());
    let app = builder_on(&url).build().await.unwrap();
    let w = start(&app, |b| b.concurrency(4));
    let first: Vec<Signature> = (0..100).map(|i| add::new(i, 1000)).collect();
    let mut results = app.send_many(first).await.unwrap();
    let server = std::sync::Arc::new(std::sync::Mutex::new(server));
    let restarter = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(100));
            server.lock().unwrap().restart();
        })
    };
    for i in 100..200 {
        results.push(
            add::new(i, 1000)
                .apply_async(&app)
                .await
                .expect("publish retries across the restart"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    restarter.await.unwrap();
    for (i, r) in results.iter().enumerate() {
        let v = r
            .get::<i64>(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(v, i as i64 + 1000);
    }
    assert_eq!(
        run::<i64>(&app, add::new(1, 2)).await,
        3,
        "the worker still consumes"
    );
    w.warm().await;
}

/// Garbage pushed onto a queue (not JSON, not an envelope, undecodable body, refused
/// content types, no delivery tag) is rejected with a logged reason; the worker keeps
/// running and later good tasks still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_queue_is_rejected_and_the_worker_keeps_going() {
    let Some(scope) =
        RedisScope::new("garbage_on_the_queue_is_rejected_and_the_worker_keeps_going")
    else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let envelope = |id: &str, ct: &str, body: String, tag: Option<&str>| {
        let mut props = json!({"correlation_id": id, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64"});
        if let Some(t) = tag {
            props["delivery_tag"] = json!(t);
        }
        json!({"body": body, "content-encoding": "utf-8", "content-type": ct,
               "headers": {"lang": "py", "task": "tasks.add", "id": id}, "properties": props})
        .to_string()
    };
    let good_body = b64(
        "[[4, 5], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]",
    );
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let garbage = vec![
        "this is not json".to_string(),
        "[1, 2, 3]".to_string(),
        envelope(
            &ids[0],
            "application/x-python-serialize",
            b64("cos\nsystem\n."),
            Some("t-pickle"),
        ),
        envelope(&ids[1], "application/x-yaml", b64("- 1"), Some("t-yaml")),
        envelope(
            &ids[2],
            "application/json",
            "%%% not base64 %%%".into(),
            Some("t-b64"),
        ),
        envelope(&ids[3], "application/json", good_body, None),
    ];
    let mut c = conn(&format!("{}/0", scope.base)).await;
    for g in &garbage {
        let _: () = redis::cmd("LPUSH")
            .arg(format!("{}celery", scope.prefix))
            .arg(g)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let w = start(&app, |b| b);
    assert_eq!(run::<i64>(&app, add::new(2, 3)).await, 5);
    assert_eq!(
        exception_of(&app.async_result(&ids[0])).await.exc_type,
        "ContentDisallowed"
    );
    assert_eq!(
        exception_of(&app.async_result(&ids[1])).await.exc_type,
        "ContentDisallowed"
    );
    // A valid task without a delivery tag is adopted and runs.
    assert_eq!(app.async_result(&ids[3]).get::<i64>(WAIT).await.unwrap(), 9);
    until("queue empty and nothing left unacked", || async {
        app.broker().queue_depth("celery").await.unwrap() == 0 && hlen_unacked(&scope).await == 0
    })
    .await;
    let err = app
        .async_result(&ids[2])
        .get::<Value>(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. }),
        "an undecodable envelope has no result: {err}"
    );
    w.warm().await;
}

/// `rediss://` (with and without certificate verification against a given CA) and
/// `unix://` reach the same engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_unix_socket_urls_work() {
    use celeriac_testing::services::ServerOptions;
    let opts = ServerOptions {
        tls: true,
        unix_socket: true,
        ..ServerOptions::default()
    };
    let Some(server) = RedisServer::start_with("tls_and_unix_socket_urls_work", opts) else {
        return;
    };
    let tls = server.tls_url().unwrap();
    let cert = server.tls_cert();
    let socket = server.socket().unwrap();
    for url in [
        format!("{tls}/0?ssl_cert_reqs=none"),
        format!("{tls}/0?ssl_ca_certs={}", cert.display()),
        format!("unix://{}?db=1", socket.display()),
        format!("redis+socket://{}?virtual_host=2", socket.display()),
    ] {
        let app = builder_on(&url)
            .build()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let w = start(&app, |b| b);
        assert_eq!(run::<i64>(&app, add::new(2, 3)).await, 5, "over {url}");
        w.warm().await;
    }
    // Verification on, against the system's CAs: the self-signed server is refused, in
    // one line naming the URL.
    let err = builder_on(&format!("{tls}/0"))
        .build()
        .await
        .expect_err("an untrusted certificate is refused");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach broker {tls}/0")),
        "{text}"
    );
}

/// The `unacked` record of a fetched message is kombu's `[envelope, exchange, routing_key]`
/// with the delivery's own values — also when user headers reuse those names (the fetch
/// script's fast path must not take a header for a delivery field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_records_hold_the_deliverys_exchange_and_routing_key() {
    let Some(scope) =
        RedisScope::new("unacked_records_hold_the_deliverys_exchange_and_routing_key")
    else {
        return;
    };
    let app = builder_on(&scope.url("")).build().await.unwrap();
    let plain = add::new(1, 2).queue("uq").apply_async(&app).await.unwrap();
    let decoy = add::new(3, 4)
        .queue("uq")
        .header("exchange", "decoy-exchange")
        .header("routing_key", "decoy-key")
        .header("delivery_tag", "decoy-tag")
        .apply_async(&app)
        .await
        .unwrap();
    let mut consumer = app
        .broker()
        .consume(celeriac::core::broker::ConsumeOptions::new(
            vec!["uq".into()],
            10,
        ))
        .await
        .unwrap();
    let mut c = conn(&format!("{}/0", scope.base)).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a delivery")
            .expect("open")
            .unwrap();
        let raw: String = redis::cmd("HGET")
            .arg(format!("{}unacked", scope.prefix))
            .arg(d.tag())
            .query_async(&mut c)
            .await
            .unwrap();
        let rec: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            rec[0]["properties"]["delivery_tag"],
            json!(d.tag()),
            "{raw}"
        );
        assert_eq!((&rec[1], &rec[2]), (&json!(""), &json!("uq")), "{raw}");
        seen.push(d.message().headers["id"].as_str().unwrap().to_string());
        d.ack().await.unwrap();
    }
    seen.sort();
    let mut want = vec![plain.id().to_string(), decoy.id().to_string()];
    want.sort();
    assert_eq!(seen, want);
}

/// `send_many` publishes in chunks; when the broker is gone it hands back every message it
/// did not publish — those of the failed chunk and those never tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_many_hands_back_every_unpublished_message() {
    let Some(server) = RedisServer::start("send_many_hands_back_every_unpublished_message", false)
    else {
        return;
    };
    let url = format!("{}/0", server.url());
    let app = builder_on(&url).publish_retry(None).build().await.unwrap();
    let sent = app
        .send_many((0..10).map(|i| add::new(i, i)).collect())
        .await
        .unwrap();
    assert_eq!(sent.len(), 10);
    drop(server);
    let err = app
        .send_many((0..5_000).map(|i| add::new(i, i)).collect())
        .await
        .unwrap_err();
    let Error::PublishMany(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.unpublished.len(), 5_000, "{}", e.source);
}
