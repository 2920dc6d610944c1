//! Message → wire: [`TaskMessage::encode`] writes the transport [`Message`] with the
//! headers in Celery's order and the JSON body `[args, kwargs, embed]`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{json, TaskMessage};
use crate::message::{Message, CONTENT_TYPE_JSON};
use crate::time;

impl TaskMessage {
    /// The transport message: headers in Celery's order, JSON body `[args, kwargs, embed]`.
    pub fn encode(&self) -> Message {
        let h = &self.headers;
        let mut m = Map::with_capacity(19 + h.extra.len());
        let opt = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        let opt_time = |v: &Option<DateTime<Utc>>| {
            v.map(|t| Value::String(time::isoformat(&t)))
                .unwrap_or(Value::Null)
        };
        let opt_num = |v: Option<f64>| v.and_then(number).unwrap_or(Value::Null);
        m.insert("lang".into(), Value::String(h.lang.clone()));
        m.insert("task".into(), Value::String(h.task.clone()));
        m.insert("id".into(), Value::String(h.id.clone()));
        m.insert("shadow".into(), opt(&h.shadow));
        m.insert("eta".into(), opt_time(&h.eta));
        m.insert("expires".into(), opt_time(&h.expires));
        m.insert("group".into(), opt(&h.group));
        m.insert(
            "group_index".into(),
            h.group_index.map(Value::from).unwrap_or(Value::Null),
        );
        m.insert("retries".into(), Value::from(h.retries));
        m.insert(
            "timelimit".into(),
            Value::Array(vec![opt_num(h.timelimit.0), opt_num(h.timelimit.1)]),
        );
        m.insert("root_id".into(), opt(&h.root_id));
        m.insert("parent_id".into(), opt(&h.parent_id));
        m.insert(
            "argsrepr".into(),
            Value::String(
                h.argsrepr
                    .clone()
                    .unwrap_or_else(|| json::args_repr(&self.args)),
            ),
        );
        m.insert(
            "kwargsrepr".into(),
            Value::String(
                h.kwargsrepr
                    .clone()
                    .unwrap_or_else(|| json::kwargs_repr(&self.kwargs)),
            ),
        );
        m.insert(
            "origin".into(),
            Value::String(h.origin.clone().unwrap_or_default()),
        );
        m.insert(
            "ignore_result".into(),
            h.ignore_result.map(Value::Bool).unwrap_or(Value::Null),
        );
        m.insert(
            "replaced_task_nesting".into(),
            Value::from(h.replaced_task_nesting),
        );
        m.insert(
            "stamped_headers".into(),
            h.stamped_headers
                .as_ref()
                .map(|v| Value::Array(v.iter().cloned().map(Value::String).collect()))
                .unwrap_or(Value::Null),
        );
        m.insert("stamps".into(), Value::Object(h.stamps.clone()));
        for (k, v) in &h.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let mut properties = self.properties.clone();
        properties.correlation_id = Some(h.id.clone());
        Message {
            headers: m,
            properties,
            content_type: CONTENT_TYPE_JSON.into(),
            content_encoding: "utf-8".into(),
            body: self.encode_body(),
        }
    }

    /// The JSON body bytes `[args, kwargs, embed]`.
    pub fn encode_body(&self) -> Bytes {
        // Values, maps and signatures always serialize; an error here would be a serde_json bug.
        serde_json::to_vec(&(&self.args, &self.kwargs, &self.embed))
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(b"[[], {}, {}]"))
    }
}

fn number(f: f64) -> Option<Value> {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(Value::from(f as i64))
    } else {
        serde_json::Number::from_f64(f).map(Value::Number)
    }
}
