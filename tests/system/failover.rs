//! Riding through broker faults on a Redis of the test's own: the server turning replica
//! for 3 s (what a Sentinel or managed-Redis failover does), a restart that answers
//! `LOADING` while it reads its dataset back, and a network cut (a proxy the test
//! controls). Each run sends tasks one by one before, during and after the fault and
//! counts every run by its number: each ran exactly once, and the worker that lived
//! through the fault stops warm, when asked, with nothing left queued or unacknowledged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac::App;
use celeriac_testing::proxy::TcpProxy;
use celeriac_testing::services::{RedisServer, ServerOptions};

use crate::support::*;

pub(crate) fn sync_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("a test connection to the test's redis-server")
}

/// Sends `n` numbered tasks a few ms apart (in `send_many` batches of four, which are
/// queued exactly once even when a fault cuts a reply off; a single `apply_async` whose
/// reply is lost is resent, at-least-once as in Celery), starts `fault` on a thread once
/// a quarter are sent, and checks that every number ran exactly once and that the worker
/// is alive and stops cleanly afterwards, with nothing queued or unacknowledged on the
/// server at `inspect_url`. Returns the tasks' results, in order.
pub(crate) async fn every_task_once_through(
    app: &App,
    inspect_url: &str,
    n: i64,
    fault: impl FnOnce() + Send + 'static,
) -> Vec<celeriac::AsyncResult> {
    show_logs();
    let w = start(app, |b| b.concurrency(4));
    let k = key();
    let mut fault = Some(fault);
    let mut faulting = None;
    let t0 = Instant::now();
    let mut results = Vec::with_capacity(n as usize);
    for first in (0..n).step_by(4) {
        if first >= n / 4 && faulting.is_none() {
            faulting = fault.take().map(tokio::task::spawn_blocking);
        }
        let batch = (first..(first + 4).min(n))
            .map(|i| log_task::new(k.clone(), i))
            .collect();
        let sent = app
            .send_many(batch)
            .await
            .unwrap_or_else(|e| panic!("tasks {first}.. were not sent: {e}"));
        results.extend(sent);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(f) = faulting {
        f.await.expect("the fault ran");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (entries(&k).len() as i64) < n {
        assert!(
            !w.handle.is_finished(),
            "the worker stopped during the fault"
        );
        assert!(
            Instant::now() < deadline,
            "only {} of {n} tasks ran within 60 s of the fault",
            entries(&k).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = t0.elapsed();
    assert!(!w.handle.is_finished(), "the worker stopped on its own");
    // Stopped warm, with nothing queued and nothing unacknowledged: no copy of any task
    // is left anywhere to run a second time.
    w.warm().await;
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
    let unacked: u64 = redis::cmd("HLEN")
        .arg("unacked")
        .query(&mut sync_conn(inspect_url))
        .unwrap();
    assert_eq!(unacked, 0, "messages left unacknowledged");
    let mut runs = vec![0u32; n as usize];
    for v in entries(&k) {
        runs[v.as_i64().expect("a number") as usize] += 1;
    }
    let twice: Vec<usize> = (0..runs.len()).filter(|&i| runs[i] > 1).collect();
    let never: Vec<usize> = (0..runs.len()).filter(|&i| runs[i] == 0).collect();
    assert!(
        twice.is_empty() && never.is_empty(),
        "ran twice: {twice:?}; never ran: {never:?}"
    );
    eprintln!("{n} tasks through the fault, each ran once, in {wall:.1?}");
    results
}

/// `REPLICAOF` a primary that does not exist for 3 s, then `REPLICAOF NO ONE`: blocked
/// reads fail with `UNBLOCKED`, writes with `READONLY`. The worker retries (consuming,
/// acknowledging, storing results) and the client's publishes retry, until the server is
/// primary again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_rides_through_a_failover_to_replica() {
    let Some(server) = RedisServer::start("worker_rides_through_a_failover_to_replica", false)
    else {
        return;
    };
    let url = format!("{}/0", server.url());
    let app = builder_on(&url).build().await.unwrap();
    let fault_url = url.clone();
    every_task_once_through(&app, &url, 600, move || {
        let mut c = sync_conn(&fault_url);
        let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(nowhere)
            .exec(&mut c)
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .exec(&mut c)
            .unwrap();
    })
    .await;
    drop(server);
}

/// Restart the server with a dataset that takes seconds to load: until it is loaded
/// every command is answered `LOADING`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_rides_through_a_restart_that_is_loading() {
    let opts = ServerOptions {
        persistent: true,
        key_load_delay_us: 200,
        ..ServerOptions::default()
    };
    let Some(server) =
        RedisServer::start_with("worker_rides_through_a_restart_that_is_loading", opts)
    else {
        return;
    };
    let url = format!("{}/0", server.url());
    {
        // 10,000 keys to load at 200 µs each: about 2 s of `LOADING` after a restart,
        // read from an RDB base (the delay applies to RDB loading), so rewrite the AOF.
        let mut c = sync_conn(&url);
        let mut pipe = redis::pipe();
        for i in 0..10_000 {
            pipe.cmd("SET").arg(format!("filler:{i}")).arg(i).ignore();
        }
        pipe.exec(&mut c).unwrap();
        redis::cmd("BGREWRITEAOF").exec(&mut c).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
            if info.contains("aof_rewrite_in_progress:0")
                && !info.contains("aof_rewrite_scheduled:1")
            {
                break;
            }
            assert!(Instant::now() < deadline, "AOF rewrite did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let app = builder_on(&url).build().await.unwrap();
    let server = Arc::new(Mutex::new(server));
    let restarting = server.clone();
    let loading_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = loading_seen.clone();
    let probe_url = url.clone();
    every_task_once_through(&app, &url, 400, move || {
        restarting.lock().unwrap().restart();
        let answer = redis::Client::open(probe_url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if answer.is_err_and(|e| e.code() == Some("LOADING")) {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .await;
    assert!(
        loading_seen.load(std::sync::atomic::Ordering::SeqCst),
        "the restarted server never answered LOADING: the test did not test it"
    );
}

/// Cut every connection between the processes and Redis and refuse new ones for 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_rides_through_a_network_cut() {
    let Some(server) = RedisServer::start("worker_rides_through_a_network_cut", false) else {
        return;
    };
    let proxy = Arc::new(TcpProxy::start(&format!("127.0.0.1:{}", server.port())).unwrap());
    let url = format!("redis://{}/0", proxy.addr());
    let app = builder_on(&url).build().await.unwrap();
    let cutter = proxy.clone();
    every_task_once_through(&app, &format!("{}/0", server.url()), 600, move || {
        cutter.cut();
        std::thread::sleep(Duration::from_secs(2));
        cutter.restore();
    })
    .await;
}

/// `send_many` through a connection cut right after the first chunk's `EXEC` went out:
/// Redis ran it, the reply never came back. The resend finds the chunk's marker and sends
/// only the rest: every message is queued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_many_cut_after_exec_queues_each_message_once() {
    let Some(server) =
        RedisServer::start("send_many_cut_after_exec_queues_each_message_once", false)
    else {
        return;
    };
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", server.port())).unwrap();
    let app = builder_on(&format!("redis://{}/0", proxy.addr()))
        .build()
        .await
        .unwrap();
    proxy.cut_after(b"EXEC\r\n");
    let n = 5_000;
    let sent = app
        .send_many((0..n).map(|i| add::new(i, 0)).collect())
        .await
        .expect("the batch is sent after the cut");
    assert_eq!(sent.len(), n as usize);
    assert_eq!(
        proxy.cuts(),
        1,
        "the fault did not fire: the test tested nothing"
    );
    let queued: u64 = redis::cmd("LLEN")
        .arg("celery")
        .query(&mut sync_conn(&server.url()))
        .unwrap();
    assert_eq!(queued, n as u64, "messages queued twice or lost");
}

/// A queue's priority-bucket key holding a string (WRONGTYPE for list commands), after
/// a bucket with messages in it: the messages are run, the bad key is reported and
/// skipped, and the worker goes on consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_queue_key_loses_nothing_and_stops_nothing() {
    let Some(server) = RedisServer::start(
        "an_unreadable_queue_key_loses_nothing_and_stops_nothing",
        false,
    ) else {
        return;
    };
    let url = format!("{}/0", server.url());
    let app = builder_on(&url).build().await.unwrap();
    redis::cmd("SET")
        .arg("celery\x06\x163")
        .arg("not a list")
        .exec(&mut sync_conn(&url))
        .unwrap();
    let k = key();
    for i in 0..20 {
        log_task::new(k.clone(), i).apply_async(&app).await.unwrap();
    }
    show_logs();
    let w = start(&app, |b| b.concurrency(4));
    until("the 20 queued tasks ran", || async {
        entries(&k).len() == 20
    })
    .await;
    let r = add::new(1, 2).apply_async(&app).await.unwrap();
    assert_eq!(
        r.get::<i64>(WAIT).await.unwrap(),
        3,
        "the worker still consumes"
    );
    w.warm().await;
    let mut ran: Vec<i64> = entries(&k).iter().filter_map(|v| v.as_i64()).collect();
    ran.sort_unstable();
    assert_eq!(ran, (0..20).collect::<Vec<_>>());
}

/// Redis at `maxmemory`: the fetch script cannot record what it would take, so it takes
/// nothing (the messages stay queued); once memory is freed, every task runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_takes_nothing_and_loses_nothing() {
    let Some(server) = RedisServer::start("out_of_memory_takes_nothing_and_loses_nothing", false)
    else {
        return;
    };
    let url = format!("{}/0", server.url());
    // Results elsewhere: only the broker is out of memory.
    let Some(scope) = celeriac_testing::services::RedisScope::new(
        "out_of_memory_takes_nothing_and_loses_nothing",
    ) else {
        return;
    };
    let app = builder_on(&url)
        .result_backend_url(scope.url(""))
        .build()
        .await
        .unwrap();
    let k = key();
    for i in 0..100 {
        log_task::new(k.clone(), i).apply_async(&app).await.unwrap();
    }
    let mut c = sync_conn(&url);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .exec(&mut c)
        .unwrap();
    show_logs();
    let w = start(&app, |b| b.concurrency(4));
    // The worker ran its fetch script again and again meanwhile, and took nothing.
    let scripts_run = || {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut sync_conn(&url))
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_eval"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
    };
    let before = scripts_run();
    until("the worker tried to fetch 3 times", || async {
        scripts_run() >= before + 3
    })
    .await;
    let depth: u64 = redis::cmd("LLEN").arg("celery").query(&mut c).unwrap();
    assert_eq!(depth, 100, "messages were taken without being recorded");
    assert_eq!(w.stats.snapshot().received, 0);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .exec(&mut c)
        .unwrap();
    until("the 100 tasks ran", || async { entries(&k).len() >= 100 }).await;
    w.warm().await;
    let mut ran: Vec<i64> = entries(&k).iter().filter_map(|v| v.as_i64()).collect();
    ran.sort_unstable();
    assert_eq!(ran, (0..100).collect::<Vec<_>>(), "lost or run twice");
}

/// SIGKILL a worker holding `acks_late` tasks, with kombu's default visibility timeout
/// (an hour): a worker started after it restores them from the dead one's held set as
/// soon as its liveness key expires (`dead_after=2`), and every task finishes within 15 s
/// of that restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_late_ack_tasks_finish_within_seconds_of_a_restart() {
    let Some(scope) = celeriac_testing::services::RedisScope::new(
        "a_killed_workers_late_ack_tasks_finish_within_seconds_of_a_restart",
    ) else {
        return;
    };
    let url = scope.url("dead_after=2");
    let app = builder_on(&url).build().await.unwrap();
    let mut doomed =
        crate::proc::WorkerProcess::spawn(&url, &["-c", "4", "-n", "doomed@test"], &[]);
    let results: Vec<celeriac::AsyncResult> = app
        .send_many((0..12).map(|_| slow_late::new(300.0)).collect())
        .await
        .unwrap();
    for r in &results {
        doomed.wait_for_log(&format!("[{}] received", r.id()), Duration::from_secs(10));
    }
    doomed.kill();
    let restarted = Instant::now();
    let rescuer = start(&app, |b| b.name("rescuer@test"));
    for r in &results {
        let left = Duration::from_secs(15).saturating_sub(restarted.elapsed());
        assert_eq!(
            r.get::<f64>(left).await.unwrap_or_else(|e| panic!(
                "task {} not finished within 15 s of the restart: {e}",
                r.id()
            )),
            300.0
        );
    }
    eprintln!(
        "12 late-ack tasks of a killed worker finished {:.1?} after the restart",
        restarted.elapsed()
    );
    rescuer.warm().await;
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
}
