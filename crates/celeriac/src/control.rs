//! Remote control, Celery's "pidbox": commands broadcast to every worker on the
//! `celery.pidbox` fanout exchange, and replies sent back to the asking client's own
//! queue through the `reply.celery.pidbox` direct exchange — in Celery's message format,
//! so a Python client's `app.control.revoke(id)` or `ping()` reaches celeriac workers and
//! this module's commands reach Python workers.
//!
//! ```no_run
//! # async fn demo(app: celeriac::App, r: celeriac::AsyncResult) -> Result<(), celeriac::Error> {
//! use std::time::Duration;
//! for (node, reply) in app.control().ping(Duration::from_secs(1)).await? {
//!     println!("{node}: {reply}");          // celery@host: {"ok": "pong"}
//! }
//! r.revoke(false).await?;                   // or app.control().revoke(&[id], terminate)
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use celeriac_core::broker::ConsumeOptions;
use celeriac_core::message::{DeliveryInfo, Message, Properties, CONTENT_TYPE_JSON};

use crate::app::App;
use crate::error::Error;

/// The fanout exchange commands are broadcast on.
pub const PIDBOX: &str = "celery.pidbox";
/// The direct exchange replies are sent through.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// How long a command stays valid (Celery's default broadcast expiry).
const COMMAND_TTL: f64 = 60.0;

/// A command as a worker reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Command {
    pub(crate) method: String,
    pub(crate) arguments: Map<String, Value>,
    /// Node names it is for; `None` means every worker.
    pub(crate) destination: Option<Vec<String>>,
    /// Where to reply: ticket, exchange, routing key.
    pub(crate) reply: Option<(String, String, String)>,
}

fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

impl Command {
    /// Reads a pidbox message; `None` if it is not a command or has expired.
    pub(crate) fn parse(msg: &Message) -> Option<Command> {
        if let Some(expires) = msg.headers.get("expires").and_then(Value::as_f64) {
            if expires < unix_now() {
                return None;
            }
        }
        let Value::Object(body) = celeriac_core::protocol::json::parse_lenient(&msg.body).ok()?
        else {
            return None;
        };
        let method = body.get("method")?.as_str()?.to_string();
        let arguments = body
            .get("arguments")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let destination = body.get("destination").and_then(Value::as_array).map(|d| {
            d.iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        });
        let reply = match (
            body.get("ticket").and_then(Value::as_str),
            body.get("reply_to"),
        ) {
            (Some(ticket), Some(Value::Object(to))) => Some((
                ticket.to_string(),
                to.get("exchange")
                    .and_then(Value::as_str)
                    .unwrap_or(REPLY_EXCHANGE)
                    .to_string(),
                to.get("routing_key").and_then(Value::as_str)?.to_string(),
            )),
            _ => None,
        };
        Some(Command {
            method,
            arguments,
            destination,
            reply,
        })
    }

    /// Whether a worker named `node` should act on it.
    pub(crate) fn is_for(&self, node: &str) -> bool {
        self.destination
            .as_ref()
            .is_none_or(|d| d.iter().any(|n| n == node))
    }
}

/// Reads a pidbox message as a worker's remote-control loop does, and says whether a
/// worker named `celery@fuzz` would act on it. Only for the `control` fuzz target in
/// `fuzz/` (which cannot reach the crate-private `Command`); not a public API.
#[doc(hidden)]
pub fn __fuzz_parse_command(msg: &Message) -> bool {
    Command::parse(msg).is_some_and(|c| c.is_for("celery@fuzz"))
}

/// A JSON message as kombu publishes remote-control and event messages: `body` (JSON
/// text) to `exchange` under `routing_key`, priority 0.
pub(crate) fn json_message(
    headers: Value,
    exchange: &str,
    routing_key: &str,
    body: Vec<u8>,
    delivery_mode: u8,
) -> Message {
    Message {
        headers: headers.as_object().cloned().unwrap_or_default(),
        properties: Properties {
            delivery_mode,
            delivery_info: DeliveryInfo {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                redelivered: None,
            },
            priority: Some(0),
            ..Properties::default()
        },
        content_type: CONTENT_TYPE_JSON.into(),
        content_encoding: "utf-8".into(),
        body: Bytes::from(body),
    }
}

/// A command message, as Celery's `app.control.broadcast` sends it.
pub(crate) fn command_message(
    method: &str,
    arguments: Value,
    destination: Option<&[String]>,
    reply: Option<(&str, &str)>,
    clock: u64,
) -> Message {
    let mut body = json!({
        "method": method,
        "arguments": arguments,
        "destination": destination,
        "pattern": null,
        "matcher": null,
    });
    if let Some((ticket, oid)) = reply {
        body["ticket"] = json!(ticket);
        body["reply_to"] = json!({"exchange": REPLY_EXCHANGE, "routing_key": oid});
    }
    let headers = json!({"clock": clock, "expires": unix_now() + COMMAND_TTL});
    json_message(headers, PIDBOX, "", body.to_string().into_bytes(), 2)
}

/// A worker's reply to a command: `{node: reply}`, as Celery's mailbox replies.
pub(crate) fn reply_message(
    node: &str,
    ticket: &str,
    exchange: &str,
    routing_key: &str,
    reply: Value,
    clock: u64,
) -> Message {
    let mut body = Map::new();
    body.insert(node.to_string(), reply);
    json_message(
        json!({"ticket": ticket, "clock": clock}),
        exchange,
        routing_key,
        Value::Object(body).to_string().into_bytes(),
        1,
    )
}

/// Sends remote-control commands; get one from [`App::control`].
#[derive(Debug, Clone)]
pub struct Control {
    app: App,
}

impl App {
    /// Remote control of the workers (revoke, ping, any command).
    pub fn control(&self) -> Control {
        Control::new(self.clone())
    }
}

impl Control {
    pub(crate) fn new(app: App) -> Self {
        Self { app }
    }

    /// Revokes tasks on every worker: not yet started ones will not run (they get
    /// REVOKED), and with `terminate` running ones are stopped (a prefork child is killed;
    /// an async task's future is dropped; a thread task is abandoned).
    pub async fn revoke(&self, task_ids: &[&str], terminate: bool) -> Result<(), Error> {
        let ids: Value = match task_ids {
            [one] => json!(one),
            many => json!(many),
        };
        let args = json!({"task_id": ids, "terminate": terminate, "signal": "SIGTERM"});
        self.broadcast("revoke", args, None, None).await.map(drop)
    }

    /// Asks every worker to answer; returns `(node name, reply)` for those that did within
    /// `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<Vec<(String, Value)>, Error> {
        self.broadcast("ping", json!({}), None, Some(timeout)).await
    }

    /// Sends any command (`method` with `arguments`) to every worker, or to the named
    /// ones, and collects replies for `reply_timeout` (none are waited for without it) —
    /// or, with named `destination`s, until each has replied, as Celery's client stops.
    pub async fn broadcast(
        &self,
        method: &str,
        arguments: Value,
        destination: Option<&[String]>,
        reply_timeout: Option<Duration>,
    ) -> Result<Vec<(String, Value)>, Error> {
        let broker = self.app.broker();
        let Some(timeout) = reply_timeout else {
            let clock = self.app.clock().forward();
            let msg = command_message(method, arguments, destination, None, clock);
            broker.publish_fanout(PIDBOX, msg).await?;
            return Ok(Vec::new());
        };
        let oid = self.app.reply_to().to_string();
        let queue = format!("{oid}.reply.celery.pidbox");
        broker.bind_queue(&queue, REPLY_EXCHANGE, &oid).await?;
        let mut replies = broker
            .consume(ConsumeOptions::new(vec![queue.clone()], 0))
            .await?;
        let ticket = uuid::Uuid::new_v4().to_string();
        let clock = self.app.clock().forward();
        let msg = command_message(method, arguments, destination, Some((&ticket, &oid)), clock);
        broker.publish_fanout(PIDBOX, msg).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let limit = destination.map(<[String]>::len);
        let mut out = Vec::new();
        while limit.is_none_or(|n| out.len() < n) {
            let next = tokio::time::timeout_at(deadline, replies.next()).await;
            let Ok(Some(Ok(delivery))) = next else { break };
            let message = delivery.message().clone();
            let _ = delivery.ack().await;
            if message.headers.get("ticket").and_then(Value::as_str) != Some(&ticket) {
                continue;
            }
            if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&message.body) {
                out.extend(body);
            }
        }
        for left in replies.close().await {
            let _ = left.ack().await;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_python_revoke_and_skips_expired_ones() {
        let body = br#"{"method": "revoke", "arguments": {"task_id": "a9d6", "terminate": false, "signal": "SIGTERM"}, "destination": null, "pattern": null, "matcher": null}"#;
        let mut msg = json_message(
            json!({"clock": 1, "expires": unix_now() + 10.0}),
            PIDBOX,
            "",
            b"null".to_vec(),
            2,
        );
        msg.body = Bytes::from_static(body);
        let cmd = Command::parse(&msg).unwrap();
        assert_eq!(cmd.method, "revoke");
        assert_eq!(cmd.arguments["task_id"], json!("a9d6"));
        assert!(cmd.is_for("anyone@host"));
        assert!(cmd.reply.is_none());
        msg.headers
            .insert("expires".into(), json!(unix_now() - 1.0));
        assert!(Command::parse(&msg).is_none());
    }

    #[test]
    fn round_trips_a_ping_with_reply_address() {
        let dest = vec!["w1@h".to_string()];
        let msg = command_message("ping", json!({}), Some(&dest), Some(("t-1", "oid-9")), 3);
        let cmd = Command::parse(&msg).unwrap();
        assert_eq!(
            cmd.reply,
            Some(("t-1".into(), REPLY_EXCHANGE.into(), "oid-9".into()))
        );
        assert!(cmd.is_for("w1@h") && !cmd.is_for("w2@h"));
        let reply = reply_message(
            "w1@h",
            "t-1",
            REPLY_EXCHANGE,
            "oid-9",
            json!({"ok": "pong"}),
            4,
        );
        assert_eq!(reply.headers["ticket"], json!("t-1"));
        assert_eq!(reply.routing_key(), "oid-9");
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.body).unwrap(),
            json!({"w1@h": {"ok": "pong"}})
        );
    }
}
