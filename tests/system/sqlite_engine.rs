//! The embedded SQLite engine end to end: the task set, several worker processes sharing
//! one file with no loss or duplicate, a killed worker's tasks running again, files that
//! cannot be used, and a full disk.

use std::process::Command;
use std::time::{Duration, Instant};

use celeriac::{Error, Signature, State};
use celeriac_testing::services::ScratchDir;
use serde_json::json;

use crate::proc::{WorkerProcess, BIN};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_the_task_set_on_sqlite() {
    let dir = ScratchDir::new("celeriac-sqlite-sys");
    let app = builder_on(&dir.sqlite_url("q.sqlite", ""))
        .build()
        .await
        .unwrap();
    assert!(
        app.broker_url().starts_with("sqlite:///"),
        "{}",
        app.broker_url()
    );
    let w = start(&app, |b| b);
    assert_eq!(run::<i64>(&app, add::new(2, 3)).await, 5);
    assert_eq!(
        exception_of(&fail::new("boom".into()).apply_async(&app).await.unwrap())
            .await
            .exc_type,
        "ValueError"
    );
    let v: serde_json::Value = run(&app, flaky::new(key(), 2)).await;
    assert_eq!(v["attempt"], json!(3));
    let t0 = Instant::now();
    let later = add::new(1, 1)
        .countdown(0.5)
        .apply_async(&app)
        .await
        .unwrap();
    // Native delay: the message waits in the file, not in the worker.
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
    assert_eq!(later.get::<i64>(WAIT).await.unwrap(), 2);
    assert!(t0.elapsed() >= Duration::from_millis(500));
    let r = add::new(1, 1)
        .expires(-1.0)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r.wait(WAIT).await.unwrap().status, State::Revoked);
    let r = app
        .send_task("tasks.nope", json!([]), json!({}))
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "NotRegistered");
    let report = w.warm().await;
    assert_eq!(report.stats.succeeded, 3);
}

/// A worker killed in the middle of an `acks_late` task: once its heartbeats stop, a live
/// worker takes the task back and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_task_runs_again_elsewhere() {
    let dir = ScratchDir::new("celeriac-sqlite-kill");
    let url = dir.sqlite_url("q.sqlite", "heartbeat=0.3&dead_after=1.5");
    let app = builder_on(&url).build().await.unwrap();
    let mut doomed = WorkerProcess::spawn(&url, &["-n", "doomed@test"], &[]);
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
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

fn testapp(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--broker", url])
        .args(args)
        .output()
        .unwrap()
}

fn one_error_line(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[tokio::test]
async fn files_that_cannot_be_used_are_refused_with_one_line_naming_them() {
    let dir = ScratchDir::new("celeriac-sqlite-bad");
    let p = |name: &str| dir.path().join(name);

    std::fs::write(p("text.sqlite"), "hello, this is not a database at all\n").unwrap();
    let e = one_error_line(&testapp(
        &format!("sqlite://{}", p("text.sqlite").display()),
        &["inspect", "queues"],
    ));
    assert!(
        e.contains(&p("text.sqlite").display().to_string())
            && e.contains("is not an SQLite database"),
        "{e}"
    );

    {
        let c = rusqlite::Connection::open(p("other.sqlite")).unwrap();
        c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            .unwrap();
    }
    let e = one_error_line(&testapp(
        &format!("sqlite://{}", p("other.sqlite").display()),
        &["inspect", "queues"],
    ));
    assert!(
        e.contains("is not a celeriac database") && e.contains("users"),
        "{e}"
    );

    // A real celeriac database, then damaged.
    let url = format!("sqlite://{}", p("corrupt.sqlite").display());
    {
        let app = builder_on(&url).build().await.unwrap();
        let sigs = (0..300)
            .map(|i| add::new(i, i).set_option("kwargs_pad", "x".repeat(400)))
            .collect();
        app.send_many(sigs).await.unwrap();
    }
    {
        // Checkpoint the WAL into the main file, then overwrite its pages after the first.
        let c = rusqlite::Connection::open(p("corrupt.sqlite")).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let mut bytes = std::fs::read(p("corrupt.sqlite")).unwrap();
    assert!(bytes.len() > 8192);
    for (i, b) in bytes[4096..].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(p("corrupt.sqlite"), bytes).unwrap();
    let e = one_error_line(&testapp(&url, &["inspect", "queues"]));
    assert!(e.contains("corrupt") || e.contains("malformed"), "{e}");

    {
        let c = rusqlite::Connection::open(p("newer.sqlite")).unwrap();
        c.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 99; CREATE TABLE messages (id INTEGER)",
            celeriac_sqlite::APPLICATION_ID
        ))
        .unwrap();
    }
    let e = one_error_line(&testapp(
        &format!("sqlite://{}", p("newer.sqlite").display()),
        &["inspect", "queues"],
    ));
    assert!(e.contains("newer celeriac (schema 99"), "{e}");

    // Read-only: root writes anyway, so the check runs as `nobody` when we are root.
    let ro = p("readonly.sqlite");
    {
        let app = builder_on(&format!("sqlite://{}", ro.display()))
            .build()
            .await
            .unwrap();
        drop(app);
        let c = rusqlite::Connection::open(&ro).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE")
            .unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = format!("sqlite://{}", ro.display());
    let out = if is_root() {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "--broker",
                &url,
                "inspect",
                "queues",
            ])
            .output()
            .unwrap()
    } else {
        testapp(&url, &["inspect", "queues"])
    };
    let e = one_error_line(&out);
    assert!(
        e.contains(&ro.display().to_string()) && e.contains("read-only"),
        "{e}"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A full disk (here: the file's `max_size`) fails the publish with a clear error and
/// leaves nothing half-written; once there is room again, publishing works.
#[tokio::test]
async fn full_disk_fails_the_publish_cleanly() {
    let dir = ScratchDir::new("celeriac-sqlite-full");
    let url = dir.sqlite_url("q.sqlite", "max_size=262144");
    let app = builder_on(&url).publish_retry(None).build().await.unwrap();
    let pad = "x".repeat(2000);
    let mut sent = 0u64;
    let err = loop {
        match add::new(1, 1)
            .set_option("headers", json!({"pad": pad}))
            .apply_async(&app)
            .await
        {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10_000, "the size limit never hit");
    };
    let text = err.to_string();
    assert!(
        text.contains("database or disk is full") && text.contains("q.sqlite"),
        "{text}"
    );
    assert!(matches!(err, Error::Publish(_)), "{err:?}");
    assert_eq!(
        app.broker().queue_depth("celery").await.unwrap(),
        sent,
        "a failed publish left a row"
    );
    // A batch that does not fit fails whole.
    let batch: Vec<Signature> = (0..50)
        .map(|_| add::new(1, 1).set_option("headers", json!({"pad": pad})))
        .collect();
    assert!(app.send_many(batch).await.is_err());
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), sent);
    assert_eq!(app.broker().purge("celery").await.unwrap(), sent);
    add::new(1, 1)
        .apply_async(&app)
        .await
        .expect("room again after the purge");
}
