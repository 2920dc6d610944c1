//! Counters a worker keeps while it runs: totals and per task name, for the shutdown
//! report, logs, heartbeat events and `inspect stats` — and the process's resource usage
//! (`rusage`) that `stats` reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Live counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    received: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    revoked: AtomicU64,
    active: AtomicU64,
    processed: AtomicU64,
    concurrency: AtomicU64,
    per_task: Mutex<BTreeMap<String, TaskCounts>>,
}

/// Counts for one task name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Finished with SUCCESS.
    pub succeeded: u64,
    /// Finished with FAILURE.
    pub failed: u64,
    /// Retried.
    pub retried: u64,
    /// Stopped while running (`revoke(terminate=true)`).
    pub terminated: u64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Task messages received (valid or not).
    pub received: u64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed (including unknown names and undecodable messages).
    pub failed: u64,
    /// Retries sent.
    pub retried: u64,
    /// Messages rejected (undecodable, unknown task, `Reject`).
    pub rejected: u64,
    /// Tasks revoked or expired.
    pub revoked: u64,
    /// Tasks running now.
    pub active: u64,
    /// Tasks started since the worker started (Celery's `processed`).
    pub processed: u64,
    /// Tasks that may run at once now (changes with autoscaling).
    pub concurrency: u64,
    /// Per task name.
    pub per_task: BTreeMap<String, TaskCounts>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    Received,
    Succeeded,
    Failed,
    Retried,
    Rejected,
    Revoked,
    /// Revoked while running: counted as revoked, and for its task name.
    Terminated,
}

impl WorkerStats {
    pub(crate) fn record(&self, task: Option<&str>, event: Event) {
        let counter = match event {
            Event::Received => &self.received,
            Event::Succeeded => &self.succeeded,
            Event::Failed => &self.failed,
            Event::Retried => &self.retried,
            Event::Rejected => &self.rejected,
            Event::Revoked | Event::Terminated => &self.revoked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(task) = task else { return };
        if !matches!(
            event,
            Event::Succeeded | Event::Failed | Event::Retried | Event::Terminated
        ) {
            return;
        }
        let mut map = self.per_task.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: the name is copied once per task name, not per task.
        let c = match map.get_mut(task) {
            Some(c) => c,
            None => map.entry(task.to_string()).or_default(),
        };
        match event {
            Event::Succeeded => c.succeeded += 1,
            Event::Failed => c.failed += 1,
            Event::Terminated => c.terminated += 1,
            _ => c.retried += 1,
        }
    }

    pub(crate) fn started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_concurrency(&self, n: usize) {
        self.concurrency.store(n as u64, Ordering::Relaxed);
    }

    /// How many tasks may run at once now.
    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Relaxed) as usize
    }

    pub(crate) fn finished(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            concurrency: self.concurrency.load(Ordering::Relaxed),
            per_task: self
                .per_task
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// The process's resource usage in the shape of Python's `resource.getrusage` (what
/// `inspect stats` reports as `rusage`), read from `/proc/self` on Linux — `getrusage`
/// itself would need `unsafe`, which this crate forbids. Elsewhere every field is 0.
pub(crate) fn rusage() -> serde_json::Value {
    let mut u = serde_json::json!({
        "utime": 0.0, "stime": 0.0, "maxrss": 0, "ixrss": 0, "idrss": 0, "isrss": 0,
        "minflt": 0, "majflt": 0, "nswap": 0, "inblock": 0, "oublock": 0, "msgsnd": 0,
        "msgrcv": 0, "nsignals": 0, "nvcsw": 0, "nivcsw": 0,
    });
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces), from field 3 on.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let ticks = rustix::param::clock_ticks_per_second() as f64;
            // minflt is field 10, majflt 12, utime 14, stime 15 (1-based): 7, 9, 11, 12 here.
            u["minflt"] = n(7).into();
            u["majflt"] = n(9).into();
            if ticks > 0.0 {
                u["utime"] = (n(11) as f64 / ticks).into();
                u["stime"] = (n(12) as f64 / ticks).into();
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let number = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            match key {
                "VmHWM" => u["maxrss"] = number.into(),
                "voluntary_ctxt_switches" => u["nvcsw"] = number.into(),
                "nonvoluntary_ctxt_switches" => u["nivcsw"] = number.into(),
                _ => {}
            }
        }
    }
    u
}
