//! The transport-level message every broker moves: headers, properties, content type and
//! body bytes, as kombu's `Message` — brokers never look inside the body.
//!
//! A task message (protocol v2) is one particular use of this shape; turning one into the
//! other is the job of [`crate::protocol`], and nothing else.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Content type of JSON bodies, the only serializer celeriac reads or writes.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// A message as a broker stores and delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Application headers (for tasks: the protocol v2 headers), in the order they were set.
    pub headers: Map<String, Value>,
    /// Delivery properties.
    pub properties: Properties,
    /// MIME type of the body (`application/json`).
    pub content_type: String,
    /// Character set of the body (`utf-8`).
    pub content_encoding: String,
    /// The serialized body, already decoded from any transport encoding (base64 on Redis).
    pub body: Bytes,
}

impl Message {
    /// The queue name a direct route sends this message to (the routing key).
    pub fn routing_key(&self) -> &str {
        &self.properties.delivery_info.routing_key
    }

    /// The priority 0..=9 this message was published with, if any.
    pub fn priority(&self) -> Option<u8> {
        self.properties.priority
    }
}

/// Where a message was published: exchange and routing key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// Exchange name; `""` is the default exchange, which routes by queue name.
    #[serde(default)]
    pub exchange: String,
    /// Routing key; for the default exchange, the queue name.
    #[serde(default)]
    pub routing_key: String,
    /// Set by kombu when it puts an unacknowledged message back in its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<bool>,
}

/// Message properties, as kombu and AMQP define them.
///
/// Fields Celery never reads but other senders add are kept in `extra`, so a message
/// forwarded or requeued by celeriac loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// Equals the task id for task messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The sending process's id, used by the `rpc://` result backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `2` persistent (the default), `1` transient.
    #[serde(default = "persistent")]
    pub delivery_mode: u8,
    /// Exchange and routing key the message was published with.
    #[serde(default)]
    pub delivery_info: DeliveryInfo,
    /// Priority 0..=9.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_priority"
    )]
    pub priority: Option<u8>,
    /// Per-message TTL in milliseconds, as a decimal string (AMQP `expiration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Any other property, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn persistent() -> u8 {
    2
}

/// Priorities arrive as ints, floats or null from other senders; anything outside 0..=255
/// is clamped rather than failing the whole envelope.
fn lenient_priority<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_f64())
        .map(|p| p.clamp(0.0, 255.0) as u8))
}

impl Default for Properties {
    fn default() -> Self {
        Self {
            correlation_id: None,
            reply_to: None,
            delivery_mode: persistent(),
            delivery_info: DeliveryInfo::default(),
            priority: None,
            expiration: None,
            extra: Map::new(),
        }
    }
}
