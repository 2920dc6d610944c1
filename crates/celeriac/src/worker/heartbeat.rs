//! The worker's heartbeats: the `worker-online`, `worker-heartbeat` (every 2 s) and
//! `worker-offline` events monitors judge liveness by — sent whether or not task events
//! are on, as Celery does — and its counters in the log, written every
//! `stats_interval` when they changed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::info;

use super::job::JobEnv;
use super::stats::WorkerStats;
use crate::events::dispatcher::Fields;
use crate::events::{EventKind, HEARTBEAT_FREQ};

/// The 1, 5 and 15 minute load averages, rounded to 2 decimals (0s where unknown).
fn loadavg() -> Value {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0f64; 3];
    for (slot, v) in out.iter_mut().zip(avg.split_whitespace()) {
        *slot = (v.parse::<f64>().unwrap_or(0.0) * 100.0).round() / 100.0;
    }
    json!(out)
}

/// Sends one worker event (`worker-online`, `-heartbeat`, `-offline`) with Celery's
/// fields; `freq` is the heartbeat period it announces.
pub(super) async fn send_worker_event(env: &JobEnv, kind: EventKind, freq: f64) {
    let s = env.stats.snapshot();
    let mut fields = Fields::new();
    fields
        .value("freq", &freq)
        .value("active", &s.active)
        .value("processed", &s.processed)
        .value("loadavg", &loadavg())
        .str("sw_ident", "celeriac")
        .str("sw_ver", env!("CARGO_PKG_VERSION"))
        .str("sw_sys", super::control::sw_sys());
    env.events.send(kind, fields).await;
}

/// Sends `worker-online` now, then `worker-heartbeat` every 2 s, until aborted.
pub(super) fn spawn_worker_events(env: Arc<JobEnv>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        send_worker_event(&env, EventKind::WorkerOnline, HEARTBEAT_FREQ).await;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(HEARTBEAT_FREQ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            send_worker_event(&env, EventKind::WorkerHeartbeat, HEARTBEAT_FREQ).await;
        }
    })
}

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
