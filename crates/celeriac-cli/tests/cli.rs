//! The `celeriac` binary, run as a real process in a fresh directory: every command, the
//! embedded default, environment fallbacks, many tasks from a file, and a Python Celery
//! worker on Redis answering it.

use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use celeriac::{TaskError, TaskResult};
use celeriac_testing::services::{RedisScope, ScratchDir};
use predicates::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

fn celeriac(dir: &ScratchDir) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir.path())
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERY_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERY_RESULT_BACKEND")
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(60));
    c
}

#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

#[celeriac::task(name = "tasks.fail")]
async fn fail(message: String) -> TaskResult<()> {
    Err(TaskError::value_error(message))
}

/// A worker in this test process, on the database the CLI uses.
async fn worker(url: &str) -> celeriac::ShutdownHandle {
    let app = celeriac::App::builder()
        .broker_url(url)
        .task(add)
        .task(fail)
        .build()
        .await
        .unwrap();
    let w = app.worker().build();
    let stop = w.shutdown_handle();
    tokio::spawn(w.run());
    stop
}

#[test]
fn help_and_usage_errors() {
    let dir = ScratchDir::new("celeriac-tool");
    celeriac(&dir)
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("call").and(predicate::str::contains("status")));
    celeriac(&dir).arg("worker").assert().code(2);
    celeriac(&dir)
        .args(["call"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Usage"));
    celeriac(&dir)
        .args(["call", "t", "--args", "{nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not valid JSON"));
}

#[test]
fn defaults_to_the_embedded_database_and_says_where() {
    let dir = ScratchDir::new("celeriac-tool");
    let path = dir.path().join("celeriac.sqlite");
    celeriac(&dir)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "broker:  sqlite://{}",
            path.display()
        )))
        .stderr(predicate::str::contains(format!(
            "no broker configured; using sqlite://{}",
            path.display()
        )));
    assert!(path.exists());
}

#[test]
fn broker_comes_from_flags_then_celeriac_then_celery_variables() {
    let dir = ScratchDir::new("celeriac-tool");
    let a = dir.sqlite_url("a.sqlite", "");
    let b = dir.sqlite_url("b.sqlite", "");
    celeriac(&dir)
        .env("CELERY_BROKER_URL", &a)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("a.sqlite"));
    celeriac(&dir)
        .env("CELERY_BROKER_URL", &a)
        .env("CELERIAC_BROKER_URL", &b)
        .arg("status")
        .assert()
        .stdout(predicate::str::contains("b.sqlite"));
    celeriac(&dir)
        .env("CELERIAC_BROKER_URL", &b)
        .args(["--broker", &a, "status"])
        .assert()
        .stdout(predicate::str::contains("a.sqlite"));
    let out = celeriac(&dir)
        .args(["--broker", "reddis://:pw@localhost", "status"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: unknown scheme `reddis` in `reddis://:***@localhost`; did you mean `redis`?\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_result_inspect_and_purge_against_a_worker_in_another_process() {
    let dir = ScratchDir::new("celeriac-tool");
    let url = dir.sqlite_url("celeriac.sqlite", "");
    let stop = worker(&url).await;
    let d = &dir;
    let run = |args: Vec<&'static str>| {
        let mut c = celeriac(d);
        c.args(args);
        async move {
            tokio::task::spawn_blocking(move || c.assert().get_output().clone())
                .await
                .unwrap()
        }
    };
    let out = run(vec![
        "call",
        "tasks.add",
        "--args",
        "[2, 3]",
        "--wait",
        "20",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5\n");
    let out = run(vec![
        "call",
        "tasks.fail",
        "--args",
        "[\"boom\"]",
        "--wait",
        "20",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FAILURE\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ValueError: boom"),
        "{out:?}"
    );
    let out = run(vec!["call", "tasks.add", "--args", "[1, 1]"]).await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut c = celeriac(d);
    c.args(["result", &id, "--wait", "20"]);
    let out = tokio::task::spawn_blocking(move || c.assert().get_output().clone())
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n");
    stop.warm();
    // With no worker, messages wait; inspect counts them, purge deletes them.
    for _ in 0..3 {
        run(vec![
            "call",
            "tasks.add",
            "--args",
            "[1, 1]",
            "--queue",
            "later",
        ])
        .await;
    }
    let out = run(vec!["inspect", "queues"]).await;
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.starts_with("QUEUE")
            && table
                .lines()
                .any(|l| l.starts_with("later") && l.ends_with(" 3")),
        "{table}"
    );
    let out = run(vec!["purge", "later"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "no --yes and no terminal: refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("without --yes"));
    let out = run(vec!["purge", "later", "--yes"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "purged 3 messages from `later`\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_many_tasks_from_a_file_and_wait_for_them() {
    let dir = ScratchDir::new("celeriac-tool");
    let url = dir.sqlite_url("celeriac.sqlite", "");
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "{{\"name\": \"tasks.add\", \"args\": [{i}, 1], \"priority\": {}}}\n",
                i % 10
            )
        })
        .collect();
    std::fs::write(dir.path().join("tasks.jsonl"), lines).unwrap();
    let stop = worker(&url).await;
    let mut c = celeriac(&dir);
    c.args(["call", "--from-file", "tasks.jsonl", "--wait", "60"]);
    let out = tokio::task::spawn_blocking(move || c.assert().get_output().clone())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut sums: Vec<i64> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["state"], "SUCCESS", "{l}");
            v["result"].as_i64().unwrap()
        })
        .collect();
    sums.sort_unstable();
    assert_eq!(sums, (1..=300).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Not a terminal: plain progress lines, then a summary.
    assert!(
        stderr.contains("sent 300/300") && stderr.contains("finished 300/300"),
        "{stderr}"
    );
    assert!(stderr.contains("300 succeeded, 0 failed"), "{stderr}");
    stop.warm();
    // A bad line is reported with its number, and nothing is sent.
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"name\": \"tasks.add\"}\n{\"args\": [1]}\n",
    )
    .unwrap();
    celeriac(&dir)
        .args(["call", "--from-file", "bad.jsonl"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error: line 2: no task `name`"));
}

/// `celeriac call ... --wait` with a Redis URL runs on a stock Python Celery worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_python_celery_worker_on_redis() {
    let Some(scope) = RedisScope::new("calls_a_python_celery_worker_on_redis") else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(venv) =
        celeriac_testing::python::celery_venv("calls_a_python_celery_worker_on_redis", &root)
    else {
        return;
    };
    let broker = format!("{}/0", scope.base);
    let mut py = StdCommand::new(venv.celery())
        .args([
            "-A",
            "celeriac_interop.tasks",
            "worker",
            "-Q",
            "celery",
            "--pool",
            "threads",
            "-c",
            "2",
        ])
        .args([
            "-n",
            "py@tool",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "warning",
        ])
        .env("CELERIAC_INTEROP_BROKER", &broker)
        .env("CELERIAC_INTEROP_KEYPREFIX", &scope.prefix)
        .env("PYTHONPATH", &venv.harness)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = ScratchDir::new("celeriac-tool");
    let mut c = celeriac(&dir);
    c.args([
        "--broker",
        &scope.url(""),
        "call",
        "tasks.add",
        "--args",
        "[2, 3]",
        "--wait",
        "30",
    ]);
    let out = tokio::task::spawn_blocking(move || c.assert().get_output().clone())
        .await
        .unwrap();
    let _ = py.kill();
    let _ = py.wait();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_revoke_talk_to_running_workers() {
    let dir = ScratchDir::new("celeriac-tool");
    let url = dir.sqlite_url("celeriac.sqlite", "");
    let app = celeriac::App::builder()
        .broker_url(&url)
        .task(add)
        .build()
        .await
        .unwrap();
    let w = app.worker().name("inspected@test").build();
    let stop = w.shutdown_handle();
    tokio::spawn(w.run());
    let d = &dir;
    let run = |args: Vec<String>| {
        let mut c = celeriac(d);
        c.args(args);
        async move {
            tokio::task::spawn_blocking(move || c.assert().get_output().clone())
                .await
                .unwrap()
        }
    };
    let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let mut out = run(args("inspect ping --timeout 0.5")).await;
    for _ in 0..20 {
        if out.status.success() {
            break;
        }
        out = run(args("inspect ping --timeout 0.5")).await;
    }
    // Celery's layout: the node, OK, the reply indented, then how many answered.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "->  inspected@test: OK\n        pong\n\n1 node online.\n"
    );
    let out = run(args("inspect stats --timeout 0.5 --json")).await;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(
        stats["inspected@test"]["pool"]["max-concurrency"]
            .as_u64()
            .map(|n| n > 0),
        Some(true),
        "{stats}"
    );
    let r = add::new(1, 2)
        .countdown(2.0)
        .apply_async(&app)
        .await
        .unwrap();
    let out = run(vec!["revoke".into(), r.id().to_string()]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "revoked 1 task\n");
    let err = r.get::<i64>(Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, celeriac::Error::TaskRevoked { .. }), "{err}");
    // No node answered: Celery's message, and its exit status (EX_UNAVAILABLE).
    let out = run(args("inspect ping --timeout 0.3 -d nobody@nowhere")).await;
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().last(),
        Some("Error: No nodes replied within time constraint"),
        "{stderr}"
    );
    stop.warm();
}
