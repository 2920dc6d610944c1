//! The worker's side of remote control: it listens on the `celery.pidbox` fanout and
//! answers `ping`, `revoke`, `stats`, `active` and `revoked` as Celery's workers do —
//! for celeriac's clients and Python's alike.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use celeriac_core::Subscription;

use super::job::JobEnv;
use crate::control::{reply_message, Command};

/// Ids a revoke named, for the worker loop to drop from what it holds.
pub(super) type RevokedTx = mpsc::UnboundedSender<Vec<String>>;

/// Handles commands until the subscription ends.
pub(super) fn spawn(
    shared: Arc<JobEnv>,
    mut pidbox: Subscription,
    revoked_tx: RevokedTx,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = pidbox.next().await {
            let Some(cmd) = Command::parse(&msg) else {
                continue;
            };
            if !cmd.is_for(&shared.hostname) {
                continue;
            }
            let reply = handle(&shared, &cmd, &revoked_tx);
            if let (Some((ticket, exchange, routing_key)), Some(reply)) = (&cmd.reply, reply) {
                let answer = reply_message(&shared.hostname, ticket, exchange, routing_key, reply);
                if let Err(e) = shared
                    .app
                    .broker()
                    .publish(answer, Default::default())
                    .await
                {
                    warn!("could not reply to `{}`: {e}", cmd.method);
                }
            }
        }
    })
}

fn ids(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn handle(shared: &JobEnv, cmd: &Command, revoked_tx: &RevokedTx) -> Option<Value> {
    Some(match cmd.method.as_str() {
        "ping" => json!({"ok": "pong"}),
        "revoke" => {
            let ids = ids(cmd.arguments.get("task_id"));
            let terminate = cmd
                .arguments
                .get("terminate")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            shared.revoked.insert(&ids);
            let mut terminated = Vec::new();
            if terminate {
                for id in &ids {
                    if shared.terminators.terminate(id) {
                        terminated.push(id.clone());
                    }
                }
            }
            info!(
                "revoke: {} task(s) flagged{}",
                ids.len(),
                if terminated.is_empty() {
                    String::new()
                } else {
                    format!(", terminating {terminated:?}")
                }
            );
            let _ = revoked_tx.send(ids.clone());
            json!({"ok": format!("tasks {} flagged as revoked", ids.join(", "))})
        }
        "stats" => {
            let s = shared.stats.snapshot();
            let total: serde_json::Map<String, Value> = s
                .per_task
                .iter()
                .map(|(name, c)| (name.clone(), json!(c.succeeded + c.failed)))
                .collect();
            json!({
                "total": total,
                "pid": std::process::id(),
                "pool": {"implementation": shared.pool.to_string()},
                "celeriac": {
                    "succeeded": s.succeeded, "failed": s.failed, "retried": s.retried,
                    "rejected": s.rejected, "revoked": s.revoked, "active": s.active,
                },
            })
        }
        "active" => {
            let running: Vec<Value> = shared
                .terminators
                .running()
                .into_iter()
                .map(|id| json!({"id": id}))
                .collect();
            Value::Array(running)
        }
        "revoked" => json!(shared.revoked.list()),
        other => json!({"error": format!("unknown command `{other}`")}),
    })
}
