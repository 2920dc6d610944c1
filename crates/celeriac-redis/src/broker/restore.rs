//! Restoring: an unacknowledged message goes back on its queue, marked redelivered under
//! the same tag, by `SCRIPT` (`lua/restore.lua`) — a compare-and-swap on the `unacked`
//! entry, so a message another worker's sweep restored meanwhile is not pushed twice.
//! Used by reject-with-requeue, `restore`, dropped deliveries and the visibility sweep.

use std::time::Duration;

use serde_json::Value;
use tracing::error;

use celeriac_core::error::BrokerError;

use super::{Inner, RedisBroker};
use crate::lock;

/// Pushes an `unacked` entry back if it still holds what was read.
pub(super) const SCRIPT: &str = include_str!("../lua/restore.lua");

impl Inner {
    /// Puts the unacked message `tag` back on its queue: at the front (`front`, as kombu's
    /// restore does) or the back (reject with requeue), marked redelivered, same tag, and
    /// takes it out of the consumer set `held` (see `liveness`).
    pub(super) async fn restore_tag(
        &self,
        tag: &str,
        front: bool,
        held: &str,
    ) -> Result<bool, BrokerError> {
        let result = self.restore_unacked(tag, front, held).await;
        // Only now: until the restore is written, the tag is this process's.
        lock(&self.outstanding).remove(tag);
        result
    }

    async fn restore_unacked(
        &self,
        tag: &str,
        front: bool,
        held: &str,
    ) -> Result<bool, BrokerError> {
        let mut conn = self.conn();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys.unacked())
            .arg(tag)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err("restore", e))?;
        let Some(raw) = raw else {
            // Settled meanwhile; drop dangling index and held entries.
            let _: Result<(), _> = redis::pipe()
                .cmd("ZREM")
                .arg(self.keys.unacked_index())
                .arg(tag)
                .ignore()
                .cmd("SREM")
                .arg(held)
                .arg(tag)
                .ignore()
                .exec_async(&mut conn)
                .await;
            return Ok(false);
        };
        let Some((envelope, exchange, routing_key)) = parse_unacked(&raw) else {
            error!("unacked entry {tag} is not [envelope, exchange, routing_key]; deleting it");
            return self.ack_tag(tag).await.map(|()| false);
        };
        let mut envelope = envelope;
        mark_redelivered(&mut envelope);
        let priority = envelope
            .pointer("/properties/priority")
            .and_then(Value::as_f64)
            .map(|p| p.clamp(0.0, 9.0) as u8);
        let queue = self
            .targets(&exchange, &routing_key)
            .await?
            .into_iter()
            .next()
            .unwrap_or(routing_key);
        let restored: i64 = self
            .restore
            .key(self.keys.unacked())
            .key(self.keys.unacked_index())
            .key(self.keys.queue_for(&queue, priority))
            .key(held)
            .arg(tag)
            .arg(&raw)
            .arg(envelope.to_string())
            .arg(if front { "R" } else { "L" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err("restore", e))?;
        Ok(restored == 1)
    }
}

impl RedisBroker {
    /// `Broker::flush`: waits (bounded) for the restores of dropped deliveries.
    pub(super) async fn wait_for_restores(&self) -> Result<(), BrokerError> {
        let mut rx = self.inner.restoring.subscribe();
        // Bounded: a restore that cannot reach Redis is left to the visibility sweep.
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n == 0)).await;
        Ok(())
    }
}

/// `[envelope, exchange, routing_key]` from an `unacked` value.
fn parse_unacked(raw: &str) -> Option<(Value, String, String)> {
    let Value::Array(mut parts) = serde_json::from_str::<Value>(raw).ok()? else {
        return None;
    };
    if parts.len() < 3 || !parts[0].is_object() {
        return None;
    }
    let routing_key = parts[2].as_str().unwrap_or_default().to_string();
    let exchange = parts[1].as_str().unwrap_or_default().to_string();
    Some((parts.swap_remove(0), exchange, routing_key))
}

/// kombu's restore marks: `headers.redelivered` and `properties.delivery_info.redelivered`.
fn mark_redelivered(envelope: &mut Value) {
    if let Some(h) = envelope.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".into(), Value::Bool(true));
    }
    if let Some(di) = envelope
        .pointer_mut("/properties/delivery_info")
        .and_then(Value::as_object_mut)
    {
        di.insert("redelivered".into(), Value::Bool(true));
    }
}
