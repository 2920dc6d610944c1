//! Task states and the result record ("task meta") every result backend stores, in the
//! exact JSON shape Celery's backends write, so Python clients read celeriac's results and
//! celeriac reads Python's.
//!
//! Field order matters to byte-level tools and is the order of the struct fields:
//! `status, result, traceback, children, date_done, [group_id], [parent_id],
//! [name, args, kwargs, worker, retries, queue], task_id`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::time;

/// The state of a task, as stored in the result backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    /// Unknown to the backend: not yet run, or its result expired or was forgotten.
    Pending,
    /// Received by a worker (events only, never stored by Celery).
    Received,
    /// Running (stored only when `track_started` is on).
    Started,
    /// Failed and re-sent to run again.
    Retry,
    /// Finished with a result.
    Success,
    /// Finished with an error.
    Failure,
    /// Not run: revoked or expired.
    Revoked,
    /// Rejected by the task.
    Rejected,
    /// Ignored by the task.
    Ignored,
    /// A state set by the task itself (`update_state`), e.g. `PROGRESS`.
    Custom(String),
}

impl State {
    /// The state's name as stored (`"SUCCESS"`).
    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
            State::Rejected => "REJECTED",
            State::Ignored => "IGNORED",
            State::Custom(s) => s,
        }
    }

    /// Parses a stored state name; unknown names become [`State::Custom`].
    pub fn parse(name: &str) -> State {
        match name {
            "PENDING" => State::Pending,
            "RECEIVED" => State::Received,
            "STARTED" => State::Started,
            "RETRY" => State::Retry,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "REVOKED" => State::Revoked,
            "REJECTED" => State::Rejected,
            "IGNORED" => State::Ignored,
            other => State::Custom(other.to_string()),
        }
    }

    /// Whether the task is finished: SUCCESS, FAILURE or REVOKED (Celery's READY_STATES).
    pub fn is_ready(&self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// Whether a waiter should get an exception: FAILURE or REVOKED.
    pub fn is_exception(&self) -> bool {
        matches!(self, State::Failure | State::Revoked)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(State::parse(&s))
    }
}

/// The Python module of Celery's own exceptions (`TaskRevokedError`, `ChordError`,
/// `TimeLimitExceeded`, `NotRegistered`, …).
pub const CELERY_EXCEPTIONS: &str = "celery.exceptions";

/// An exception as Celery serializes it: `{"exc_type", "exc_message", "exc_module"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// Class name, e.g. `ValueError`.
    pub exc_type: String,
    /// The exception's args; usually a one-element array holding the message.
    #[serde(default)]
    pub exc_message: Value,
    /// Module of the class (`builtins`, `celery.exceptions`, `celeriac.exceptions`).
    #[serde(default)]
    pub exc_module: Option<String>,
}

impl ExceptionInfo {
    /// An exception with one message argument.
    pub fn new(
        exc_type: impl Into<String>,
        module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_message: json!([message.into()]),
            exc_module: Some(module.into()),
        }
    }

    /// One of Celery's own exceptions (module `celery.exceptions`), e.g.
    /// `ExceptionInfo::celery("ChordError", "Dependency … raised …")`.
    pub fn celery(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(exc_type, CELERY_EXCEPTIONS, message)
    }

    /// Celery's `TaskRevokedError(reason)`: what a REVOKED record holds (`"revoked"`,
    /// `"expired"`, `"terminated"`).
    pub fn revoked(reason: impl Into<String>) -> Self {
        Self::celery("TaskRevokedError", reason)
    }

    /// The message as one line: the single string argument, or the args joined.
    pub fn message(&self) -> String {
        match &self.exc_message {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.len() == 1 => match &items[0] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    /// Python's `repr()` of the exception: `ValueError('boom')` — what Celery writes into
    /// messages such as a chord's `Dependency <id> raised ValueError('boom')`.
    ///
    /// ```
    /// use celeriac_core::ExceptionInfo;
    /// assert_eq!(ExceptionInfo::new("ValueError", "builtins", "boom").python_repr(), "ValueError('boom')");
    /// ```
    pub fn python_repr(&self) -> String {
        let args: Vec<Value> = match &self.exc_message {
            Value::Array(items) => items.clone(),
            Value::Null => Vec::new(),
            other => vec![other.clone()],
        };
        let tuple = crate::protocol::json::args_repr(&args);
        // "(a,)" / "(a, b)" / "()" → "a" / "a, b" / "".
        let inner = tuple
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(&tuple);
        let inner = if args.len() == 1 {
            inner.strip_suffix(',').unwrap_or(inner)
        } else {
            inner
        };
        format!("{}({inner})", self.exc_type)
    }

    /// Reads an exception dict out of a stored `result` value, if it is one.
    pub fn from_value(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        obj.get("exc_type")?.as_str()?;
        serde_json::from_value(v.clone()).ok()
    }

    /// This exception as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("exc_type".into(), Value::String(self.exc_type.clone()));
        m.insert("exc_message".into(), self.exc_message.clone());
        m.insert(
            "exc_module".into(),
            self.exc_module
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        Value::Object(m)
    }
}

impl fmt::Display for ExceptionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message())
    }
}

/// The result record of one task, exactly as Celery's key-value backends store it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// The task's state.
    pub status: State,
    /// Return value, an exception dict for FAILURE/REVOKED, or state details.
    #[serde(default)]
    pub result: Value,
    /// Traceback text for failures and retries.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Child result tuples; `[]` for a task that ran, `null` for one that never started.
    #[serde(default)]
    pub children: Value,
    /// When the task reached a ready state (UTC); `null` otherwise.
    #[serde(default, with = "opt_iso")]
    pub date_done: Option<DateTime<Utc>>,
    /// The group or chord the task belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The task that sent this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Task name (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Positional args as executed (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Keyword args as executed (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Value>,
    /// Worker node name (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Retry count (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Queue the task came from (`result_extended` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The task id; always last.
    pub task_id: String,
    /// Where the request asked for its result to be sent (its `reply_to` and
    /// `correlation_id` properties): used by the `rpc://` backend, which sends results
    /// as messages; never part of the stored record.
    #[serde(skip)]
    pub reply: Option<ReplyTo>,
}

/// The reply address of a task request (the AMQP `reply_to` and `correlation_id`
/// properties of its message), for backends that send results back as messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The queue the result goes to: the sending client's oid.
    pub queue: String,
    /// What the client matches results on: the task id, unless the request said otherwise.
    pub correlation_id: String,
}

impl TaskMeta {
    /// A record in `status` for `task_id`, with `date_done` set when the state is ready.
    pub fn new(task_id: impl Into<String>, status: State, result: Value) -> Self {
        let date_done = status.is_ready().then(Utc::now);
        Self {
            status,
            result,
            traceback: None,
            children: json!([]),
            date_done,
            group_id: None,
            parent_id: None,
            name: None,
            args: None,
            kwargs: None,
            worker: None,
            retries: None,
            queue: None,
            task_id: task_id.into(),
            reply: None,
        }
    }

    /// What a backend reports for a task it has no record of.
    pub fn pending(task_id: impl Into<String>) -> Self {
        let mut m = Self::new(task_id, State::Pending, Value::Null);
        m.children = Value::Null;
        m
    }

    /// A SUCCESS record.
    pub fn success(task_id: impl Into<String>, result: Value) -> Self {
        Self::new(task_id, State::Success, result)
    }

    /// A FAILURE record for an exception.
    pub fn failure(
        task_id: impl Into<String>,
        exc: &ExceptionInfo,
        traceback: Option<String>,
    ) -> Self {
        let mut m = Self::new(task_id, State::Failure, exc.to_value());
        m.traceback = traceback;
        m
    }

    /// The exception of a FAILURE/REVOKED/RETRY record, if the result holds one.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        ExceptionInfo::from_value(&self.result)
    }

    /// The record as the JSON bytes a backend stores and publishes.
    pub fn to_json(&self) -> Vec<u8> {
        // A TaskMeta holds only strings, JSON values and dates: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a stored record.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

mod opt_iso {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        v: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&time::isoformat(t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        let v = Option::<String>::deserialize(d)?;
        Ok(v.and_then(|s| time::parse_iso(&s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn record_has_celerys_key_order() {
        let mut m = TaskMeta::success("5ddf1b36", json!(5));
        m.date_done = Some(Utc.with_ymd_and_hms(2026, 11, 23, 19, 29, 9).unwrap());
        assert_eq!(
            String::from_utf8(m.to_json()).unwrap(),
            r#"{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":"2026-11-23T19:29:09+00:00","task_id":"5ddf1b36"}"#
        );
        m.group_id = Some("g".into());
        m.parent_id = Some("p".into());
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(
            text.ends_with(r#""group_id":"g","parent_id":"p","task_id":"5ddf1b36"}"#),
            "{text}"
        );
    }

    #[test]
    fn reads_python_records() {
        let text = br#"{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}, "traceback": "Traceback ...", "children": [], "date_done": "2026-11-23T19:30:12.997402+00:00", "task_id": "4b397709"}"#;
        let m = TaskMeta::from_json(text).unwrap();
        assert_eq!(m.status, State::Failure);
        let exc = m.exception().unwrap();
        assert_eq!(exc.exc_type, "ValueError");
        assert_eq!(exc.message(), "boom");
        assert_eq!(exc.to_string(), "ValueError: boom");
        let custom = TaskMeta::from_json(
            br#"{"status": "PROGRESS", "result": {"done": 3}, "task_id": "x"}"#,
        )
        .unwrap();
        assert_eq!(custom.status, State::Custom("PROGRESS".into()));
        assert!(!custom.status.is_ready());
    }

    #[test]
    fn revoked_is_celerys_task_revoked_error() {
        let v = ExceptionInfo::revoked("expired").to_value();
        assert_eq!(
            v,
            json!({"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"})
        );
    }
}
