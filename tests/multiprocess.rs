//! Several worker processes sharing one SQLite file, with many tasks: every task runs
//! exactly once. A test binary of its own, so the load it makes (four worker processes)
//! does not slow the system tests around it: cargo runs test binaries one at a time.

// Shared with the system tests, which use all of it.
#[allow(dead_code)]
#[path = "system/proc.rs"]
mod proc;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use celeriac::Signature;
use celeriac_testing::services::{RedisScope, ScratchDir};
use serde_json::json;

use proc::WorkerProcess;

/// Several worker processes consume one file: every task runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_worker_processes_share_one_file_without_loss_or_duplicates() {
    let n: u64 = std::env::var("CELERIAC_TEST_SQLITE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = ScratchDir::new("celeriac-sqlite-multi");
    let url = dir.sqlite_url("q.sqlite", "");
    let marks = dir.path().join("marks.txt");
    let app = celeriac::App::builder()
        .broker_url(&url)
        .build()
        .await
        .unwrap();
    let t0 = Instant::now();
    let sigs: Vec<Signature> = (0..n)
        .map(|i| Signature::new("tasks.mark").args(vec![json!(i)]))
        .collect();
    app.send_many(sigs).await.unwrap();
    let published = t0.elapsed();
    let marks_env = marks.display().to_string();
    let env = [("CELERIAC_MARK_FILE", marks_env.as_str())];
    let mut workers: Vec<WorkerProcess> = (0..4)
        .map(|i| {
            WorkerProcess::spawn(
                &url,
                &["-c", "8", "-n", &format!("w{i}@test"), "-l", "warning"],
                &env,
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    let count = || {
        std::fs::read_to_string(&marks)
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    };
    while count() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} tasks ran",
            count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ran = t0.elapsed();
    // Every worker stops (SIGTERM: warm, so what it runs finishes and what it prefetched
    // goes back to the file); with nothing left in the queue, every duplicate has run and
    // is counted below.
    stop(&mut workers);
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for line in text.lines() {
        *seen.entry(line.parse().unwrap()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dups.is_empty(), "tasks ran twice: {dups:?}");
    assert_eq!(seen.len() as u64, n, "tasks lost");
    eprintln!(
        "sqlite, 4 worker processes: {n} tasks published in {published:.2?}, all run once in {ran:.2?} ({:.0} tasks/s)",
        n as f64 / ran.as_secs_f64()
    );
}

/// Stops every worker with SIGTERM (a warm shutdown) and waits for each to exit cleanly.
fn stop(workers: &mut [WorkerProcess]) {
    for w in workers {
        assert!(w.terminate().success(), "worker exit:\n{}", w.log());
    }
}

/// Issue 6: a chord of 1,000 header tasks under 4 worker processes fires its body exactly
/// once, with every result in header order — the join is atomic across processes.
async fn chord_of_1000_fires_once(url: &str, dir: &ScratchDir) {
    let marks = dir.path().join("chord-marks.txt");
    let app = celeriac::App::builder()
        .broker_url(url)
        .build()
        .await
        .unwrap();
    let marks_env = marks.display().to_string();
    let env = [("CELERIAC_MARK_FILE", marks_env.as_str())];
    let mut workers: Vec<WorkerProcess> = (0..4)
        .map(|i| {
            WorkerProcess::spawn(
                url,
                &["-c", "4", "-n", &format!("c{i}@test"), "-l", "warning"],
                &env,
            )
        })
        .collect();
    let header = (0..1000i64).map(|i| Signature::new("tasks.add").args(vec![json!(i), json!(i)]));
    let t0 = Instant::now();
    let r = celeriac::chord(celeriac::group(header), Signature::new("tasks.mark_all"))
        .apply_async(&app)
        .await
        .unwrap();
    let got: Vec<i64> = r.get(Duration::from_secs(300)).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(got, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    // A marker on the same queue runs (so whatever was sent before it was taken); then
    // every worker stops (warm: what it runs finishes, sending whatever follows it) and
    // nothing is left in the queue: a second firing has run and is counted below.
    let marker = Signature::new("tasks.add").args(vec![json!(20), json!(22)]);
    let marker = marker.apply_async(&app).await.unwrap();
    assert_eq!(
        marker.get::<i64>(Duration::from_secs(30)).await.unwrap(),
        42
    );
    stop(&mut workers);
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
    let text = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["body 1000 999000"],
        "the chord body ran other than once"
    );
    eprintln!("{url}: chord of 1,000 under 4 worker processes joined in {took:.2?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_of_1000_fires_once_on_sqlite() {
    let dir = ScratchDir::new("celeriac-chord-multi");
    let url = dir.sqlite_url("chord.sqlite", "");
    chord_of_1000_fires_once(&url, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_of_1000_fires_once_on_redis() {
    let Some(scope) = RedisScope::new("chord_of_1000_fires_once_on_redis") else {
        return;
    };
    let dir = ScratchDir::new("celeriac-chord-multi-redis");
    chord_of_1000_fires_once(&scope.url(""), &dir).await;
}
