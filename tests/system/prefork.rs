//! The prefork pool, with real processes: crashes (abort, segfault) kill only a child,
//! which is replaced; time limits and terminate kill the child; children are recycled by
//! task count and by memory; a worker killed with SIGKILL leaves no child behind; warm
//! shutdown lets a running task finish, cold shutdown kills it and requeues its late-ack
//! message. Issue 14: the pool's socket is private, impostor children are refused, and
//! tasks do not inherit the socket, token or broker URLs.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use celeriac::{Error, Signature};
use celeriac_testing::services::ScratchDir;
use serde_json::{json, Value};

use crate::proc::WorkerProcess;

struct Prefork {
    _dir: ScratchDir,
    url: String,
    worker: WorkerProcess,
    app: celeriac::App,
}

async fn prefork(args: &[&str]) -> Prefork {
    prefork_with_env(args, |_| Vec::new()).await
}

/// A prefork worker with extra environment variables, made from the broker URL.
async fn prefork_with_env(
    args: &[&str],
    env: impl FnOnce(&str) -> Vec<(&'static str, String)>,
) -> Prefork {
    let dir = ScratchDir::new("celeriac-prefork");
    let url = dir.sqlite_url("q.sqlite", "");
    let mut all = vec!["--pool", "prefork"];
    all.extend_from_slice(args);
    let env = env(&url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker = WorkerProcess::spawn(&url, &all, &env);
    let url = url.to_string();
    let app = celeriac::App::builder()
        .broker_url(&url)
        .build()
        .await
        .unwrap();
    Prefork {
        _dir: dir,
        url,
        worker,
        app,
    }
}

impl Prefork {
    async fn call(&self, name: &str, args: Value) -> Result<Value, Error> {
        let sig = Signature::new(name).args(args.as_array().cloned().unwrap_or_default());
        self.run(sig).await
    }

    async fn run(&self, sig: Signature) -> Result<Value, Error> {
        sig.apply_async(&self.app)
            .await?
            .get(Duration::from_secs(30))
            .await
    }
}

/// A task running in a child sends a task through the worker's broker (the child is told
/// the worker's URLs; it does not fall back to a default file in its working directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_sends_tasks_through_the_workers_broker() {
    let p = prefork(&["-c", "1"]).await;
    let sent = p.call("tasks.relay", json!([21])).await.unwrap();
    let sent = sent.as_str().expect("the relayed task's id");
    let sum: i64 = p
        .app
        .async_result(sent)
        .get(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sum, 42);
}

/// The children of `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The Unix socket the worker `pid` listens on for its children: its socket inodes from
/// `/proc/<pid>/fd`, their paths from `/proc/net/unix`.
fn pool_socket(pid: u32) -> PathBuf {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    // Num RefCount Protocol Flags Type St Inode Path
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 8 && inodes.contains(fields[6])).then(|| PathBuf::from(fields[7]))
        })
        .find(|path| path.to_string_lossy().contains("celeriac-prefork"))
        .unwrap_or_else(|| panic!("worker {pid} listens on no celeriac-prefork socket"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_task_kills_only_its_child() {
    let p = prefork(&["-c", "2"]).await;
    let worker_pid = p.worker.pid();
    let before = p
        .call("tasks.pid", json!([]))
        .await
        .unwrap()
        .as_u64()
        .unwrap() as u32;
    assert_ne!(
        before, worker_pid,
        "the task ran in the worker process itself"
    );
    for (task, signal) in [
        ("tasks.abort", "signal 6 (SIGABRT)"),
        ("tasks.segfault", "signal 11 (SIGSEGV)"),
    ] {
        let err = p.call(task, json!([])).await.unwrap_err();
        let exc = err.exception().unwrap();
        assert_eq!(
            (exc.exc_type.as_str(), exc.exc_module.as_deref()),
            ("WorkerLostError", Some("billiard.exceptions"))
        );
        assert!(exc.message().contains(signal), "{exc}");
    }
    // The worker is up, with its children replaced.
    assert_eq!(p.call("tasks.add", json!([2, 3])).await.unwrap(), json!(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while children_of(worker_pid).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "children not replaced: {:?}",
            children_of(worker_pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.worker.log().contains("died running a task"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_in_the_prefork_pool() {
    let p = prefork(&["-c", "1"]).await;
    let t0 = Instant::now();
    let err = p
        .run(
            Signature::new("tasks.spin")
                .args(vec![json!(30.0)])
                .time_limit(0.5),
        )
        .await
        .unwrap_err();
    assert_eq!(err.exception().unwrap().exc_type, "TimeLimitExceeded");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let err = p
        .run(
            Signature::new("tasks.grind")
                .args(vec![json!(30.0)])
                .soft_time_limit(0.3)
                .time_limit(10.0),
        )
        .await
        .unwrap_err();
    assert_eq!(err.exception().unwrap().exc_type, "SoftTimeLimitExceeded");
    assert_eq!(p.call("tasks.add", json!([1, 1])).await.unwrap(), json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_with_terminate_kills_a_running_prefork_task() {
    let p = prefork(&["-c", "1"]).await;
    let r = Signature::new("tasks.spin")
        .args(vec![json!(60.0)])
        .apply_async(&p.app)
        .await
        .unwrap();
    p.worker.wait_for_log(
        &format!("spin[{}] received", r.id()),
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    r.revoke(true).await.unwrap();
    let err = r.get::<Value>(Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, Error::TaskRevoked { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(p.call("tasks.add", json!([1, 1])).await.unwrap(), json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_recycled_by_task_count_and_by_memory() {
    let p = prefork(&["-c", "1", "--max-tasks-per-child", "2"]).await;
    let mut pids = Vec::new();
    for _ in 0..6 {
        pids.push(
            p.call("tasks.pid", json!([]))
                .await
                .unwrap()
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(
        (pids[0], pids[2], pids[4]),
        (pids[1], pids[3], pids[5]),
        "{pids:?}"
    );
    assert!(pids[0] != pids[2] && pids[2] != pids[4], "{pids:?}");

    let p = prefork(&["-c", "1", "--max-memory-per-child", "40000"]).await;
    let mut pids = Vec::new();
    for _ in 0..3 {
        pids.push(
            p.call("tasks.leak", json!([64]))
                .await
                .unwrap()
                .as_u64()
                .unwrap(),
        );
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "a leaking child was not replaced: {pids:?}");
    assert!(p.worker.log().contains("KiB: replacing it"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_leaves_no_child_running() {
    let mut p = prefork(&["-c", "3"]).await;
    let worker_pid = p.worker.pid();
    let r = Signature::new("tasks.spin")
        .args(vec![json!(60.0)])
        .apply_async(&p.app)
        .await
        .unwrap();
    p.worker.wait_for_log(
        &format!("spin[{}] received", r.id()),
        Duration::from_secs(10),
    );
    let children = children_of(worker_pid);
    assert_eq!(children.len(), 3, "{children:?}");
    p.worker.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while children.iter().any(|c| alive(*c)) {
        assert!(
            Instant::now() < deadline,
            "orphans left: {:?}",
            children.iter().filter(|c| alive(**c)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The killed worker could not remove its socket directory; the next prefork worker
    // on this machine does, once it has made its own (or another test's worker did).
    let prefix = format!("celeriac-prefork-{worker_pid}-");
    let left = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    };
    let next = prefork(&["-c", "1"]).await;
    assert_eq!(
        next.call("tasks.add", json!([1, 1])).await.unwrap(),
        json!(2)
    );
    assert!(
        left().is_empty(),
        "socket directory left behind: {:?}",
        left()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_starts_children_as_load_grows() {
    let p = prefork(&["--autoscale", "3,1"]).await;
    let worker_pid = p.worker.pid();
    assert_eq!(children_of(worker_pid).len(), 1, "MIN children at start");
    let results = p
        .app
        .send_many(
            (0..6)
                .map(|_| Signature::new("tasks.spin").args(vec![json!(1.0)]))
                .collect(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while children_of(worker_pid).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the pool did not grow: {:?}",
            children_of(worker_pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in results {
        r.get::<Value>(Duration::from_secs(30)).await.unwrap();
    }
    assert!(children_of(worker_pid).len() <= 3, "more children than MAX");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_finishes_and_cold_shutdown_requeues_prefork_tasks() {
    // Warm: the running task finishes, the waiting one goes back to the queue.
    let mut p = prefork(&["-c", "1", "--shutdown-timeout", "20"]).await;
    let running = Signature::new("tasks.slow_late")
        .args(vec![json!(1.0)])
        .apply_async(&p.app)
        .await
        .unwrap();
    let waiting = Signature::new("tasks.add")
        .args(vec![json!(2), json!(3)])
        .apply_async(&p.app)
        .await
        .unwrap();
    p.worker.wait_for_log(
        &format!("slow_late[{}] received", running.id()),
        Duration::from_secs(10),
    );
    let children = children_of(p.worker.pid());
    assert!(p.worker.terminate().success(), "{}", p.worker.log());
    assert_eq!(running.state().await.unwrap(), celeriac::State::Success);
    assert_eq!(waiting.state().await.unwrap(), celeriac::State::Pending);
    assert_eq!(p.app.broker().queue_depth("celery").await.unwrap(), 1);
    assert!(children.iter().all(|c| !alive(*c)), "children left running");

    // Cold (the shutdown timeout passes): the running late-ack task's child is killed and
    // its message requeued; nothing was half-acknowledged.
    let mut cold = WorkerProcess::spawn(
        &p.url,
        &["--pool", "prefork", "-c", "1", "--shutdown-timeout", "0.5"],
        &[],
    );
    let long = Signature::new("tasks.slow_late")
        .args(vec![json!(60.0)])
        .apply_async(&p.app)
        .await
        .unwrap();
    cold.wait_for_log(
        &format!("slow_late[{}] received", long.id()),
        Duration::from_secs(10),
    );
    assert_eq!(
        waiting.get::<i64>(Duration::from_secs(10)).await.unwrap(),
        5
    );
    let children = children_of(cold.pid());
    let t0 = Instant::now();
    cold.terminate();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(children.iter().all(|c| !alive(*c)), "children left running");
    assert_eq!(long.state().await.unwrap(), celeriac::State::Pending);
    assert_eq!(p.app.broker().queue_depth("celery").await.unwrap(), 1);
    // Redelivered, it runs (and, seeing the redelivery, skips its sleep).
    let _again = WorkerProcess::spawn(&p.url, &["--pool", "prefork", "-c", "1"], &[]);
    assert_eq!(
        long.get::<f64>(Duration::from_secs(20)).await.unwrap(),
        60.0
    );
}

/// Another user cannot reach the socket: it sits in a directory of its own, mode 0700,
/// owned by the worker's user, not in the shared temp directory; stopping the pool
/// removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_the_pool_socket_is_in_a_private_directory_removed_at_shutdown() {
    let mut p = prefork(&["-c", "1"]).await;
    let socket = pool_socket(p.worker.pid());
    let dir = socket
        .parent()
        .expect("the socket's directory")
        .to_path_buf();
    assert_ne!(
        dir,
        std::env::temp_dir(),
        "the socket sits in the shared temp directory"
    );
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{} is not private",
        dir.display()
    );
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        meta.uid(),
        me,
        "{} is not the worker's user's",
        dir.display()
    );
    assert!(p.worker.terminate().success(), "{}", p.worker.log());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// A process of the worker's own user can reach the socket, but cannot pass for a child:
/// a hello with a guessed child number and token, from a process the worker did not
/// start, is refused with a warning, and the pool goes on with its real children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_an_impostor_child_is_refused_and_the_pool_keeps_running_tasks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // One child, replaced after every task: each task makes the worker accept a child.
    let p = prefork(&["-c", "1", "--max-tasks-per-child", "1"]).await;
    let worker_pid = p.worker.pid();
    let socket = pool_socket(worker_pid);
    let mut impostors = Vec::new();
    // Child 1 is running; 2 is the next number the worker will hand out.
    for (child, token) in [(2, "0".repeat(64)), (3, String::new())] {
        let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let hello = json!({"child": child, "pid": std::process::id(), "token": token});
        conn.write_all(format!("{hello}\n").as_bytes())
            .await
            .unwrap();
        impostors.push(conn);
    }
    assert_eq!(p.call("tasks.add", json!([2, 3])).await.unwrap(), json!(5));
    // The worker hangs up on both without sending a task.
    for mut conn in impostors {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got))
            .await
            .expect("the worker kept an impostor's connection open");
        // Closed with the hello unread, the connection may end in a reset instead of EOF.
        if let Err(e) = read {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        assert!(
            got.is_empty(),
            "an impostor was sent: {}",
            String::from_utf8_lossy(&got)
        );
    }
    p.worker.wait_for_log(
        "prefork: refused a connection posing as child",
        Duration::from_secs(10),
    );
    assert!(p.worker.log().contains("is not the new child's pid"));
    // Tasks still run, each in a new child (the impostors took no child's place).
    let mut pids = Vec::new();
    for _ in 0..2 {
        let pid = p.call("tasks.pid", json!([])).await.unwrap();
        pids.push(pid.as_u64().expect("a pid") as u32);
    }
    assert!(
        pids[0] != pids[1] && !pids.contains(&worker_pid),
        "{pids:?}"
    );
}

/// What a task in a child sees of its environment: none of the pool's socket, child
/// number or token, and no broker or backend URL, whether the worker passed it to the
/// child or had it in its own environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_prefork_tasks_do_not_inherit_the_socket_token_or_broker_urls() {
    let p = prefork_with_env(&["-c", "1"], |url| {
        vec![
            ("CELERY_BROKER_URL", url.to_string()),
            ("CELERIAC_BROKER_URL", url.to_string()),
        ]
    })
    .await;
    let seen = p.call("tasks.environ", json!([])).await.unwrap();
    assert_ne!(
        seen["pid"].as_u64(),
        Some(u64::from(p.worker.pid())),
        "the task did not run in a child"
    );
    let vars = seen["vars"].as_object().expect("the task's environment");
    assert!(vars.contains_key("PATH"), "not the environment: {vars:?}");
    let file = p.url.trim_start_matches("sqlite://");
    let leaked: Vec<_> = vars
        .iter()
        .filter(|(k, v)| {
            k.starts_with("CELERIAC_PREFORK_")
                || k.contains("BROKER_URL")
                || k.contains("RESULT_BACKEND")
                || v.as_str().is_some_and(|v| v.contains(file))
        })
        .collect();
    assert!(leaked.is_empty(), "a task inherited {leaked:?}");
}
