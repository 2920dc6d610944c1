//! Wire → message: [`TaskMessage::decode`] and the hand-written header decoding behind it
//! (protocol v2, v1 and hybrid messages); see the [module docs](super) for what is
//! accepted and refused.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{json, DecodeError, DecodeErrorKind, Embed, TaskHeaders, TaskMessage};
use crate::message::{Message, CONTENT_TYPE_JSON};
use crate::signature::Signature;
use crate::time;

/// Content type of Python's pickle serializer: refused, never executed.
pub const CONTENT_TYPE_PICKLE: &str = "application/x-python-serialize";

fn short_content_name(content_type: &str) -> &str {
    match content_type {
        CONTENT_TYPE_PICKLE => "pickle",
        "application/x-yaml" => "yaml",
        "application/x-msgpack" => "msgpack",
        other => other,
    }
}

impl TaskMessage {
    /// Reads a task message; see the module docs for what is accepted and refused.
    pub fn decode(msg: &Message) -> Result<Self, DecodeError> {
        let headers = &msg.headers;
        let id_hint = headers
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let task_hint = headers
            .get("task")
            .and_then(Value::as_str)
            .map(str::to_string);
        let with_hints = |kind: DecodeErrorKind| DecodeError {
            kind,
            task_id: id_hint.clone(),
            task_name: task_hint.clone(),
        };
        let ct = msg.content_type.trim();
        if !(ct.is_empty()
            || ct.eq_ignore_ascii_case(CONTENT_TYPE_JSON)
            || ct.eq_ignore_ascii_case("json"))
        {
            return Err(with_hints(DecodeErrorKind::ContentDisallowed {
                content_type: ct.to_string(),
                short: short_content_name(ct).to_string(),
            }));
        }
        if let Some(c) = headers.get("compression").filter(|v| !v.is_null()) {
            return Err(with_hints(DecodeErrorKind::UnsupportedCompression(
                c.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| c.to_string()),
            )));
        }
        let body = json::parse_lenient(&msg.body)
            .map_err(|e| with_hints(DecodeErrorKind::InvalidJson(e.to_string())))?;
        // Protocol v1 (and "hybrid" messages): the task lives in the body object.
        if let Value::Object(obj) = body {
            return decode_v1(obj, msg).map_err(&with_hints);
        }
        let Value::Array(parts) = body else {
            return Err(with_hints(DecodeErrorKind::BodyShape(format!(
                "expected [args, kwargs, embed], got {}",
                kind_of(&body)
            ))));
        };
        let n = parts.len();
        if !(2..=3).contains(&n) {
            return Err(with_hints(DecodeErrorKind::BodyShape(format!(
                "expected [args, kwargs, embed], got an array of {n} elements"
            ))));
        }
        let mut parts = parts.into_iter();
        let args = match parts.next() {
            Some(Value::Array(a)) => a,
            Some(Value::Null) => Vec::new(),
            Some(other) => {
                return Err(with_hints(DecodeErrorKind::BodyShape(format!(
                    "args must be an array, got {}",
                    kind_of(&other)
                ))))
            }
            None => Vec::new(),
        };
        let kwargs = match parts.next() {
            Some(Value::Object(k)) => k,
            Some(Value::Null) => Map::new(),
            Some(other) => {
                return Err(with_hints(DecodeErrorKind::BodyShape(format!(
                    "kwargs must be an object, got {}",
                    kind_of(&other)
                ))))
            }
            None => Map::new(),
        };
        let embed = match parts.next() {
            Some(v) => decode_embed(v).map_err(&with_hints)?,
            None => Embed::default(),
        };
        let headers = decode_headers(headers).map_err(&with_hints)?;
        Ok(Self {
            headers,
            args,
            kwargs,
            embed,
            properties: msg.properties.clone(),
        })
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn decode_embed(v: Value) -> Result<Embed, DecodeErrorKind> {
    let obj = match v {
        Value::Null => return Ok(Embed::default()),
        Value::Object(o) => o,
        other => {
            return Err(DecodeErrorKind::BodyShape(format!(
                "embed must be an object, got {}",
                kind_of(&other)
            )))
        }
    };
    let list = |key: &str| -> Result<Option<Vec<Signature>>, DecodeErrorKind> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| serde_json::from_value(i.clone()))
                .collect::<Result<Vec<Signature>, _>>()
                .map(Some)
                .map_err(|e| {
                    DecodeErrorKind::BodyShape(format!(
                        "embed `{key}` holds an invalid signature: {e}"
                    ))
                }),
            Some(other) => Err(DecodeErrorKind::BodyShape(format!(
                "embed `{key}` must be a list of signatures, got {}",
                kind_of(other)
            ))),
        }
    };
    let chord = match obj.get("chord") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Box::new(serde_json::from_value(v.clone()).map_err(
            |e| DecodeErrorKind::BodyShape(format!("embed `chord` is not a signature: {e}")),
        )?)),
    };
    Ok(Embed {
        callbacks: list("callbacks")?,
        errbacks: list("errbacks")?,
        chain: list("chain")?,
        chord,
    })
}

/// The header names decoded into typed fields; everything else goes to `extra`.
pub const KNOWN_HEADERS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

fn bad(name: &'static str, reason: impl Into<String>) -> DecodeErrorKind {
    DecodeErrorKind::BadHeader {
        name,
        reason: reason.into(),
    }
}

fn get_str(h: &Map<String, Value>, name: &'static str) -> Result<Option<String>, DecodeErrorKind> {
    match h.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(
            name,
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn get_uint(h: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, DecodeErrorKind> {
    match h.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| bad(name, format!("expected a non-negative integer, got {n}"))),
        Some(other) => Err(bad(
            name,
            format!("expected an integer, got {}", kind_of(other)),
        )),
    }
}

fn get_time(
    h: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<DateTime<Utc>>, DecodeErrorKind> {
    match get_str(h, name)? {
        None => Ok(None),
        Some(s) => time::parse_iso(&s)
            .map(Some)
            .ok_or_else(|| bad(name, format!("{s:?} is not an ISO-8601 time"))),
    }
}

fn decode_headers(h: &Map<String, Value>) -> Result<TaskHeaders, DecodeErrorKind> {
    let task = get_str(h, "task")?.ok_or(DecodeErrorKind::MissingHeader("task"))?;
    let id = get_str(h, "id")?.ok_or(DecodeErrorKind::MissingHeader("id"))?;
    if id.is_empty() {
        return Err(bad("id", "empty"));
    }
    if task.is_empty() {
        return Err(bad("task", "empty"));
    }
    let timelimit = match h.get("timelimit") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Array(a)) if a.len() <= 2 => {
            let el = |i: usize| -> Result<Option<f64>, DecodeErrorKind> {
                match a.get(i) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Number(n)) => Ok(n.as_f64()),
                    Some(other) => Err(bad(
                        "timelimit",
                        format!("expected numbers, got {}", kind_of(other)),
                    )),
                }
            };
            (el(0)?, el(1)?)
        }
        Some(other) => {
            return Err(bad(
                "timelimit",
                format!("expected [hard, soft], got {other}"),
            ))
        }
    };
    let ignore_result = match h.get("ignore_result") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(bad(
                "ignore_result",
                format!("expected a boolean, got {}", kind_of(other)),
            ))
        }
    };
    let stamped_headers = match h.get("stamped_headers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        Some(other) => {
            return Err(bad(
                "stamped_headers",
                format!("expected a list, got {}", kind_of(other)),
            ))
        }
    };
    let stamps = match h.get("stamps") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(other) => {
            return Err(bad(
                "stamps",
                format!("expected an object, got {}", kind_of(other)),
            ))
        }
    };
    let small = |name: &'static str| -> Result<u32, DecodeErrorKind> {
        Ok(get_uint(h, name)?.unwrap_or(0).min(u64::from(u32::MAX)) as u32)
    };
    let extra = h
        .iter()
        .filter(|(k, _)| !KNOWN_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(TaskHeaders {
        lang: get_str(h, "lang")?.unwrap_or_else(|| "py".into()),
        task,
        id,
        shadow: get_str(h, "shadow")?,
        eta: get_time(h, "eta")?,
        expires: get_time(h, "expires")?,
        group: get_str(h, "group")?,
        group_index: get_uint(h, "group_index")?,
        retries: small("retries")?,
        timelimit,
        root_id: get_str(h, "root_id")?,
        parent_id: get_str(h, "parent_id")?,
        argsrepr: get_str(h, "argsrepr")?,
        kwargsrepr: get_str(h, "kwargsrepr")?,
        origin: get_str(h, "origin")?,
        ignore_result,
        replaced_task_nesting: small("replaced_task_nesting")?,
        stamped_headers,
        stamps,
        extra,
    })
}

/// Protocol v1: `{"task", "id", "args", "kwargs", "eta", "expires", "retries", "taskset",
/// "callbacks", "errbacks", "chord", "timelimit", ...}` in the body. Headers may be empty
/// (v1) or carry `task` too ("hybrid"); the body's fields fill in what headers lack.
fn decode_v1(body: Map<String, Value>, msg: &Message) -> Result<TaskMessage, DecodeErrorKind> {
    let mut h = msg.headers.clone();
    for key in [
        "task",
        "id",
        "eta",
        "expires",
        "retries",
        "timelimit",
        "group_index",
        "root_id",
        "parent_id",
    ] {
        if let Some(v) = body.get(key) {
            h.entry(key.to_string()).or_insert_with(|| v.clone());
        }
    }
    if let Some(g) = body.get("taskset").or_else(|| body.get("group")) {
        h.entry("group".to_string()).or_insert_with(|| g.clone());
    }
    let args = match body.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            return Err(DecodeErrorKind::BodyShape(format!(
                "args must be an array, got {}",
                kind_of(other)
            )))
        }
    };
    let kwargs = match body.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(k)) => k.clone(),
        Some(other) => {
            return Err(DecodeErrorKind::BodyShape(format!(
                "kwargs must be an object, got {}",
                kind_of(other)
            )))
        }
    };
    let mut embed_src = Map::new();
    for key in ["callbacks", "errbacks", "chord"] {
        if let Some(v) = body.get(key) {
            embed_src.insert(key.to_string(), v.clone());
        }
    }
    let embed = decode_embed(Value::Object(embed_src))?;
    let headers = decode_headers(&h)?;
    Ok(TaskMessage {
        headers,
        args,
        kwargs,
        embed,
        properties: msg.properties.clone(),
    })
}
