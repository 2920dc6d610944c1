//! Worker processes for the benchmark (this binary's `worker` command) and what `/proc`
//! says about a process tree: resident memory and CPU time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A worker process, stopped (warm, then killed) when dropped.
pub struct WorkerProc {
    child: Child,
}

/// This program, to be started again as a worker or a beat: with mimalloc returning freed
/// memory to the OS promptly (the same speed here, and a third less resident memory:
/// 10,000 sleepers 105 -> 65 MiB; idle 18 -> 10 MiB).
fn this_program() -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut cmd = Command::new(exe);
    for (k, v) in [
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
        ("MIMALLOC_PURGE_DELAY", "0"),
    ] {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    Ok(cmd)
}

impl WorkerProc {
    /// Starts `celeriac-bench worker --broker URL ARGS…` quietly.
    pub fn spawn(broker: &str, args: &[&str]) -> Result<Self, String> {
        let mut cmd = this_program()?;
        cmd.arg("worker")
            // Without mingle, as the Celery workers it is compared with run.
            .args(["--broker", broker, "-l", "warning", "--without-mingle"])
            .args(args);
        Self::adopt(&mut cmd, Stdio::inherit())
    }

    /// Starts `celeriac-bench beat --broker URL -s SCHEDULE --name NAME -l info`, its log
    /// (stderr) written to `log`.
    pub fn spawn_beat(
        broker: &str,
        schedule: &Path,
        name: &str,
        log: &Path,
    ) -> Result<Self, String> {
        let mut cmd = this_program()?;
        let log = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        cmd.arg("beat")
            .args(["--broker", broker, "-l", "info", "--name", name, "-s"])
            .arg(schedule)
            .env_remove("RUST_LOG");
        Self::adopt(&mut cmd, log)
    }

    /// Starts `cmd` with its stdin and stdout closed and its stderr to `log`, without the
    /// broker and backend variables of this process's environment.
    pub fn adopt(cmd: &mut Command, log: impl Into<Stdio>) -> Result<Self, String> {
        let child = cmd
            .env_remove("CELERIAC_BROKER_URL")
            .env_remove("CELERY_BROKER_URL")
            .env_remove("CELERIAC_RESULT_BACKEND")
            .env_remove("CELERY_RESULT_BACKEND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        Ok(Self { child })
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the worker: SIGTERM (warm shutdown), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..1000 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pid` and every descendant, from `/proc/*/stat`.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|v| v.parse().ok())) {
            parents.push((p, ppid));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, … (so `utime` is
/// index 11 and `stime` 12).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Resident memory of `pid` and its descendants, in MiB.
pub fn tree_rss_mb(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let kb: f64 = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(kb / 1024.0)
        })
        .sum()
}

/// A `/proc/PID/status` figure given in kB (`VmRSS`, `VmHWM`), in MiB.
pub fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Time on a CPU of `pid`'s live threads, in seconds, to the nanosecond (the first field
/// of each `/proc/PID/task/TID/schedstat`); `None` where the kernel keeps no schedstat.
pub fn threads_cpu_seconds(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// CPU time (user + system) used so far by `pid` and its descendants, in seconds.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let ticks = clock_ticks();
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let f = stat_fields(p)?;
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that is unavailable).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Samples the peak RSS of a process tree every 50 ms until stopped.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<f64>>,
}

impl RssSampler {
    /// Starts sampling `pid`'s tree.
    pub fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(tree_rss_mb(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(tree_rss_mb(pid))
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns the peak, in MiB.
    pub fn finish(mut self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or(0.0)
    }
}

/// The local RabbitMQ server: the `beam.smp` process whose command line boots `rabbit`
/// (not a `rabbitmqctl`, which runs a `beam.smp` of its own), to read its CPU time.
pub fn rabbitmq_server() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            comm.trim() == "beam.smp" && cmdline.contains(" rabbit boot")
        })
}
