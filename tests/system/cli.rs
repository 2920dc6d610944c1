//! The command line a user's binary gets from `celeriac::cli::run`, run as a real process.

use std::io::{BufRead, BufReader};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;

use celeriac_testing::services::ScratchDir;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac-testapp");

/// The test binary, run in `dir` (the default broker is a file in the working directory,
/// so each test gets a directory of its own).
fn app(dir: &ScratchDir) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir.path());
    c.env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERY_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERY_RESULT_BACKEND")
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(30));
    c
}

#[test]
fn help_lists_the_commands() {
    let dir = ScratchDir::new("celeriac-cli-test");
    app(&dir).arg("--help").assert().success().stdout(
        predicate::str::contains("worker")
            .and(predicate::str::contains("call"))
            .and(predicate::str::contains("inspect")),
    );
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    let dir = ScratchDir::new("celeriac-cli-test");
    app(&dir)
        .args(["worker", "--pool", "bogus"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid value 'bogus'"));
    app(&dir)
        .arg("call")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Usage"));
    app(&dir)
        .args(["call", "tasks.add", "--priority", "12"])
        .assert()
        .code(2);
    app(&dir)
        .args(["worker", "-l", "loud"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown log level `loud`"));
}

#[test]
fn runtime_errors_print_one_line_and_exit_1() {
    let dir = ScratchDir::new("celeriac-cli-test");
    let out = app(&dir)
        .args([
            "--broker",
            "reddis://:secret@localhost",
            "inspect",
            "queues",
        ])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        "error: unknown scheme `reddis` in `reddis://:***@localhost`; did you mean `redis`?\n"
    );
}

#[test]
fn bad_argument_values_are_usage_errors() {
    let dir = ScratchDir::new("celeriac-cli-test");
    app(&dir)
        .args(["call", "tasks.add", "--args", "[2, 3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid value '[2, 3' for '--args <ARGS>': not valid JSON",
        ));
    app(&dir)
        .args(["call", "tasks.add", "--args", "{}"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("expected a JSON array"));
    app(&dir)
        .args(["call", "tasks.add", "--kwargs", "[1]"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("expected a JSON object"));
    app(&dir)
        .args(["call", "tasks.add", "--wait=-1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "expected a non-negative number of seconds",
        ));
}

#[test]
fn broker_url_comes_from_the_environment_celeriac_first() {
    let dir = ScratchDir::new("celeriac-cli-test");
    app(&dir)
        .env("CELERY_BROKER_URL", "kafka://celery-var")
        .args(["inspect", "queues"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("kafka://celery-var"));
    app(&dir)
        .env("CELERY_BROKER_URL", "kafka://celery-var")
        .env("CELERIAC_BROKER_URL", "kafka://celeriac-var")
        .args(["inspect", "queues"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("kafka://celeriac-var"));
}

#[test]
fn call_prints_the_task_id_and_result_shows_its_state() {
    let dir = ScratchDir::new("celeriac-cli-test");
    let out = app(&dir)
        .args(["call", "tasks.add", "--args", "[2, 3]", "--countdown", "5"])
        .assert()
        .success()
        .get_output()
        .clone();
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "not a task id: {id:?}");
    // memory:// lives in one process: another process sees no result.
    app(&dir)
        .args(["result", &id])
        .assert()
        .success()
        .stdout("PENDING\n");
    app(&dir)
        .args(["result", &id, "--wait", "0.2"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("did not finish within"));
}

#[test]
fn purge_and_inspect_queues() {
    let dir = ScratchDir::new("celeriac-cli-test");
    app(&dir)
        .args(["purge", "celery", "--yes"])
        .assert()
        .success()
        .stdout("purged 0 messages from `celery`\n");
    app(&dir)
        .args(["inspect", "queues"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("QUEUE"));
}

#[test]
fn worker_prints_the_banner_and_stops_warm_on_sigterm() {
    let mut child = StdCommand::new(BIN)
        .args([
            "--broker",
            "memory://cli-worker",
            "worker",
            "-Q",
            "celery,q2",
            "-c",
            "3",
            "-n",
            "w1@%h",
            "-l",
            "info",
        ])
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERY_BROKER_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut banner = String::new();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("tasks.xsum") {
            break;
        }
    }
    for want in [
        "w1@",
        ".> transport:   memory://cli-worker",
        ".> results:     memory://cli-worker",
        ".> concurrency: 3 (async)",
        ".> celery ",
        ".> q2 ",
        "[tasks]",
        "  . tasks.add",
        "  . tasks.fail",
        "  . tasks.record",
    ] {
        assert!(banner.contains(want), "banner lacks {want:?}:\n{banner}");
    }
    assert!(!banner.contains("%h"), "{banner}");
    let status = StdCommand::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "worker exit {:?}: {stderr}",
        out.status
    );
    assert!(stderr.contains("warm shutdown"), "{stderr}");
    assert!(stderr.contains("worker stopped"), "{stderr}");
}

/// The worker's heartbeat in the log: its counters, per task name, when they change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_logs_its_counters_per_task() {
    let dir = ScratchDir::new("celeriac-cli-test");
    let url = dir.sqlite_url("q.sqlite", "");
    let w = crate::proc::WorkerProcess::spawn(
        &url,
        &["--stats-interval", "0.2", "-n", "beat@test"],
        &[],
    );
    let app = celeriac::App::builder()
        .broker_url(&url)
        .build()
        .await
        .unwrap();
    for sig in [
        celeriac::Signature::new("tasks.add").args(vec![2.into(), 3.into()]),
        celeriac::Signature::new("tasks.fail").args(vec!["x".into()]),
    ] {
        let r = sig.apply_async(&app).await.unwrap();
        let _ = r.wait(Duration::from_secs(10)).await.unwrap();
    }
    w.wait_for_log(
        "beat@test stats: 1 succeeded, 1 failed",
        Duration::from_secs(10),
    );
    let log = w.log();
    assert!(
        log.contains("tasks.add 1/0/0") && log.contains("tasks.fail 0/1/0"),
        "{log}"
    );
}
