//! Celery task message protocol v2: the one place task messages are encoded and decoded.
//!
//! A [`TaskMessage`] is the typed view of a task: the 19 protocol v2 headers, the body
//! `[args, kwargs, embed]`, and the properties. [`TaskMessage::encode`] turns it into the
//! transport [`Message`] every broker moves, in the exact shape Python Celery 5.7 sends
//! (header order included); [`TaskMessage::decode`] reads any message a Celery client may
//! send (including protocol v1 and messages with only `task` and `id`) and returns a
//! [`DecodeError`] — never a panic — for everything else: other content types (pickle is
//! refused, never executed), bodies that are not JSON or not `[args, kwargs, embed]`,
//! missing `task`/`id`, headers of the wrong type, unparseable `eta`/`expires`.
//!
//! Headers are decoded by hand rather than with a derived `Deserialize`: each wrong field
//! gets an error that names it, unknown headers are kept in order, and loosely typed
//! values Python tolerates (`retries: 1.0`) are accepted.

pub mod envelope;
pub mod json;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::message::{DeliveryInfo, Message, Properties, CONTENT_TYPE_JSON};
use crate::routing::Route;
use crate::signature::Signature;
use crate::time;

/// Content type of Python's pickle serializer: refused, never executed.
pub const CONTENT_TYPE_PICKLE: &str = "application/x-python-serialize";

/// A decoded protocol v2 task message.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// The task headers.
    pub headers: TaskHeaders,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Workflow continuation: callbacks, errbacks, chain, chord.
    pub embed: Embed,
    /// Message properties (correlation id, reply-to, routing, priority).
    pub properties: Properties,
}

/// The protocol v2 headers, in the order Celery sends them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHeaders {
    /// Sender's language, `"py"` by convention.
    pub lang: String,
    /// Registered task name.
    pub task: String,
    /// Task id (UUID text).
    pub id: String,
    /// Display name used instead of `task` in logs.
    pub shadow: Option<String>,
    /// Earliest time to run.
    pub eta: Option<DateTime<Utc>>,
    /// Time after which the task must not run.
    pub expires: Option<DateTime<Utc>>,
    /// Group (or chord header) the task belongs to.
    pub group: Option<String>,
    /// Position within the group.
    pub group_index: Option<u64>,
    /// How many times the task has been retried.
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    /// First task of the workflow.
    pub root_id: Option<String>,
    /// Task that sent this one.
    pub parent_id: Option<String>,
    /// Python repr of the args, for display.
    pub argsrepr: Option<String>,
    /// Python repr of the kwargs, for display.
    pub kwargsrepr: Option<String>,
    /// Node name of the sending process (`gen<pid>@<host>`).
    pub origin: Option<String>,
    /// Per-call override of result storing; `None` means the task's own setting.
    pub ignore_result: Option<bool>,
    /// How many times the task was replaced.
    pub replaced_task_nesting: u32,
    /// Names of canvas stamps.
    pub stamped_headers: Option<Vec<String>>,
    /// Stamp values.
    pub stamps: Map<String, Value>,
    /// Any other header (`x-custom`, ...), in order.
    pub extra: Map<String, Value>,
}

impl TaskHeaders {
    /// Headers for a new top-level call of `task` with id `id`.
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            lang: "py".into(),
            task: task.into(),
            root_id: Some(id.clone()),
            id,
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: (None, None),
            parent_id: None,
            argsrepr: None,
            kwargsrepr: None,
            origin: None,
            ignore_result: None,
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Map::new(),
            extra: Map::new(),
        }
    }
}

/// The third body element: how the workflow continues.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Embed {
    /// Run on success with the result prepended (`link`).
    pub callbacks: Option<Vec<Signature>>,
    /// Run on failure with the task id prepended (`link_error`).
    pub errbacks: Option<Vec<Signature>>,
    /// Remaining chain steps, in reverse order (the last one runs next).
    pub chain: Option<Vec<Signature>>,
    /// Chord body, when this task is a chord header member.
    pub chord: Option<Box<Signature>>,
}

/// Why a message is not a task message celeriac can run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// The task id, when the headers had one (so a FAILURE can be stored for it).
    pub task_id: Option<String>,
    /// The task name, when the headers had one.
    pub task_name: Option<String>,
}

/// The kinds of [`DecodeError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// A serializer other than JSON; pickle lands here and is never executed.
    #[error("refusing to deserialize untrusted content of type {short} ({content_type})")]
    ContentDisallowed {
        /// The MIME type.
        content_type: String,
        /// Celery's short name for it (`pickle`, `yaml`, `msgpack`).
        short: String,
    },
    /// A `compression` header celeriac does not decompress.
    #[error("unsupported compression `{0}`")]
    UnsupportedCompression(String),
    /// The body is not valid JSON (or not UTF-8).
    #[error("can't decode message body: {0}")]
    InvalidJson(String),
    /// The body is JSON but not `[args, kwargs, embed]`.
    #[error("message body has the wrong shape: {0}")]
    BodyShape(String),
    /// A required header (`task` or `id`) is absent.
    #[error("message has no `{0}` header")]
    MissingHeader(&'static str),
    /// A header has a value of the wrong type or an unparseable time.
    #[error("header `{name}` is invalid: {reason}")]
    BadHeader {
        /// The header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// An error of `kind` with no task id or name known.
    pub fn new(kind: DecodeErrorKind) -> Self {
        Self {
            kind,
            task_id: None,
            task_name: None,
        }
    }

    /// Celery's exception class name for this error, used in the FAILURE record.
    pub fn exc_type(&self) -> &'static str {
        match self.kind {
            DecodeErrorKind::ContentDisallowed { .. } => "ContentDisallowed",
            DecodeErrorKind::InvalidJson(_) | DecodeErrorKind::UnsupportedCompression(_) => {
                "DecodeError"
            }
            _ => "InvalidTaskError",
        }
    }

    /// The Python module of [`exc_type`](Self::exc_type).
    pub fn exc_module(&self) -> &'static str {
        match self.kind {
            DecodeErrorKind::ContentDisallowed { .. } => "kombu.exceptions",
            DecodeErrorKind::InvalidJson(_) | DecodeErrorKind::UnsupportedCompression(_) => {
                "kombu.exceptions"
            }
            _ => crate::state::CELERY_EXCEPTIONS,
        }
    }
}

/// Why a signature could not be turned into a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot send `{task}`: {reason}")]
pub struct SignatureError {
    /// The task name.
    pub task: String,
    /// What is wrong.
    pub reason: String,
}

/// What a sender contributes to every message it builds.
#[derive(Debug, Clone, Default)]
pub struct SendContext<'a> {
    /// `gen<pid>@<host>` of the sending process.
    pub origin: &'a str,
    /// The sending process's reply-to id.
    pub reply_to: &'a str,
    /// Id and root id of the task sending this one, when sent from inside a task.
    pub parent: Option<(&'a str, &'a str)>,
    /// `ignore_result` to send when the signature does not say (`None` = task's default).
    pub ignore_result: Option<bool>,
}

fn short_content_name(content_type: &str) -> &str {
    match content_type {
        CONTENT_TYPE_PICKLE => "pickle",
        "application/x-yaml" => "yaml",
        "application/x-msgpack" => "msgpack",
        other => other,
    }
}

impl TaskMessage {
    /// Builds the message for sending `sig` along `route`.
    ///
    /// `countdown` becomes an absolute `eta`, `expires` in seconds an absolute time, a
    /// missing `task_id` a new UUID4, and `link`/`link_error`/`chain`/`chord` options the
    /// embed, exactly as Celery's `apply_async` does.
    pub fn from_signature(
        sig: &Signature,
        route: &Route,
        ctx: &SendContext<'_>,
    ) -> Result<Self, SignatureError> {
        let err = |reason: String| SignatureError {
            task: sig.task.clone(),
            reason,
        };
        if let Some(e) = &sig.encode_error {
            return Err(err(e.clone()));
        }
        if sig.task.is_empty() {
            return Err(err("the task name is empty".into()));
        }
        let opt_str = |key: &str| -> Result<Option<String>, SignatureError> {
            match sig.option(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(err(format!("option `{key}` must be a string, got {other}"))),
            }
        };
        let opt_f64 = |key: &str| -> Result<Option<f64>, SignatureError> {
            match sig.option(key) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    err(format!(
                        "option `{key}` must be a number of seconds, got {v}"
                    ))
                }),
            }
        };
        let now = Utc::now();
        let id = opt_str("task_id")?.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut h = TaskHeaders::new(sig.task.clone(), id.clone());
        h.eta = match sig.option("eta") {
            Some(Value::String(s)) => Some(
                time::parse_iso(s)
                    .ok_or_else(|| err(format!("option `eta` is not an ISO-8601 time: {s:?}")))?,
            ),
            Some(other) => {
                return Err(err(format!(
                    "option `eta` must be an ISO-8601 string, got {other}"
                )))
            }
            None => opt_f64("countdown")?.map(|secs| now + time::seconds(secs)),
        };
        h.expires =
            match sig.option("expires") {
                Some(Value::String(s)) => Some(time::parse_iso(s).ok_or_else(|| {
                    err(format!("option `expires` is not an ISO-8601 time: {s:?}"))
                })?),
                Some(_) => opt_f64("expires")?.map(|secs| now + time::seconds(secs)),
                None => None,
            };
        h.shadow = opt_str("shadow")?;
        h.group = opt_str("group_id")?;
        h.group_index = sig.option("group_index").and_then(Value::as_u64);
        h.timelimit = (opt_f64("time_limit")?, opt_f64("soft_time_limit")?);
        match &ctx.parent {
            Some((parent_id, root_id)) => {
                h.parent_id = Some(parent_id.to_string());
                h.root_id = Some(root_id.to_string());
            }
            None => h.root_id = Some(id.clone()),
        }
        if let Some(root) = opt_str("root_id")? {
            h.root_id = Some(root);
        }
        if let Some(parent) = opt_str("parent_id")? {
            h.parent_id = Some(parent);
        }
        h.argsrepr = Some(json::args_repr(&sig.args));
        h.kwargsrepr = Some(json::kwargs_repr(&sig.kwargs));
        h.origin = Some(ctx.origin.to_string());
        h.ignore_result = match sig.option("ignore_result") {
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(err(format!(
                    "option `ignore_result` must be a boolean, got {other}"
                )))
            }
            None => ctx.ignore_result,
        };
        if let Some(Value::Array(names)) = sig.option("stamped_headers") {
            let names: Vec<String> = names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            for n in &names {
                if let Some(v) = sig.option(n) {
                    h.stamps.insert(n.clone(), v.clone());
                }
            }
            h.stamped_headers = Some(names);
        }
        match sig.option("headers") {
            Some(Value::Object(extra)) => {
                for (k, v) in extra {
                    h.extra.insert(k.clone(), v.clone());
                }
            }
            Some(other) => {
                return Err(err(format!(
                    "option `headers` must be an object, got {other}"
                )))
            }
            None => {}
        }
        let sig_list = |key: &str| -> Result<Option<Vec<Signature>>, SignatureError> {
            match sig.option(key) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| serde_json::from_value(v.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
                    .map_err(|e| err(format!("option `{key}` holds an invalid signature: {e}"))),
                Some(single @ Value::Object(_)) => serde_json::from_value(single.clone())
                    .map(|s| Some(vec![s]))
                    .map_err(|e| err(format!("option `{key}` is not a signature: {e}"))),
                Some(other) => Err(err(format!(
                    "option `{key}` must be a signature or a list, got {other}"
                ))),
            }
        };
        let embed = Embed {
            callbacks: sig_list("link")?,
            errbacks: sig_list("link_error")?,
            chain: sig_list("chain")?,
            chord: match sig.option("chord") {
                None => None,
                Some(v) => Some(Box::new(
                    serde_json::from_value(v.clone())
                        .map_err(|e| err(format!("option `chord` is not a signature: {e}")))?,
                )),
            },
        };
        let mut properties = Properties {
            correlation_id: Some(id),
            reply_to: Some(opt_str("reply_to")?.unwrap_or_else(|| ctx.reply_to.to_string())),
            delivery_info: DeliveryInfo {
                exchange: route.exchange.clone(),
                routing_key: route.routing_key.clone(),
                redelivered: None,
            },
            priority: Some(route.priority.unwrap_or(0)),
            ..Properties::default()
        };
        if let Some(expires) = h.expires {
            let ms = (expires - now).num_milliseconds().max(0);
            properties.expiration = Some(ms.to_string());
        }
        Ok(Self {
            headers: h,
            args: sig.args.clone(),
            kwargs: sig.kwargs.clone(),
            embed,
            properties,
        })
    }

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

fn number(f: f64) -> Option<Value> {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(Value::from(f as i64))
    } else {
        serde_json::Number::from_f64(f).map(Value::Number)
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
const KNOWN_HEADERS: [&str; 19] = [
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

#[cfg(test)]
mod tests;
