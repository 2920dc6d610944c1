//! Beat across processes: several `beat` processes on one SQLite file and on one Redis
//! send each due run once — also when the leader is killed mid-run — and a worker with
//! `-B` runs the tutorial's schedule from code. Each run is counted by a task that records
//! the due time its message carries (`beat_due`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use celeriac::events::EventKind;
use celeriac::{TaskContext, TaskResult};
use celeriac_testing::services::{RedisScope, ScratchDir};
use serde_json::Value;

use crate::proc::{WorkerProcess, BIN};
use crate::support::*;

/// Records the due time of the beat run that sent it, under `key`.
#[celeriac::task(name = "beat.record_due")]
async fn record_due(ctx: &TaskContext, key: String) -> TaskResult<()> {
    let due = ctx.headers().get(celeriac::beat::DUE_HEADER).cloned();
    log(&key, due.unwrap_or(Value::Null));
    Ok(())
}

/// A `beat` process of the test app on `broker`, with `schedule` and a short lease.
fn beat_process(broker: &str, schedule: &std::path::Path, lease: &str) -> WorkerProcess {
    let mut cmd = Command::new(BIN);
    cmd.args(["--broker", broker, "beat", "-l", "debug", "--lease", lease])
        .arg("--schedule")
        .arg(schedule)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERY_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERY_RESULT_BACKEND")
        .env_remove("CELERIAC_TESTAPP_BEAT")
        .env("RUST_LOG", "celeriac=debug");
    WorkerProcess::spawn_command(cmd, "beat: 1 entries")
}

/// The recorded due times under `key`, as text.
fn dues(key: &str) -> Vec<String> {
    entries(key)
        .iter()
        .map(|v| v.as_str().unwrap_or("<none>").to_string())
        .collect()
}

/// A schedule file in `dir`: one entry `tick` every `every` seconds sending
/// `beat.record_due` (recording under `key`) to `queue`.
fn tick_schedule(dir: &ScratchDir, queue: &str, key: &str, every: f64) -> std::path::PathBuf {
    let file = dir.path().join("beat.toml");
    std::fs::write(
        &file,
        format!(
            "[schedule.tick]\ntask = \"beat.record_due\"\nevery = {every}\nqueue = \"{queue}\"\nkwargs = {{ key = \"{key}\" }}\n"
        ),
    )
    .unwrap();
    file
}

/// Waits until `n` runs are recorded under `key`; panics with what was after `within`.
async fn wait_runs(key: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while entries(key).len() < n {
        assert!(
            Instant::now() < deadline,
            "only {:?} after {within:?}",
            dues(key)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three beat processes share one schedule (a 1 s entry) on `broker`; the leader is
/// SIGKILLed after a few runs. Every due time runs exactly once, the runs go on after
/// the kill within the lease period, and a second process took the lead.
async fn three_beats(broker: &str) {
    let dir = ScratchDir::new("celeriac-beat");
    let k = key();
    let queue = format!("beat-{k}");
    let file = tick_schedule(&dir, &queue, &k, 1.0);
    let app = builder_on(broker).task(record_due).build().await.unwrap();
    let w = start(&app, |b| b.queues([queue.as_str()]));
    let lease = "2";
    let mut beats: Vec<WorkerProcess> =
        (0..3).map(|_| beat_process(broker, &file, lease)).collect();
    wait_runs(&k, 4, Duration::from_secs(15)).await;
    let leaders: Vec<usize> = (0..3)
        .filter(|i| beats[*i].log().contains("beat: leading"))
        .collect();
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    let killed = leaders[0];
    beats[killed].kill();
    let at_kill = entries(&k).len();
    // Within the lease period (2 s) plus a follower's retry (lease / 5) and a run period.
    wait_runs(&k, at_kill + 4, Duration::from_secs(10)).await;
    let new_leaders: Vec<usize> = (0..3)
        .filter(|i| *i != killed && beats[*i].log().contains("beat: leading"))
        .collect();
    assert_eq!(new_leaders.len(), 1, "one new leader: {new_leaders:?}");
    for (i, b) in beats.iter_mut().enumerate() {
        if i != killed {
            assert!(b.terminate().success(), "beat {i} exits 0 on SIGTERM");
        }
    }
    // A marker task behind the beat's last message: once it ran, every run sent is in.
    run::<i64>(&app, add::new(1, 1).queue(queue.as_str())).await;
    w.warm().await;
    let got = dues(&k);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a due time ran twice: {got:?}");
    let secs: Vec<i64> = got
        .iter()
        .map(|d| {
            chrono::DateTime::parse_from_rfc3339(d)
                .unwrap_or_else(|e| panic!("{d}: {e}"))
                .timestamp_micros()
        })
        .collect();
    assert!(secs.windows(2).all(|w| w[1] > w[0]), "in order: {got:?}");
    // Whole seconds apart: due times come from the schedule, not from when they were sent.
    assert!(
        secs.windows(2).all(|w| (w[1] - w[0]) % 1_000_000 == 0),
        "{got:?}"
    );
    // The lease (2 s) plus one period, and a second of slack for a loaded machine.
    let gap = secs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(
        gap <= 4_000_000,
        "no run for {gap} µs around the kill: {got:?}"
    );
    eprintln!(
        "three beats on {broker}: {} runs, longest gap {gap} µs",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_beats_on_one_sqlite_file_send_each_run_once() {
    let dir = ScratchDir::new("celeriac-beat-db");
    let url = format!("sqlite://{}", dir.path().join("beat.sqlite").display());
    three_beats(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_beats_on_one_redis_send_each_run_once() {
    let Some(scope) = RedisScope::new("three_beats_on_one_redis_send_each_run_once") else {
        return;
    };
    three_beats(&scope.url("")).await;
}

/// A leader paused (SIGSTOP) past its lease wakes to find another beat leading: it sends
/// nothing — no due time runs twice — and says it lost the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_wakes_and_sends_nothing() {
    let dir = ScratchDir::new("celeriac-beat-pause");
    let broker = format!("sqlite://{}", dir.path().join("p.sqlite").display());
    let k = key();
    let queue = format!("pause-{k}");
    let file = tick_schedule(&dir, &queue, &k, 0.5);
    let app = builder_on(&broker).task(record_due).build().await.unwrap();
    let w = start(&app, |b| b.queues([queue.as_str()]));
    let mut beats: Vec<WorkerProcess> = (0..2).map(|_| beat_process(&broker, &file, "1")).collect();
    wait_runs(&k, 3, Duration::from_secs(15)).await;
    let leader = (0..2)
        .find(|i| beats[*i].log().contains("beat: leading"))
        .expect("a leader");
    let other = 1 - leader;
    let signal = |sig: &str, pid: u32| {
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP", beats[leader].pid());
    let at_pause = entries(&k).len();
    // The other takes over (the lease is 1 s) and sends on.
    wait_runs(&k, at_pause + 4, Duration::from_secs(15)).await;
    assert!(
        beats[other].log().contains("beat: leading"),
        "{}",
        beats[other].log()
    );
    signal("-CONT", beats[leader].pid());
    beats[leader].wait_for_log("lost the lease", Duration::from_secs(10));
    let at_wake = entries(&k).len();
    wait_runs(&k, at_wake + 3, Duration::from_secs(15)).await;
    for b in &mut beats {
        assert!(b.terminate().success());
    }
    run::<i64>(&app, add::new(1, 1).queue(queue.as_str())).await;
    w.warm().await;
    let got = dues(&k);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a due time ran twice: {got:?}");
    assert!(
        !beats[leader].log()[beats[leader].log().find("lost the lease").unwrap_or(0)..]
            .contains("Sending due task"),
        "the paused leader sent after it woke:\n{}",
        beats[leader].log()
    );
}

/// `worker -B -E` runs the tutorial's schedule registered in code (the test app's
/// `CELERIAC_TESTAPP_BEAT=<queue>,<scale>`: tasks.taskA every 20 s with (5, 6),
/// tasks.taskB every 200 s with (10, 20, 30), tasks.add every 10 s with (1, 2), times
/// `scale`); the worker's task events show each task ran with the tutorial's results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_b_runs_the_tutorials_schedule_from_code() {
    let dir = ScratchDir::new("celeriac-beat-b");
    let url = format!("sqlite://{}", dir.path().join("b.sqlite").display());
    let queue = format!("tut-{}", key());
    let app = builder_on(&url).build().await.unwrap();
    let mut events = app.events().await.unwrap();
    let scale = format!("{queue},0.02");
    let mut worker = WorkerProcess::spawn(
        &url,
        &["-B", "-E", "-Q", &queue, "--without-mingle"],
        &[("CELERIAC_TESTAPP_BEAT", &scale)],
    );
    // taskB's period is 4 s: wait for its first run (and several of the others).
    let mut results: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut names: std::collections::HashMap<String, String> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !results.contains_key("tasks.taskB") {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("no taskB run in 20 s: {results:?}\n{}", worker.log()))
            .expect("event stream");
        let Some(id) = e.uuid().map(str::to_string) else {
            continue;
        };
        match e.kind {
            EventKind::TaskReceived => {
                if let Some(n) = e.str("name") {
                    names.insert(id, n.to_string());
                }
            }
            EventKind::TaskSucceeded => {
                let name = names.get(&id).cloned().unwrap_or_default();
                let result = e.str("result").unwrap_or_default().to_string();
                results.entry(name).or_default().push(result);
            }
            _ => {}
        }
    }
    assert!(worker.log().contains("beat: leading"), "{}", worker.log());
    assert!(results["tasks.add"].iter().all(|r| r == "3"), "{results:?}");
    assert!(
        results["tasks.add"].len() >= 10,
        "add every 0.2 s: {results:?}"
    );
    assert!(
        results["tasks.taskA"].len() >= 4,
        "taskA every 0.4 s: {results:?}"
    );
    assert!(
        results["tasks.taskA"].iter().all(|r| r.contains("11")),
        "{results:?}"
    );
    assert!(results["tasks.taskB"][0].contains("60"), "{results:?}");
    let status = worker.terminate();
    assert!(status.success(), "{status:?}\n{}", worker.log());
    assert!(
        worker.log().contains("beat: stopped; lease released"),
        "{}",
        worker.log()
    );
}

/// The stand-alone `celeriac beat --dry-run` prints each entry of the tutorial's schedule
/// file with its next due times; a bad file is one line naming the entry and the key,
/// exit 1.
#[test]
fn dry_run_lists_the_next_runs_and_a_bad_file_is_one_line() {
    let dir = ScratchDir::new("celeriac-beat-dry");
    let url = format!("sqlite://{}", dir.path().join("d.sqlite").display());
    let file = dir.path().join("beat.toml");
    let tutorial = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .join("examples/beat.toml");
    std::fs::copy(&tutorial, &file).unwrap();
    let beat = |file: &std::path::Path| {
        Command::new(crate::proc::celeriac_bin())
            .args(["--broker", &url, "beat", "--dry-run", "--count", "2"])
            .arg("--schedule")
            .arg(file)
            .env_remove("CELERIAC_TESTAPP_BEAT")
            .output()
            .unwrap()
    };
    let out = beat(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for line in [
        "add-every-10  tasks.add  every 10s",
        "taskA-every-20  tasks.taskA  every 20s",
        "taskB-every-200  tasks.taskB  every 200s",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert_eq!(text.matches("last run: never").count(), 3, "{text}");
    assert_eq!(text.matches("next: ").count(), 6, "{text}");
    std::fs::write(&file, "[schedule.x]\ntask = \"t\"\nevery = -1\n").unwrap();
    let out = beat(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("entry `x`") && err.contains("`every`"),
        "{err}"
    );
}

/// The engine's rule, on memory, SQLite and Redis: one holder at a time; after the lease
/// runs out another takes it with a larger token; the old holder's send (a paused leader
/// waking) records and enqueues nothing; a run is recorded and enqueued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_engine_fences_a_stale_leader_and_sends_a_run_once() {
    use celeriac::beat::{BeatRun, BeatSent};
    let dir = ScratchDir::new("celeriac-beat-fence");
    let mut urls = vec![
        format!("memory://{}", key()),
        format!("sqlite://{}", dir.path().join("f.sqlite").display()),
    ];
    let scope = RedisScope::new("each_engine_fences_a_stale_leader_and_sends_a_run_once");
    if let Some(s) = &scope {
        urls.push(s.url(""));
    }
    for url in urls {
        let app = builder_on(&url).build().await.unwrap();
        let b = app.broker();
        let (schedule, queue) = (format!("s-{}", key()), format!("fq-{}", key()));
        let ttl = Duration::from_millis(300);
        let a = b
            .beat_lease(&schedule, "a", ttl)
            .await
            .unwrap()
            .expect("a leads");
        assert_eq!(
            b.beat_lease(&schedule, "b", ttl).await.unwrap(),
            None,
            "{url}"
        );
        assert_eq!(
            b.beat_lease(&schedule, "a", ttl).await.unwrap(),
            Some(a),
            "{url}: renewed"
        );
        let message = |n: i64| {
            let sig = add::new(n, n);
            let ctx = celeriac_core::protocol::SendContext {
                origin: "gen1@test",
                reply_to: "r",
                parent: None,
                ignore_result: None,
            };
            let route = celeriac_core::Route::queue(queue.as_str());
            let m = celeriac_core::TaskMessage::from_signature(&sig, &route, &ctx).unwrap();
            (m, celeriac_core::PublishOptions::default())
        };
        let due = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:01.000001Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let run = |token, secs: i64| BeatRun {
            schedule: schedule.clone(),
            token,
            entry: "tick".into(),
            due: due + chrono::Duration::seconds(secs),
        };
        let (m, o) = message(1);
        assert_eq!(
            b.beat_send(&run(a, 0), Some((m, o))).await.unwrap(),
            BeatSent::Sent,
            "{url}"
        );
        let (m, o) = message(2);
        assert_eq!(
            b.beat_send(&run(a, 0), Some((m, o))).await.unwrap(),
            BeatSent::AlreadySent,
            "{url}"
        );
        // `a` stops renewing (paused); `b` takes over once the lease ran out.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let t = b
            .beat_lease(&schedule, "b", ttl)
            .await
            .unwrap()
            .expect("b leads");
        assert!(t > a, "{url}: token {t} after {a}");
        let (m, o) = message(3);
        assert_eq!(
            b.beat_send(&run(a, 1), Some((m, o))).await.unwrap(),
            BeatSent::NotLeader,
            "{url}: a stale token sends nothing"
        );
        let (m, o) = message(4);
        assert_eq!(
            b.beat_send(&run(t, 1), Some((m, o))).await.unwrap(),
            BeatSent::Sent
        );
        assert_eq!(b.queue_depth(&queue).await.unwrap(), 2, "{url}");
        // A message no queue is bound to receive: an error, and the run is not recorded.
        let (mut m, o) = message(5);
        m.properties.delivery_info.exchange = format!("nowhere-{}", key());
        let err = b.beat_send(&run(t, 2), Some((m, o))).await.unwrap_err();
        assert!(
            err.to_string().contains("no queue is bound"),
            "{url}: {err}"
        );
        let lasts = b.beat_last_runs(&schedule).await.unwrap();
        assert_eq!(lasts, vec![("tick".to_string(), run(t, 1).due)], "{url}");
        b.beat_release(&schedule, "b").await.unwrap();
        assert!(
            b.beat_lease(&schedule, "a", ttl).await.unwrap().is_some(),
            "{url}: released"
        );
        b.purge(&queue).await.unwrap();
    }
}

/// The engine goes away under a leading beat (its redis-server stopped for 2 s): the beat
/// stops sending, takes the lease again when Redis is back, and the runs go on — the one
/// missed meanwhile caught up once, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_rides_through_a_redis_restart() {
    use celeriac_testing::services::RedisServer;
    let Some(mut server) = RedisServer::start("beat_rides_through_a_redis_restart", true) else {
        return;
    };
    let url = format!("{}/0", server.url());
    let k = key();
    let queue = format!("restart-{k}");
    let app = builder_on(&url).task(record_due).build().await.unwrap();
    let w = start(&app, |b| b.queues([queue.as_str()]));
    let sig = record_due::new(k.clone()).queue(queue.as_str());
    let beat = app
        .beat()
        .entry("tick", sig, celeriac::beat::every(0.5))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(beat.run(async move {
        let _ = stopped.await;
    }));
    wait_runs(&k, 3, Duration::from_secs(10)).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    let at_restart = entries(&k).len();
    wait_runs(&k, at_restart + 4, Duration::from_secs(20)).await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    run::<i64>(&app, add::new(1, 1).queue(queue.as_str())).await;
    w.warm().await;
    let got = dues(&k);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a due time ran twice: {got:?}");
}
