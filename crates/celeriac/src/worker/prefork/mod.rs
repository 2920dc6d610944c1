//! The prefork pool: tasks run in child processes the worker starts from its own binary
//! and talks to over a Unix socket, one task per child at a time; the worker's message
//! loop (consuming, acking, storing results) stays in the parent.
//!
//! What that buys: a task that aborts, segfaults, or is killed takes only its child with
//! it — the task fails with `WorkerLostError` (Celery's name and module), the child is
//! replaced, the worker goes on. A hard time limit or `revoke(terminate=true)` kills the
//! child. Children are recycled after `max_tasks_per_child` tasks or when their resident
//! memory passes `max_memory_per_child`, which bounds leaks. Children exit by themselves
//! when the socket closes, so killing the worker (even with SIGKILL) leaves none behind.
//!
//! Security model: the socket sits in a fresh directory of mode 0700, so other users cannot
//! reach it. A connection is taken as a child only if the kernel (`SO_PEERCRED`) says it
//! comes from the worker's user and from the very process just started, and its hello
//! carries that process's one-time 256-bit token; anything else is refused with a warning.
//! Children remove the socket, token and URL variables from their environment at once.
//!
//! The binary must route child mode: [`crate::cli::run`] does; other programs call
//! [`run_child_if_requested`] first thing in `main`.

mod child;
mod handshake;
mod wire;

pub use child::{run_child_if_requested, CHILD_ENV, SOCKET_ENV};

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use celeriac_core::protocol::{envelope, TaskMessage};
use celeriac_core::ExceptionInfo;

use crate::context::RequestDeliveryInfo;
use crate::error::{Failure, TaskError};
use crate::execute::{time_limit_exceeded, Limits};
use crate::task::TaskOutput;
use handshake::{Expected, SocketDir, Token};
use wire::{Hello, Request, Response};

/// Recycling limits for children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PreforkOptions {
    /// Replace a child after this many tasks.
    pub(crate) max_tasks_per_child: Option<u64>,
    /// Replace a child whose resident memory passes this many KiB after a task.
    pub(crate) max_memory_per_child_kb: Option<u64>,
}

/// How long a new child has to connect back.
const CHILD_START: Duration = Duration::from_secs(30);

/// A child's entry in the pool's set of pids, removed when the child is dropped.
struct PidEntry {
    pid: u32,
    pids: Arc<Mutex<std::collections::BTreeSet<u32>>>,
}

impl Drop for PidEntry {
    fn drop(&mut self) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pid);
    }
}

struct ChildProc {
    id: u64,
    pid: u32,
    _entry: PidEntry,
    process: tokio::process::Child,
    reader: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    done: u64,
}

/// What happened to one task sent to a child.
pub(crate) enum Ran {
    /// The child answered.
    Output(TaskOutput),
    /// The task was stopped on request (revoke with terminate); its child was killed.
    Terminated,
}

/// The children of one worker.
pub(crate) struct PreforkPool {
    exe: PathBuf,
    /// The worker's broker and backend URLs, for the children.
    urls: (String, String),
    /// The private directory holding the socket; removed with the pool.
    socket_dir: SocketDir,
    listener: UnixListener,
    /// Children are started one at a time, so the next connection is the new child's.
    spawning: tokio::sync::Mutex<()>,
    idle: Mutex<Vec<ChildProc>>,
    /// Signalled when a child becomes idle.
    returned: Notify,
    /// How many children may exist (the worker's concurrency; `pool_grow` and
    /// `pool_shrink` change it).
    capacity: std::sync::atomic::AtomicUsize,
    /// The pids of the children alive (for `inspect stats`).
    pids: Arc<Mutex<std::collections::BTreeSet<u32>>>,
    /// Children alive or being started.
    live: std::sync::atomic::AtomicUsize,
    next_child: AtomicU64,
    next_seq: AtomicU64,
    options: PreforkOptions,
}

impl std::fmt::Debug for PreforkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreforkPool")
            .field("socket", &self.socket_dir.socket())
            .finish_non_exhaustive()
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// Celery's record for a task whose pool process died under it.
fn worker_lost(status: Option<std::process::ExitStatus>, seq: u64) -> TaskError {
    let how = match status {
        Some(s) => match (s.signal(), s.code()) {
            (Some(sig), _) => format!("signal {sig} ({})", signal_name(sig)),
            (None, Some(code)) => format!("exitcode {code}"),
            _ => "unknown".into(),
        },
        None => "unknown".into(),
    };
    TaskError::Failed(Failure {
        exception: ExceptionInfo {
            exc_type: "WorkerLostError".into(),
            exc_message: json!([format!("Worker exited prematurely: {how} Job: {seq}.")]),
            exc_module: Some("billiard.exceptions".into()),
        },
        traceback: None,
        retryable: false,
    })
}

/// Resident memory of a process in KiB (Linux `/proc`), if readable.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl PreforkPool {
    /// Binds the socket and starts `initial` children, of at most `capacity`.
    pub(crate) async fn start(
        options: PreforkOptions,
        initial: usize,
        capacity: usize,
        urls: (String, String),
    ) -> Result<Self, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
        let socket_dir = SocketDir::create()
            .map_err(|e| format!("cannot create a private directory for the socket: {e}"))?;
        let listener = UnixListener::bind(socket_dir.socket())
            .map_err(|e| format!("cannot listen on {}: {e}", socket_dir.socket().display()))?;
        let pool = Self {
            exe,
            urls,
            socket_dir,
            listener,
            spawning: tokio::sync::Mutex::new(()),
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            capacity: std::sync::atomic::AtomicUsize::new(capacity.max(initial).max(1)),
            pids: Arc::default(),
            live: std::sync::atomic::AtomicUsize::new(0),
            next_child: AtomicU64::new(1),
            next_seq: AtomicU64::new(1),
            options,
        };
        for _ in 0..initial {
            pool.live.fetch_add(1, Ordering::SeqCst);
            let child = pool.spawn().await?;
            pool.lock_idle().push(child);
        }
        info!("prefork pool: {initial} child process(es) started");
        Ok(pool)
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<ChildProc>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn spawn(&self) -> Result<ChildProc, String> {
        let _one_at_a_time = self.spawning.lock().await;
        let id = self.next_child.fetch_add(1, Ordering::Relaxed);
        let token = Token::new();
        // The token goes in the environment: only the worker's user (and root) can read
        // another process's environment, the child removes it before running any task,
        // and it is good for one connection from that very process anyway.
        let mut command = tokio::process::Command::new(&self.exe);
        for name in child::INHERITED_URL_ENV {
            command.env_remove(name);
        }
        let process = command
            .env(SOCKET_ENV, self.socket_dir.socket())
            .env(CHILD_ENV, id.to_string())
            .env(child::TOKEN_ENV, token.as_str())
            .env(child::BROKER_ENV, &self.urls.0)
            .env(child::BACKEND_ENV, &self.urls.1)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a child process ({}): {e}", self.exe.display()))?;
        let pid = process
            .id()
            .ok_or_else(|| format!("child process {id} exited at once"))?;
        let mut expected = Expected::new(id, pid, self.socket_dir.uid(), token);
        // Any other connection (an impostor, or a late child given up on) is refused and
        // the wait goes on: it takes no room in the pool.
        let connect = async {
            loop {
                let (stream, _) = self
                    .listener
                    .accept()
                    .await
                    .map_err(|e| format!("accepting a child's connection failed: {e}"))?;
                match stream.peer_cred() {
                    Ok(cred) => match expected.check_peer(&cred) {
                        Ok(()) => {}
                        Err(refusal) => {
                            warn!("prefork: refused a connection posing as child {id}: {refusal}");
                            continue;
                        }
                    },
                    Err(e) => {
                        warn!("prefork: refused a connection posing as child {id}: no peer credentials ({e})");
                        continue;
                    }
                }
                let (read, writer) = stream.into_split();
                let mut reader = BufReader::new(read).lines();
                let hello = reader.next_line().await.ok().flatten();
                let hello = hello.and_then(|l| serde_json::from_str::<Hello>(&l).ok());
                match expected.admit(hello.as_ref()) {
                    Ok(()) => return Ok::<_, String>((reader, writer)),
                    Err(refusal) => {
                        warn!("prefork: refused a connection posing as child {id}: {refusal}")
                    }
                }
            }
        };
        let (reader, writer) = tokio::time::timeout(CHILD_START, connect)
            .await
            .map_err(|_| format!("child process {pid} did not connect within {CHILD_START:?}"))??;
        debug!("prefork child {id} (pid {pid}) ready");
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        Ok(ChildProc {
            id,
            pid,
            _entry: PidEntry {
                pid,
                pids: self.pids.clone(),
            },
            process,
            reader,
            writer,
            done: 0,
        })
    }

    /// Reserves room for one more child, if the pool is not full.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity.load(Ordering::SeqCst)).then_some(n + 1)
            })
            .is_ok()
    }

    /// A child is gone (or was never started): its room is free.
    fn gone(&self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// An idle child, a new one if there is room, or the next to come back.
    async fn take(&self) -> Result<ChildProc, String> {
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(c) = self.lock_idle().pop() {
                return Ok(c);
            }
            if self.reserve() {
                return self.spawn().await.inspect_err(|_| self.gone());
            }
            returned.await;
        }
    }

    fn put_idle(&self, child: ChildProc) {
        self.lock_idle().push(child);
        self.returned.notify_one();
    }

    /// Starts a child in the background to take the place of one that is gone.
    fn replace(self: &Arc<Self>) {
        self.gone();
        if !self.reserve() {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            match pool.spawn().await {
                Ok(child) => pool.put_idle(child),
                Err(e) => {
                    pool.gone();
                    warn!("prefork: could not replace a child ({e}); will retry on demand");
                }
            }
        });
    }

    /// Puts a child back, or recycles it (and starts its successor) when it reached its
    /// limits.
    fn give_back(self: &Arc<Self>, child: ChildProc) {
        let tasks_out = self
            .options
            .max_tasks_per_child
            .is_some_and(|m| child.done >= m);
        let memory_out = self
            .options
            .max_memory_per_child_kb
            .and_then(|max| rss_kb(child.pid).filter(|kb| *kb > max).map(|kb| (kb, max)));
        if tasks_out || memory_out.is_some() {
            match memory_out {
                Some((kb, max)) => info!(
                    "prefork child {} (pid {}) uses {kb} KiB > {max} KiB: replacing it",
                    child.id, child.pid
                ),
                None => info!(
                    "prefork child {} (pid {}) ran {} tasks: replacing it",
                    child.id, child.pid, child.done
                ),
            }
            retire(child);
            self.replace();
            return;
        }
        if self.live.load(Ordering::SeqCst) > self.capacity.load(Ordering::SeqCst) {
            debug!(
                "prefork: retiring child {} (pid {}) as the pool shrank",
                child.id, child.pid
            );
            retire(child);
            self.gone();
            return;
        }
        self.put_idle(child);
    }

    /// Runs one task in a child: sends the message, waits for the answer, the hard time
    /// limit, or `terminate`, whichever comes first.
    #[allow(clippy::too_many_arguments)] // one request's fields; a struct would only rename them
    pub(crate) async fn run(
        self: &Arc<Self>,
        msg: &TaskMessage,
        delivery: &RequestDeliveryInfo,
        hostname: &str,
        max_retries: Option<u32>,
        hard: Option<f64>,
        soft: Option<f64>,
        terminate: &Notify,
    ) -> Ran {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut child = match self.take().await {
            Ok(c) => c,
            Err(e) => {
                warn!("prefork: {e}");
                return Ran::Output(Err(TaskError::with_module(
                    "WorkerLostError",
                    "billiard.exceptions",
                    format!("no pool process to run the task: {e}"),
                )));
            }
        };
        let envelope_json: Value =
            serde_json::from_slice(&envelope::encode(&msg.encode(), "prefork"))
                .unwrap_or(Value::Null);
        let request = Request {
            seq,
            envelope: envelope_json,
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            priority: delivery.priority,
            redelivered: delivery.redelivered,
            hostname: hostname.to_string(),
            max_retries,
            soft_time_limit: soft,
        };
        let mut line = serde_json::to_vec(&request).unwrap_or_default();
        line.push(b'\n');
        if child.writer.write_all(&line).await.is_err() {
            return Ran::Output(Err(self.lost(child, seq).await));
        }
        let limit = async {
            match hard {
                Some(secs) => tokio::time::sleep(Limits::duration(secs)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            answer = child.reader.next_line() => match answer {
                Ok(Some(text)) => match serde_json::from_str::<Response>(&text) {
                    Ok(resp) if resp.seq == seq => {
                        child.done += 1;
                        self.give_back(child);
                        Ran::Output(resp.output.into())
                    }
                    _ => {
                        warn!("prefork child {} answered out of turn; replacing it", child.id);
                        retire(child);
                        self.replace();
                        Ran::Output(Err(TaskError::with_module(
                            "WorkerLostError",
                            "billiard.exceptions",
                            "the pool process answered out of turn",
                        )))
                    }
                },
                _ => Ran::Output(Err(self.lost(child, seq).await)),
            },
            _ = limit => {
                let secs = hard.unwrap_or_default();
                warn!("prefork child {} (pid {}): hard time limit ({secs}s) exceeded; killed", child.id, child.pid);
                kill(child).await;
                self.replace();
                Ran::Output(Err(time_limit_exceeded(secs)))
            }
            _ = terminate.notified() => {
                info!("prefork child {} (pid {}): terminated on request", child.id, child.pid);
                kill(child).await;
                self.replace();
                Ran::Terminated
            }
        }
    }

    /// The child died under a task: collect how, report it as Celery does, replace it.
    async fn lost(self: &Arc<Self>, mut child: ChildProc, seq: u64) -> TaskError {
        let status = tokio::time::timeout(Duration::from_secs(5), child.process.wait())
            .await
            .ok()
            .and_then(Result::ok);
        let error = worker_lost(status, seq);
        warn!(
            "prefork child {} (pid {}) died running a task: {}",
            child.id,
            child.pid,
            error
                .exception()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        self.replace();
        error
    }

    /// The pids of the children alive.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Lets the pool hold up to `n` children (`pool_grow`, `pool_shrink`, `autoscale`):
    /// new ones start when tasks need them; idle ones past `n` are retired now, busy
    /// ones when they come back.
    pub(crate) fn set_capacity(&self, n: usize) {
        self.capacity.store(n.max(1), Ordering::SeqCst);
        self.shrink_to(n);
    }

    /// Retires idle children until at most `n` are alive (autoscaling down).
    pub(crate) fn shrink_to(&self, n: usize) {
        while self.live.load(Ordering::SeqCst) > n.max(1) {
            let Some(child) = self.lock_idle().pop() else {
                return;
            };
            debug!(
                "prefork: retiring child {} (pid {}) as the pool shrinks",
                child.id, child.pid
            );
            retire(child);
            self.gone();
        }
    }

    /// Stops every idle child (running ones stop when their tasks are abandoned) and waits
    /// for them to exit, so none outlives the worker.
    pub(crate) async fn shutdown(&self) {
        let children: Vec<ChildProc> = self.lock_idle().drain(..).collect();
        futures::future::join_all(children.into_iter().map(stop)).await;
        self.socket_dir.remove();
    }
}

async fn kill(mut child: ChildProc) {
    let _ = child.process.kill().await;
}

/// Lets a child go in the background: closing its socket makes it exit; it is killed if
/// it lingers.
fn retire(child: ChildProc) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(stop(child));
    }
}

/// Closes a child's socket and waits for it to exit, killing it after 5 s.
async fn stop(child: ChildProc) {
    let ChildProc {
        mut process,
        writer,
        ..
    } = child;
    drop(writer);
    if tokio::time::timeout(Duration::from_secs(5), process.wait())
        .await
        .is_err()
    {
        let _ = process.kill().await;
    }
}
