//! The worker's heartbeat in the log: its counters, written every `stats_interval` when
//! they changed.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::stats::WorkerStats;

/// Logs the worker's counters every `every` when they changed since the last line.
pub(super) fn spawn_heartbeat(
    name: String,
    stats: Arc<WorkerStats>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = stats.snapshot();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = stats.snapshot();
            if now == last {
                continue;
            }
            let per_task: Vec<String> = now
                .per_task
                .iter()
                .map(|(t, c)| format!("{t} {}/{}/{}", c.succeeded, c.failed, c.retried))
                .collect();
            info!(
                "{name} stats: {} succeeded, {} failed, {} retried, {} active of {}; per task (ok/failed/retried): {}",
                now.succeeded,
                now.failed,
                now.retried,
                now.active,
                now.concurrency,
                per_task.join(", ")
            );
            last = now;
        }
    })
}
