//! A disk that really fills up under the SQLite broker, and empties again: every task sent
//! runs once, and the worker goes on once there is room.
//!
//! The disk is a 16 MiB tmpfs of the test's own. Mounting one needs no root inside a user
//! and mount namespace (`unshare --user --map-root-user --mount`), so the test runs its own
//! binary again there, with only itself selected and `CELERIAC_TEST_DISKFULL=1` set; that
//! run mounts the tmpfs and does the work, and the mount goes away with the namespace.
//! Where namespaces are not allowed (some containers) the test is skipped loudly, or fails
//! under `CELERIAC_REQUIRE_SERVICES=1`.

use std::io::Write;
use std::time::{Duration, Instant};

use celeriac_testing::services::{services_required, ScratchDir};

use crate::support::*;

/// Set in the run inside the namespace.
const INNER: &str = "CELERIAC_TEST_DISKFULL";
/// Printed by the inner run when it could not mount its disk.
const NO_DISK: &str = "DISKFULL-NO-DISK: ";
/// The size of the disk, MiB: far below the 40 MiB write-ahead log window the broker
/// would use on a roomy disk.
const DISK_MIB: u64 = 16;
/// Tasks sent: their log writes add up to several times the disk.
const TASKS: i64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_broker_rides_through_a_full_disk() {
    if std::env::var_os(INNER).is_some() {
        inner().await;
    } else {
        outer().await;
    }
}

/// Runs this test again in a namespace of its own and reports what it said.
async fn outer() {
    let test = "diskfull::sqlite_broker_rides_through_a_full_disk";
    let exe = std::env::current_exe().expect("the test binary");
    let out = tokio::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount"])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .kill_on_drop(true)
        .output()
        .await;
    let skip = |why: String| {
        if services_required() {
            panic!("{test}: {why}, and CELERIAC_REQUIRE_SERVICES=1");
        }
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => return skip(format!("cannot run `unshare` ({e})")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(why) = stdout.lines().find_map(|l| l.strip_prefix(NO_DISK)) {
        return skip(format!("cannot mount a tmpfs in a namespace: {why}"));
    }
    if stdout.contains("1 passed") {
        // What the run measured, in this test's output (`--nocapture`).
        for line in stdout.lines().filter(|l| l.contains("tasks sent in")) {
            println!("{line}");
        }
    } else {
        if stderr.starts_with("unshare:") {
            return skip(format!(
                "no user namespace here ({})",
                stderr.lines().next().unwrap_or_default()
            ));
        }
        panic!(
            "the run on a small disk failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        );
    }
}

/// Inside the namespace: the disk, a worker on it, and tasks sent while it fills.
async fn inner() {
    show_logs();
    let disk = ScratchDir::new("celeriac-diskfull");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={DISK_MIB}m"), "tmpfs"])
        .arg(disk.path())
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
            println!("{NO_DISK}mount: {why} ({})", o.status);
            return;
        }
        Err(e) => {
            println!("{NO_DISK}cannot run mount: {e}");
            return;
        }
    }
    let app = builder_on(&disk.sqlite_url("q.sqlite", ""))
        .build()
        .await
        .unwrap();
    let w = start(&app, |b| b);
    let k = key();
    let filler = disk.path().join("filler");
    let t0 = Instant::now();
    // A backlog, so that the worker is claiming and acknowledging while the disk is full.
    let backlog: Vec<_> = (0..TASKS / 4)
        .map(|n| log_task::new(k.clone(), n))
        .collect();
    app.send_many(backlog).await.expect("backlog sent");
    // Fill what is left, hold it 2 s, free it; sends meanwhile wait and retry.
    let filled = celeriac_testing::disk::fill(&filler);
    let full = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        std::fs::remove_file(&filler).expect("filler removed");
    });
    for n in TASKS / 4..TASKS {
        log_task::new(k.clone(), n)
            .apply_async(&app)
            .await
            .unwrap_or_else(|e| panic!("task {n} not sent ({:?} in): {e}", t0.elapsed()));
    }
    full.join().expect("filler thread");
    println!(
        "{TASKS} tasks sent in {:.1?}; the disk was filled with {:.1} MiB for 2 s",
        t0.elapsed(),
        filled as f64 / 1_048_576.0
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while (entries(&k).len() as i64) < TASKS {
        assert!(
            Instant::now() < deadline,
            "{} of {TASKS} tasks ran within 60 s of the last send",
            entries(&k).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = w.warm().await;
    let mut ran: Vec<i64> = entries(&k).iter().filter_map(|v| v.as_i64()).collect();
    ran.sort_unstable();
    let once: Vec<i64> = (0..TASKS).collect();
    assert!(
        ran == once,
        "tasks ran other than once each: {} runs",
        ran.len()
    );
    assert_eq!(report.stats.succeeded, TASKS as u64);
    // Nothing left behind, waiting or claimed: every message was acknowledged (an ack
    // given up on a full disk would leave its message claimed, to run again later).
    let db = rusqlite::Connection::open(disk.path().join("q.sqlite")).unwrap();
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "messages left in the file after the run");
}
