//! The RabbitMQ engine end to end: the task set with rpc:// results and with Redis
//! results, a killed worker's late-ack task running again, and workers and clients riding
//! through connections closed by the server. Each test uses queues of its own and deletes
//! them at the end; connections are named per test (`connection_name`), so closing them
//! touches no other test.

use std::process::Command;
use std::time::{Duration, Instant};

use celeriac::State;
use celeriac_testing::services::{self, RedisScope};
use serde_json::json;

use crate::proc::WorkerProcess;
use crate::support::*;

/// The test RabbitMQ's URL with `options`, or `None` (skipped loudly).
fn amqp(test: &str, options: &str) -> Option<String> {
    let base = services::require(
        test,
        "RabbitMQ",
        &services::amqp_url(),
        "start rabbitmq-server or set CELERIAC_TEST_AMQP_URL",
    )?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(if options.is_empty() {
        base
    } else {
        format!("{base}{sep}{options}")
    })
}

/// An app with every test task on the broker at `url`, its default queue `queue`.
async fn app_on(url: &str, queue: &str) -> celeriac::App {
    builder_on(url).default_queue(queue).build().await.unwrap()
}

/// An app with every test task on RabbitMQ at `url`, its results in `scope`'s Redis, its
/// default queue `queue`.
async fn app_with_redis_results(url: &str, scope: &RedisScope, queue: &str) -> celeriac::App {
    builder_on(url)
        .result_backend_url(scope.url(""))
        .default_queue(queue)
        .build()
        .await
        .unwrap()
}

/// Deletes the test's queues (and their exchanges) when dropped.
struct Queues(String, Vec<String>);

impl Drop for Queues {
    fn drop(&mut self) {
        let (url, names) = (self.0.clone(), std::mem::take(&mut self.1));
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(url) = celeriac_core::url::EngineUrl::parse(&url) else {
                    return;
                };
                let Ok(b) = celeriac_amqp::AmqpBroker::connect(&url).await else {
                    return;
                };
                for q in names {
                    let _ = b.delete_queue(&q).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_the_task_set_on_rabbitmq_with_rpc_results() {
    let Some(url) = amqp("worker_runs_the_task_set_on_rabbitmq_with_rpc_results", "") else {
        return;
    };
    let queue = services::unique("amqp-set");
    let _cleanup = Queues(url.clone(), vec![queue.clone()]);
    let app = app_on(&url, &queue).await;
    assert_eq!(app.backend_url(), "rpc://");
    let w = start(&app, |b| b);
    assert_eq!(run::<i64>(&app, add::new(2, 3)).await, 5);
    let failed = fail::new("boom".into()).apply_async(&app).await.unwrap();
    let exc = exception_of(&failed).await;
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        ("ValueError", "boom".to_string())
    );
    let v: serde_json::Value = run(&app, flaky::new(key(), 2)).await;
    assert_eq!(v["attempt"], json!(3));
    let t0 = Instant::now();
    let later = add::new(1, 1)
        .countdown(0.5)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(later.get::<i64>(WAIT).await.unwrap(), 2);
    assert!(t0.elapsed() >= Duration::from_millis(500));
    let r = app
        .send_task("tasks.nope", json!([]), json!({}))
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "NotRegistered");
    let report = w.warm().await;
    assert_eq!(report.stats.succeeded, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_broker_with_redis_results() {
    let test = "rabbitmq_broker_with_redis_results";
    let Some(url) = amqp(test, "") else { return };
    let Some(scope) = RedisScope::new(test) else {
        return;
    };
    let queue = services::unique("amqp-redis");
    let _cleanup = Queues(url.clone(), vec![queue.clone()]);
    let app = app_with_redis_results(&url, &scope, &queue).await;
    let _w = start(&app, |b| b);
    let r = add::new(20, 22).apply_async(&app).await.unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 42);
    // Stored in Redis: another client (no rpc reply queue of its own) reads it.
    let other = builder_on(&url)
        .result_backend_url(scope.url(""))
        .build()
        .await
        .unwrap();
    let again = other.async_result(r.id());
    assert_eq!(again.state().await.unwrap(), State::Success);
}

/// A worker killed in the middle of an `acks_late` task: RabbitMQ puts the message back
/// the moment the connection drops, and a live worker runs it (redelivered, so at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_late_task_runs_again_on_rabbitmq() {
    let Some(url) = amqp("killed_workers_late_task_runs_again_on_rabbitmq", "") else {
        return;
    };
    let queue = services::unique("amqp-kill");
    let _cleanup = Queues(url.clone(), vec![queue.clone()]);
    let app = app_on(&url, &queue).await;
    let mut doomed = WorkerProcess::spawn(&url, &["-n", "doomed@test", "-Q", &queue], &[]);
    let slow = slow_late::new(60.0).apply_async(&app).await.unwrap();
    doomed.wait_for_log(
        &format!("slow_late[{}] received", slow.id()),
        Duration::from_secs(10),
    );
    doomed.kill();
    let t0 = Instant::now();
    let _rescuer = start(&app, |b| b.name("rescuer@test"));
    assert_eq!(
        slow.get::<f64>(Duration::from_secs(20)).await.unwrap(),
        60.0
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
}

/// Closes every connection named `name` from the server side (what an operator or a
/// RabbitMQ restart does to them); returns how many.
fn close_connections(name: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--quiet",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(name)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let ok = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "closed by a celeriac test"])
            .output()
            .is_ok_and(|o| o.status.success());
        closed += usize::from(ok);
    }
    closed
}

/// RabbitMQ closes the connections of a worker and of its client mid-run: both connect
/// again by themselves, and every task sent before and after runs and reports back,
/// counted by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_clients_ride_through_closed_connections() {
    let test = "workers_and_clients_ride_through_closed_connections";
    let tag = services::unique("celeriac-close");
    let Some(url) = amqp(test, &format!("connection_name={tag}")) else {
        return;
    };
    if !Command::new("rabbitmqctl")
        .arg("status")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        if services::services_required() {
            panic!("{test}: rabbitmqctl does not work here, and CELERIAC_REQUIRE_SERVICES=1");
        }
        eprintln!("SKIPPED {test}: rabbitmqctl does not work here");
        return;
    }
    let queue = services::unique("amqp-close");
    let _cleanup = Queues(url.clone(), vec![queue.clone()]);
    let app = app_on(&url, &queue).await;
    let _worker = WorkerProcess::spawn(&url, &["-Q", &queue, "-c", "4"], &[]);
    let mut sent = Vec::new();
    for n in 0..50 {
        sent.push((n, add::new(n, 1000).apply_async(&app).await.unwrap()));
    }
    for (n, r) in &sent {
        assert_eq!(r.get::<i64>(WAIT).await.unwrap(), n + 1000);
    }
    let closed = close_connections(&tag);
    assert!(closed >= 2, "closed {closed} connection(s) named {tag}");
    for n in 50..100 {
        // A send right after the close may find the connection gone: the publish retry
        // and the rpc reply queue's wait for its comeback cover it.
        let r = add::new(n, 1000)
            .apply_async(&app)
            .await
            .unwrap_or_else(|e| panic!("task {n} not sent: {e}"));
        sent.push((n, r));
    }
    for (n, r) in &sent[50..] {
        assert_eq!(
            r.get::<i64>(Duration::from_secs(30)).await.unwrap(),
            n + 1000,
            "task {n}"
        );
    }
}

/// A quorum queue (Celery's `task_default_queue_type="quorum"`) with a delivery limit:
/// declared so (`rabbitmqctl` lists its type and arguments), consumed with per-consumer
/// QoS (quorum queues have no global QoS), tasks run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_on_a_quorum_queue() {
    let Some(url) = amqp(
        "tasks_run_on_a_quorum_queue",
        "queue_type=quorum&delivery_limit=3",
    ) else {
        return;
    };
    let queue = services::unique("amqp-quorum");
    let _cleanup = Queues(url.clone(), vec![queue.clone()]);
    let app = app_on(&url, &queue).await;
    let w = start(&app, |b| b);
    assert_eq!(run::<i64>(&app, add::new(40, 2)).await, 42);
    let listing = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "type",
            "arguments",
            "--quiet",
            "--no-table-headers",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if let Some(line) = listing.lines().find(|l| l.starts_with(&queue)) {
        assert!(line.contains("quorum"), "{line}");
        assert!(line.contains("x-delivery-limit"), "{line}");
    } else if services::services_required() {
        panic!("{queue} not listed by rabbitmqctl:\n{listing}");
    }
    w.warm().await;
}

/// `amqps://`: the server's certificate is verified (against `ssl_ca_certs`, else the
/// system's roots, which do not know this self-signed one), and a client certificate is
/// presented when the server asks for one. RabbitMQ here has no TLS listener, so a
/// `socat` TLS front stands before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_server_and_presents_a_client_certificate() {
    let test = "amqps_verifies_the_server_and_presents_a_client_certificate";
    let Some(plain) = amqp(test, "") else { return };
    let upstream = {
        let u = celeriac::core::url::EngineUrl::parse(&plain).unwrap();
        let host = if u.host().is_empty() {
            "127.0.0.1"
        } else {
            u.host()
        };
        format!("{host}:{}", u.as_url().port().unwrap_or(5672))
    };
    let Some(front) = services::TlsFront::start(test, &upstream, true) else {
        return;
    };
    let base = format!("amqps://guest:guest@127.0.0.1:{}//", front.port());
    let (ca, cert, key) = (
        front.cert().display().to_string(),
        front.cert().display().to_string(),
        front.key().display().to_string(),
    );
    let queue = services::unique("amqp-tls");
    let url = format!("{base}?ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}");
    let _cleanup = Queues(plain.clone(), vec![queue.clone()]);
    let app = app_on(&url, &queue).await;
    let w = start(&app, |b| b);
    assert_eq!(run::<i64>(&app, add::new(3, 4)).await, 7);
    w.warm().await;

    // Not trusted: the system's roots do not know the server's certificate.
    let e = builder_on(&format!("{base}?ssl_certfile={cert}&ssl_keyfile={key}"))
        .build()
        .await
        .expect_err("an unverified server must be refused");
    let text = e.to_string();
    assert!(
        text.contains("cannot reach broker") && text.contains("certificate verify failed"),
        "{text}"
    );
    // Trusted, but no client certificate where the server asks for one.
    let e = builder_on(&format!("{base}?ssl_ca_certs={ca}"))
        .build()
        .await
        .expect_err("a server asking for a client certificate must refuse us");
    // TLS 1.3 sends the server's "certificate required" alert after the client thinks
    // the handshake is done: the client reads either the alert or, when socat has
    // already closed, a reset. Either way the connection is refused.
    let text = e.to_string();
    assert!(
        text.contains("cannot reach broker")
            && (text.contains("certificate required") || text.contains("reset by peer")),
        "{text}"
    );
}

/// Held ETA tasks do not block the queue: with a prefetch of 1, five tasks due in a
/// minute are held (RabbitMQ's `basic.qos` raised by one for each), and a task sent after
/// them runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_eta_tasks_do_not_block_later_ones_on_rabbitmq() {
    let Some(url) = amqp("held_eta_tasks_do_not_block_later_ones_on_rabbitmq", "") else {
        return;
    };
    let queue = services::unique("amqp-eta");
    let _cleanup = Queues(url.clone(), vec![queue.clone()]);
    let app = app_on(&url, &queue).await;
    let w = start(&app, |b| b.concurrency(1).prefetch(1));
    for n in 0..5 {
        add::new(n, 0)
            .countdown(60.0)
            .apply_async(&app)
            .await
            .unwrap();
    }
    let t0 = Instant::now();
    assert_eq!(run::<i64>(&app, add::new(20, 1)).await, 21);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the marker waited {:?} behind held ETA tasks",
        t0.elapsed()
    );
    // Cold: the held tasks go back to the queue, none was run early.
    let report = w.cold().await;
    assert_eq!(report.stats.succeeded, 1);
}

/// Beat on a RabbitMQ broker keeps its lease and run records in the result backend's
/// Redis (RabbitMQ holds no such state) and sends its runs to RabbitMQ; with the rpc://
/// backend there is nowhere to keep them, said in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_on_rabbitmq_keeps_its_lease_in_the_redis_result_backend() {
    show_logs();
    let test = "beat_on_rabbitmq_keeps_its_lease_in_the_redis_result_backend";
    let Some(url) = amqp(test, "") else { return };
    let Some(scope) = RedisScope::new(test) else {
        return;
    };
    let queue = services::unique("amqp-beat");
    let _cleanup = Queues(url.clone(), vec![queue.clone()]);
    let app = app_with_redis_results(&url, &scope, &queue).await;
    let w = start(&app, |b| b);
    let k = key();
    let beat = || {
        // Expiring after 10 s, not one period: RabbitMQ drops a message whose
        // `expiration` passes before a consumer takes it, and the worker's first consume
        // waits for mingle (up to 1 s).
        let every = celeriac::beat::Schedule::every(0.3).unwrap();
        app.beat()
            .entries([
                celeriac::beat::Entry::new("tick", log_task::new(k.clone(), 1), every)
                    .expires(Duration::from_secs(10)),
            ])
            .build()
            .unwrap()
    };
    beat()
        .run(tokio::time::sleep(Duration::from_millis(1_100)))
        .await
        .unwrap();
    let upcoming = beat().upcoming(1).await.unwrap();
    let last = upcoming[0].last.expect("the last run is kept in Redis");
    // A marker behind the runs: once it ran, every run sent to RabbitMQ has run.
    run::<i64>(&app, add::new(1, 1)).await;
    let report = w.warm().await;
    assert_eq!(
        entries(&k).len(),
        3,
        "runs at 0.3, 0.6, 0.9 s (last {last}); {:?}",
        report.stats
    );

    let rpc = builder_on(&url)
        .default_queue(queue.clone())
        .build()
        .await
        .unwrap();
    let err = rpc
        .beat()
        .entry("tick", add::new(1, 1), celeriac::beat::every(1))
        .build()
        .unwrap()
        .run(std::future::ready(()))
        .await
        .expect_err("no store for the lease");
    let text = err.to_string();
    assert!(
        text.contains("beat cannot keep its lease") && !text.contains('\n'),
        "{text}"
    );
}
