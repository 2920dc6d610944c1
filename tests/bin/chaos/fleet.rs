//! Worker processes for the scenarios: `celeriac-testapp worker` or a stock Celery 5.7
//! worker (`celery -A celeriac_interop.tasks worker --pool threads`), started the way
//! `tests/system/proc.rs` and `tests/system/interop.rs` start them, killed, stopped warm
//! and restarted under the same node name.
//!
//! Both kinds get the same settings through the same variables: the broker, the Redis
//! `tasks.record` writes to (`CELERIAC_INTEROP_RECORD`) and late acknowledgement
//! (`CELERIAC_INTEROP_ACKS_LATE`, which the test app and `tasks.py` both read). Each
//! worker's log goes to a file of its own, so a surprising figure can be looked into.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_testing::python::CeleryVenv;

/// Which worker implementation a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `celeriac-testapp worker` (the async pool).
    Celeriac,
    /// Python Celery 5.7 with the threads pool.
    Celery,
}

impl Kind {
    /// The name in the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Celeriac => "celeriac",
            Kind::Celery => "Celery 5.7",
        }
    }

    /// The node-name prefix of its workers.
    fn node(self) -> &'static str {
        match self {
            Kind::Celeriac => "rs",
            Kind::Celery => "py",
        }
    }
}

/// The programs workers are started from.
#[derive(Debug)]
pub(crate) struct Programs {
    /// `celeriac-testapp`, next to this program.
    pub(crate) testapp: PathBuf,
    /// The Celery virtualenv, if there is one.
    pub(crate) venv: Option<CeleryVenv>,
    /// Where worker logs go.
    pub(crate) logs: PathBuf,
}

/// How every worker of a run is configured.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The broker URL the workers consume from.
    pub(crate) broker: String,
    /// The Redis `tasks.record` appends to.
    pub(crate) record: String,
    /// Acknowledge every task after it ran.
    pub(crate) acks_late: bool,
    /// Tasks at once per worker.
    pub(crate) concurrency: u32,
    /// celeriac's `--max-message-size` (Celery has no such limit).
    pub(crate) max_message_size: Option<usize>,
}

/// One worker process; killed on drop.
#[derive(Debug)]
pub(crate) struct Worker {
    name: String,
    child: Child,
    /// Lines logged so far, to see `ready.` (the whole log is in the file).
    seen: Arc<Mutex<String>>,
    /// Whether we stopped or killed it (an exit we did not ask for is news).
    ended_by_us: bool,
}

impl Worker {
    fn start(
        programs: &Programs,
        kind: Kind,
        spec: &Spec,
        name: &str,
        log: PathBuf,
    ) -> Result<Self, String> {
        let late = if spec.acks_late { "1" } else { "0" };
        let concurrency = spec.concurrency.to_string();
        let mut cmd = match kind {
            Kind::Celeriac => {
                let mut cmd = Command::new(&programs.testapp);
                cmd.args(["--broker", &spec.broker, "worker", "-c", &concurrency])
                    .args(["-n", name, "-l", "info"]);
                if let Some(max) = spec.max_message_size {
                    cmd.args(["--max-message-size", &max.to_string()]);
                }
                cmd
            }
            Kind::Celery => {
                let venv = programs
                    .venv
                    .as_ref()
                    .ok_or("no Celery virtualenv (tests/python/bootstrap.sh failed)")?;
                let mut cmd = Command::new(venv.celery());
                cmd.args(["-A", "celeriac_interop.tasks", "worker", "-Q", "celery"])
                    .args(["--pool", "threads", "-c", &concurrency, "-n", name])
                    .args([
                        "--without-mingle",
                        "--without-gossip",
                        "--without-heartbeat",
                    ])
                    .args(["-l", "info"])
                    .env("PYTHONPATH", &venv.harness)
                    .env("CELERIAC_INTEROP_BROKER", &spec.broker);
                cmd
            }
        };
        for var in [
            "CELERIAC_BROKER_URL",
            "CELERY_BROKER_URL",
            "CELERIAC_RESULT_BACKEND",
            "CELERY_RESULT_BACKEND",
            "CELERIAC_INTEROP_BACKEND",
            "CELERIAC_INTEROP_KEYPREFIX",
            "CELERIAC_INTEROP_VISIBILITY_TIMEOUT",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CELERIAC_INTEROP_RECORD", &spec.record)
            .env("CELERIAC_INTEROP_ACKS_LATE", late)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker {name} ({:?}): {e}", cmd.get_program()))?;
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot write {}: {e}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let seen = Arc::new(Mutex::new(String::new()));
        let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let (file, seen) = (file.clone(), seen.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = writeln!(f, "{line}");
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    // Only the start-up matters here; the file has the rest.
                    if s.len() < 64 * 1024 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let mut w = Self {
            name: name.to_string(),
            child,
            seen,
            ended_by_us: false,
        };
        w.wait_ready(Duration::from_secs(60), &log)?;
        Ok(w)
    }

    /// Waits until the worker logs `<name> ready.` (both kinds log that at `info`).
    fn wait_ready(&mut self, timeout: Duration, log: &std::path::Path) -> Result<(), String> {
        let ready = format!("{} ready.", self.name);
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&ready)
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "worker {} exited at start-up ({status}); see {}",
                    self.name,
                    log.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "worker {} not ready within {timeout:?}; see {}",
                    self.name,
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// SIGKILL, and reaps it.
    fn kill9(&mut self) {
        self.ended_by_us = true;
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM (a warm shutdown for both kinds); does not wait.
    fn sigterm(&mut self) {
        self.ended_by_us = true;
        self.signal("-TERM");
    }

    /// Waits up to `timeout` for the exit; SIGKILLs it after that.
    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    self.kill9();
                    return Err(format!("{} did not stop within {timeout:?}", self.name));
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workers of one run, by slot; a slot's restarts keep its node name.
#[derive(Debug)]
pub(crate) struct Fleet {
    programs: Arc<Programs>,
    kind: Kind,
    spec: Spec,
    /// `<scenario>-<kind>`, for log file names.
    label: String,
    workers: Vec<Option<Worker>>,
    /// Starts so far (numbers the log files).
    starts: usize,
}

impl Fleet {
    /// Starts `count` workers and waits until each is ready.
    pub(crate) fn start(
        programs: Arc<Programs>,
        kind: Kind,
        spec: Spec,
        label: String,
        count: usize,
    ) -> Result<Self, String> {
        let mut fleet = Self {
            programs,
            kind,
            spec,
            label,
            workers: Vec::new(),
            starts: 0,
        };
        for _ in 0..count {
            fleet.add()?;
        }
        Ok(fleet)
    }

    /// Starts a worker in a new slot; returns the slot.
    pub(crate) fn add(&mut self) -> Result<usize, String> {
        self.workers.push(None);
        let slot = self.workers.len() - 1;
        self.restart(slot)?;
        Ok(slot)
    }

    /// Starts slot `slot`'s worker again (it must not be running).
    pub(crate) fn restart(&mut self, slot: usize) -> Result<(), String> {
        self.starts += 1;
        let name = format!("{}{}@chaos", self.kind.node(), slot + 1);
        let log = self
            .programs
            .logs
            .join(format!("{}-{}-{}.log", self.label, self.starts, name));
        let w = Worker::start(&self.programs, self.kind, &self.spec, &name, log)?;
        self.workers[slot] = Some(w);
        Ok(())
    }

    /// SIGKILLs slot `slot`'s worker.
    pub(crate) fn kill9(&mut self, slot: usize) {
        if let Some(w) = self.workers[slot].as_mut() {
            w.kill9();
        }
        self.workers[slot] = None;
    }

    /// SIGTERMs slot `slot`'s worker without waiting; returns it, to wait for its exit.
    pub(crate) fn sigterm(&mut self, slot: usize) -> Option<Worker> {
        let mut w = self.workers[slot].take()?;
        w.sigterm();
        Some(w)
    }

    /// Workers that exited without being asked, with their exit status.
    pub(crate) fn unasked_exits(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for w in self.workers.iter_mut().flatten() {
            if !w.ended_by_us {
                if let Ok(Some(status)) = w.child.try_wait() {
                    out.push(format!("{} exited on its own ({status})", w.name));
                }
            }
        }
        out
    }

    /// Stops every worker warm (SIGTERM, up to `timeout` each); returns what went wrong.
    pub(crate) fn stop_all(&mut self, timeout: Duration) -> Vec<String> {
        let mut notes = Vec::new();
        // Those that already exited were reported by `unasked_exits`.
        let mut running: Vec<Worker> = self
            .workers
            .iter_mut()
            .filter_map(Option::take)
            .filter_map(|mut w| matches!(w.child.try_wait(), Ok(None)).then_some(w))
            .collect();
        for w in &mut running {
            w.sigterm();
        }
        for w in &mut running {
            match w.wait_exit(timeout) {
                Ok(status) if !status.success() => {
                    notes.push(format!("{} stopped with {status}", w.name));
                }
                Ok(_) => {}
                Err(e) => notes.push(e),
            }
        }
        notes
    }
}

/// Waits for a worker stopped by [`Fleet::sigterm`]; returns how it went.
pub(crate) fn wait_stopped(mut w: Worker, since: Instant, timeout: Duration) -> String {
    match w.wait_exit(timeout) {
        Ok(status) => format!(
            "{} stopped warm in {} ms ({status})",
            w.name,
            since.elapsed().as_millis()
        ),
        Err(e) => e,
    }
}
