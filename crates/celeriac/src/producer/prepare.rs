//! A signature becomes a message here: its route (the router, with `celery.map` and
//! `celery.starmap` routed like the task they map), its ids and parent, and the publish
//! options the broker needs (a native delay for ETA messages where the broker has one).
//! A retry's message is made here too, from the message being retried.

use chrono::Utc;
use serde_json::Value;

use celeriac_core::broker::PublishOptions;
use celeriac_core::canvas::names;
use celeriac_core::protocol::{SendContext, TaskMessage};
use celeriac_core::Signature;

use crate::app::App;
use crate::error::Error;

/// Builds the message for a signature: route, ids, eta, and the task's own
/// `ignore_result` when the task is registered here. `parent` is `(parent_id, root_id)`
/// when a running task sends it.
pub(super) fn message(
    app: &App,
    sig: &Signature,
    parent: Option<&(String, String)>,
) -> Result<TaskMessage, Error> {
    // `celery.map`/`celery.starmap` are routed like the task they map (Celery's
    // `route_name`).
    let mapped = match (sig.task.as_str(), sig.kwargs.get("task")) {
        (names::MAP | names::STARMAP, Some(t)) => {
            t.get("task").and_then(Value::as_str).map(|name| Signature {
                task: name.to_string(),
                ..sig.clone()
            })
        }
        _ => None,
    };
    let route = app.router().route(mapped.as_ref().unwrap_or(sig));
    let ctx = SendContext {
        origin: app.origin(),
        reply_to: app.reply_to(),
        parent: parent.map(|(p, r)| (p.as_str(), r.as_str())),
        ignore_result: app.task(&sig.task).map(|t| t.config().ignore_result),
    };
    Ok(TaskMessage::from_signature(sig, &route, &ctx)?)
}

/// Brokers that can delay delivery hold ETA messages themselves; for the others the
/// worker holds them.
pub(super) fn options(app: &App, msg: &TaskMessage) -> PublishOptions {
    let native = app.broker().capabilities().native_delay;
    PublishOptions::deliver_at(msg.headers.eta.filter(|_| native))
}

/// The next try of `msg`: `retries` + 1, the new ETA, the tried message as its parent, no
/// longer marked redelivered, and routed back to `unrouted_queue` when it had no routing
/// key of its own.
pub(super) fn retry(
    msg: &TaskMessage,
    countdown: f64,
    unrouted_queue: Option<&str>,
) -> TaskMessage {
    let mut next = msg.clone();
    // Saturating: `retries` comes from the wire, and u32::MAX + 1 must not panic.
    next.headers.retries = next.headers.retries.saturating_add(1);
    next.headers.eta =
        (countdown > 0.0).then(|| Utc::now() + celeriac_core::time::seconds(countdown));
    next.headers.parent_id = Some(msg.headers.id.clone());
    // A fresh message: not a redelivery, whatever the original was.
    next.headers.extra.remove("redelivered");
    next.properties.delivery_info.redelivered = None;
    if let Some(queue) = unrouted_queue {
        next.properties.delivery_info.routing_key = queue.to_string();
    }
    next
}
