//! `sentinel://`: a worker and its client follow the primary when Redis Sentinel moves it.
//! Each test runs a deployment of its own — a primary, a replica of it, and one Sentinel
//! (quorum 1, down after 1 s) — on spare ports, sends numbered tasks through
//! `failover::every_task_once_through`, moves the primary mid-run, and counts every run by
//! its number: each ran exactly once, the worker lived through it, nothing is left queued
//! or unacknowledged on the new primary, and every result can be read afterwards.
//!
//! Neither test leaves the old primary writable after the new one is promoted: with
//! asynchronous replication, writes an old primary takes after that are lost when it is
//! turned into a replica, whoever the client is (a bare `SENTINEL FAILOVER` leaves it a
//! primary for about 10 s, until Sentinel converts it). A planned switchover pauses
//! writes first (`CLIENT PAUSE WRITE`) and waits for the replica to catch up, as an
//! operator would; a stopped primary hands its last writes to the replica on the way down
//! (Redis 7's shutdown waits for lagging replicas).

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::App;
use celeriac_testing::services::{RedisSentinel, RedisServer};

use crate::failover::{every_task_once_through, sync_conn};
use crate::support::*;

/// A primary, its replica and a Sentinel watching them.
struct Deployment {
    primary: RedisServer,
    replica: RedisServer,
    sentinel: Arc<RedisSentinel>,
    name: String,
}

/// Starts a deployment for `test`, or `None` (skipped loudly) without `redis-server`.
fn deploy(test: &str) -> Option<Deployment> {
    let primary = RedisServer::start(test, false)?;
    let replica = RedisServer::start(test, false)?;
    replica.replicate(&primary);
    let name = format!("celeriac-{}", &key()[..8]);
    let sentinel = RedisSentinel::start(test, &name, primary.port())?;
    sentinel.wait_for_replicas(1);
    Some(Deployment {
        primary,
        replica,
        sentinel: Arc::new(sentinel),
        name,
    })
}

/// A field of `INFO replication` of the server at `url`.
fn replication(url: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut sync_conn(url))
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Polls `probe` every 20 ms until it holds, for at most `within`.
fn wait_until(what: &str, within: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every task's result is there, read through the app (its backend followed the primary).
async fn every_result_is_readable(results: &[celeriac::AsyncResult]) {
    for r in results {
        r.get::<()>(WAIT)
            .await
            .unwrap_or_else(|e| panic!("result of {} not readable: {e}", r.id()));
    }
}

/// A planned switchover while tasks flow, as an operator makes one: writes to the primary
/// paused, the replica caught up, `SENTINEL FAILOVER`, the old primary made a replica of
/// the new one (what Sentinel does itself about 10 s later, its `+convert-to-slave`),
/// writes resumed. Blocked `BRPOP`s fail with `UNBLOCKED` and the paused writes with
/// `READONLY`: the engine asks the Sentinel again and moves to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_follows_a_sentinel_switchover_and_runs_every_task_once() {
    let Some(d) = deploy("worker_follows_a_sentinel_switchover_and_runs_every_task_once") else {
        return;
    };
    let url = format!(
        "sentinel://127.0.0.1:{}/0?master_name={}",
        d.sentinel.port(),
        d.name
    );
    let app: App = builder_on(&url).build().await.unwrap();
    let (old_url, new_url) = (d.primary.url(), d.replica.url());
    let (old_port, new_port) = (d.primary.port(), d.replica.port());
    let sentinel = d.sentinel.clone();
    let fault_old_url = old_url.clone();
    let fault_new_url = new_url.clone();
    let results = every_task_once_through(&app, &format!("{new_url}/0"), 400, move || {
        let t0 = Instant::now();
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(30_000)
            .arg("WRITE")
            .exec(&mut sync_conn(&fault_old_url))
            .unwrap();
        wait_until("the replica to catch up", Duration::from_secs(10), || {
            let at = |u: &str| replication(u, "master_repl_offset");
            at(&fault_old_url).is_some() && at(&fault_old_url) == at(&fault_new_url)
        });
        assert_eq!(sentinel.failover(old_port), new_port);
        let promoted = t0.elapsed();
        // Before any paused write runs: on a primary they would be lost to the new one.
        let mut old = sync_conn(&fault_old_url);
        redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(new_port)
            .exec(&mut old)
            .unwrap();
        redis::cmd("CLIENT").arg("UNPAUSE").exec(&mut old).unwrap();
        eprintln!("switchover: Sentinel named the replica {promoted:.1?} after writes were paused");
    })
    .await;
    every_result_is_readable(&results).await;
    assert_eq!(
        replication(&new_url, "role").as_deref(),
        Some("master"),
        "the replica was not promoted: the test tested nothing"
    );
    assert_eq!(replication(&old_url, "role").as_deref(), Some("slave"));
}

/// The primary stops (SIGTERM) while tasks flow: connections are refused until the
/// Sentinel sees it down (1 s), promotes the replica and names it. The URL lists a
/// Sentinel that is not running first, as a deployment with one Sentinel down would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_follows_sentinel_to_a_new_primary_when_the_primary_stops() {
    let Some(d) = deploy("worker_follows_sentinel_to_a_new_primary_when_the_primary_stops") else {
        return;
    };
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = format!(
        "sentinel://127.0.0.1:{nobody};sentinel://127.0.0.1:{}/0?master_name={}",
        d.sentinel.port(),
        d.name
    );
    let app: App = builder_on(&url).build().await.unwrap();
    let new_url = d.replica.url();
    let (old_port, new_port) = (d.primary.port(), d.replica.port());
    let sentinel = d.sentinel.clone();
    let mut primary = d.primary;
    let results = every_task_once_through(&app, &format!("{new_url}/0"), 400, move || {
        let t0 = Instant::now();
        primary.stop();
        let stopped = t0.elapsed();
        assert_eq!(sentinel.wait_for_new_primary(old_port), new_port);
        eprintln!(
            "primary stopped in {stopped:.1?}; Sentinel named the replica {:.1?} after the stop began",
            t0.elapsed()
        );
    })
    .await;
    every_result_is_readable(&results).await;
    assert_eq!(replication(&new_url, "role").as_deref(), Some("master"));
}

/// No Sentinel answers: building the app fails at once with one line naming the URL
/// (password masked) and the master it looked for.
#[tokio::test]
async fn no_sentinel_answering_is_one_clear_line() {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let started = Instant::now();
    let built = builder_on(&format!(
        "sentinel://:s3cret@127.0.0.1:{nobody}/0?master_name=orders"
    ))
    .build()
    .await;
    let Err(e) = built else {
        panic!("an app was built with no Sentinel answering");
    };
    let e = e.to_string();
    assert!(
        e.contains("master `orders`") && e.contains(":***@127.0.0.1") && !e.contains("s3cret"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert!(started.elapsed() < Duration::from_secs(6), "{e}");
}
