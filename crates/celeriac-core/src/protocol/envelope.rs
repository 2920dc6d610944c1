//! kombu's JSON envelope, the form a message takes as one value in a key-value store
//! (a Redis list item, an SQLite row): `{"body": <base64>, "content-encoding",
//! "content-type", "headers", "properties": {..., "body_encoding": "base64",
//! "delivery_tag": <uuid>}}`.
//!
//! Byte-oriented engines call [`encode`]/[`decode`]; the memory engine moves [`Message`]s
//! and never needs it.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::{Message, Properties};

/// Why stored bytes are not a kombu envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message envelope: {0}")]
pub struct EnvelopeError(pub String);

#[derive(Serialize, Deserialize)]
struct Envelope {
    body: Value,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    properties: Properties,
}

/// Encodes `msg` as a kombu envelope with a base64 body and the given delivery tag.
pub fn encode(msg: &Message, delivery_tag: &str) -> Vec<u8> {
    let mut properties = msg.properties.clone();
    properties
        .extra
        .insert("body_encoding".into(), Value::String("base64".into()));
    properties.extra.insert(
        "delivery_tag".into(),
        Value::String(delivery_tag.to_string()),
    );
    let env = Envelope {
        body: Value::String(base64::engine::general_purpose::STANDARD.encode(&msg.body)),
        content_encoding: Some(msg.content_encoding.clone()),
        content_type: Some(msg.content_type.clone()),
        headers: Some(msg.headers.clone()),
        properties,
    };
    // Strings, maps and numbers only: serialization cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

/// Decodes an envelope into the message and its delivery tag (`None` if it had none).
pub fn decode(bytes: &[u8]) -> Result<(Message, Option<String>), EnvelopeError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| EnvelopeError(e.to_string()))?;
    let mut properties = env.properties;
    let encoding = properties.extra.remove("body_encoding");
    let tag = match properties.extra.remove("delivery_tag") {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let body = match (&env.body, encoding.as_ref().and_then(Value::as_str)) {
        (Value::String(s), Some("base64")) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| EnvelopeError(format!("body is not valid base64: {e}")))?,
        ),
        (Value::String(s), _) => Bytes::from(s.clone().into_bytes()),
        // kombu tolerates a body that is already a JSON value.
        (other, _) => Bytes::from(other.to_string().into_bytes()),
    };
    Ok((
        Message {
            headers: env.headers.unwrap_or_default(),
            properties,
            content_type: env.content_type.unwrap_or_default(),
            content_encoding: env.content_encoding.unwrap_or_else(|| "utf-8".into()),
            body,
        },
        tag,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TaskMessage;

    /// The envelope Celery 5.7 pushed for `add.apply_async((2, 3))` (wire spec §1.1).
    const PYTHON: &str = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "e9dff727-2e20-4c9a-a6c1-12443236c65d", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "e9dff727-2e20-4c9a-a6c1-12443236c65d", "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen7789@vm", "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "e9dff727-2e20-4c9a-a6c1-12443236c65d", "reply_to": "d97cfbad-67eb-3134-84f9-374e2b1aebdf", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "e4e9bfd3-05a2-4e02-a11e-919fbb9a22cc"}}"#;

    #[test]
    fn decodes_a_python_envelope() {
        let (msg, tag) = decode(PYTHON.as_bytes()).unwrap();
        assert_eq!(tag.as_deref(), Some("e4e9bfd3-05a2-4e02-a11e-919fbb9a22cc"));
        assert_eq!(msg.routing_key(), "celery");
        let task = TaskMessage::decode(&msg).unwrap();
        assert_eq!(task.headers.task, "tasks.add");
        assert_eq!(task.args, vec![serde_json::json!(2), serde_json::json!(3)]);
        assert!(
            msg.properties.extra.is_empty(),
            "{:?}",
            msg.properties.extra
        );
    }

    #[test]
    fn round_trips_and_keeps_key_order() {
        let (msg, _) = decode(PYTHON.as_bytes()).unwrap();
        let bytes = encode(&msg, "tag-1");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"body":"W1sy"#), "{text}");
        let keys: Vec<String> = serde_json::from_slice::<Map<String, Value>>(&bytes)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            [
                "body",
                "content-encoding",
                "content-type",
                "headers",
                "properties"
            ]
        );
        let (again, tag) = decode(&bytes).unwrap();
        assert_eq!(again, msg);
        assert_eq!(tag.as_deref(), Some("tag-1"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"body": "!!!", "properties": {"body_encoding": "base64"}}"#,
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
