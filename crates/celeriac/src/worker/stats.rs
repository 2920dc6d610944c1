//! Counters a worker keeps while it runs: totals and per task name, for the shutdown
//! report, logs, and (later) monitoring.

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
}

impl WorkerStats {
    pub(crate) fn record(&self, task: Option<&str>, event: Event) {
        let counter = match event {
            Event::Received => &self.received,
            Event::Succeeded => &self.succeeded,
            Event::Failed => &self.failed,
            Event::Retried => &self.retried,
            Event::Rejected => &self.rejected,
            Event::Revoked => &self.revoked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(task) = task else { return };
        if !matches!(event, Event::Succeeded | Event::Failed | Event::Retried) {
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
            _ => c.retried += 1,
        }
    }

    pub(crate) fn started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_concurrency(&self, n: usize) {
        self.concurrency.store(n as u64, Ordering::Relaxed);
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
            concurrency: self.concurrency.load(Ordering::Relaxed),
            per_task: self
                .per_task
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
