//! `Signature`: a task call that has not run yet — name, arguments and `apply_async`
//! options. It is the unit clients send and the dict that travels inside messages
//! (callbacks, chains, chord bodies), so its serialized form is exactly Celery's
//! `{"task", "args", "kwargs", "options", "subtask_type", "immutable"}`.
//!
//! Options are kept as the JSON object Celery uses (its keys are `apply_async` keyword
//! names) rather than a struct, so a signature received from Python and sent on again
//! keeps every option, including ones celeriac does not interpret.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time;

/// A task call that has not run: task name, arguments and options.
///
/// Build one with a task's generated `new` (`add::new(2, 3)`) or [`Signature::new`], set
/// options with the builder methods, and send it with [`Signature::apply_async`].
///
/// ```
/// use celeriac_core::Signature;
/// let sig = Signature::new("tasks.add").args(vec![2.into(), 3.into()]).countdown(10.0).queue("q2");
/// assert_eq!(sig.option("queue"), Some(&"q2".into()));
/// assert_eq!(serde_json::to_string(&Signature::new("tasks.noop")).unwrap(),
///     r#"{"task":"tasks.noop","args":[],"kwargs":{},"options":{},"subtask_type":null,"immutable":false}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    /// Registered task name.
    pub task: String,
    /// Positional arguments (a parent's result is prepended unless `immutable`).
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// `apply_async` options, keyed by Celery's option names.
    #[serde(default)]
    pub options: Map<String, Value>,
    /// `null` for a task; `group`, `chord`, `chain`, ... for canvas primitives.
    #[serde(default)]
    pub subtask_type: Option<String>,
    /// When true, a parent's result is not prepended to `args`.
    #[serde(default)]
    pub immutable: bool,
    /// Set when the typed arguments could not be encoded; sending fails with it.
    #[serde(skip)]
    pub encode_error: Option<String>,
}

/// Something that can send a signature: the facade's `App` implements it, so
/// `signature.apply_async(&app)` works without importing a trait.
pub trait Apply {
    /// What sending returns (an `AsyncResult` handle).
    type Output;
    /// What can go wrong.
    type Error;
    /// Sends `signature` and returns a handle to its result.
    fn apply_signature(
        &self,
        signature: Signature,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;
}

impl Signature {
    /// A call of `task` with no arguments.
    pub fn new(task: impl Into<String>) -> Self {
        Self {
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: Map::new(),
            subtask_type: None,
            immutable: false,
            encode_error: None,
        }
    }

    /// Sets the positional arguments.
    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Sets the keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Adds one keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.kwargs.insert(name.into(), value.into());
        self
    }

    /// Sets any `apply_async` option by its Celery name.
    pub fn set_option(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.options.insert(name.into(), value.into());
        self
    }

    /// Reads an option.
    pub fn option(&self, name: &str) -> Option<&Value> {
        self.options.get(name).filter(|v| !v.is_null())
    }

    /// Runs the task `secs` seconds from when it is sent.
    pub fn countdown(self, secs: f64) -> Self {
        self.set_option("countdown", secs)
    }

    /// Runs the task no earlier than `at`.
    pub fn eta(self, at: DateTime<Utc>) -> Self {
        self.set_option("eta", time::isoformat(&at))
    }

    /// Does not run the task after `at`: a worker that gets it later marks it REVOKED.
    pub fn expires_at(self, at: DateTime<Utc>) -> Self {
        self.set_option("expires", time::isoformat(&at))
    }

    /// Does not run the task if it has not started `secs` seconds after it was sent.
    pub fn expires(self, secs: f64) -> Self {
        self.set_option("expires", secs)
    }

    /// Sends to this queue instead of the routed one.
    pub fn queue(self, queue: impl Into<String>) -> Self {
        self.set_option("queue", queue.into())
    }

    /// Message priority 0..=9 (on Redis and memory://, 0 is served first).
    pub fn priority(self, priority: u8) -> Self {
        self.set_option("priority", priority.min(9))
    }

    /// Uses this task id instead of a new UUID.
    pub fn task_id(self, id: impl Into<String>) -> Self {
        self.set_option("task_id", id.into())
    }

    /// Stores no result for this call.
    pub fn ignore_result(self, ignore: bool) -> Self {
        self.set_option("ignore_result", ignore)
    }

    /// Hard time limit in seconds.
    pub fn time_limit(self, secs: f64) -> Self {
        self.set_option("time_limit", secs)
    }

    /// Soft time limit in seconds.
    pub fn soft_time_limit(self, secs: f64) -> Self {
        self.set_option("soft_time_limit", secs)
    }

    /// Name shown in logs instead of the task name.
    pub fn shadow(self, name: impl Into<String>) -> Self {
        self.set_option("shadow", name.into())
    }

    /// Adds a custom message header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let headers = self
            .options
            .entry("headers")
            .or_insert_with(|| Value::Object(Map::new()));
        if !headers.is_object() {
            *headers = Value::Object(Map::new());
        }
        if let Value::Object(h) = headers {
            h.insert(name.into(), value.into());
        }
        self
    }

    /// Adds a callback run with this task's result when it succeeds.
    pub fn link(self, callback: Signature) -> Self {
        self.push_option_list("link", callback)
    }

    /// Adds an errback run with this task's id when it fails.
    pub fn link_error(self, errback: Signature) -> Self {
        self.push_option_list("link_error", errback)
    }

    fn push_option_list(mut self, key: &str, sig: Signature) -> Self {
        let value = serde_json::to_value(&sig).unwrap_or(Value::Null);
        match self.options.get_mut(key) {
            Some(Value::Array(items)) => items.push(value),
            _ => {
                self.options
                    .insert(key.to_string(), Value::Array(vec![value]));
            }
        }
        self
    }

    /// Marks the signature immutable: a parent's result is not prepended (`.si()`).
    pub fn set_immutable(mut self, immutable: bool) -> Self {
        self.immutable = immutable;
        self
    }

    /// Sends the call through `app` and returns a handle to its result.
    pub async fn apply_async<A: Apply>(self, app: &A) -> Result<A::Output, A::Error> {
        app.apply_signature(self).await
    }

    /// Same as [`apply_async`](Self::apply_async): Celery's shortcut name.
    pub async fn delay<A: Apply>(self, app: &A) -> Result<A::Output, A::Error> {
        app.apply_signature(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_python_signature_dict() {
        let text = r#"{"task": "tasks.mul", "args": [10], "kwargs": {}, "options": {"task_id": "3b42", "link_error": [{"task": "tasks.echo", "args": ["err"], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true}]}, "subtask_type": null, "immutable": false, "chord_size": 2}"#;
        let sig: Signature = serde_json::from_str(text).unwrap();
        assert_eq!(sig.task, "tasks.mul");
        assert_eq!(sig.args, vec![json!(10)]);
        assert_eq!(sig.option("task_id"), Some(&json!("3b42")));
        assert!(!sig.immutable);
        let back = serde_json::to_value(&sig).unwrap();
        assert_eq!(back["options"]["link_error"][0]["immutable"], json!(true));
    }

    #[test]
    fn builder_sets_celery_option_names() {
        let sig = Signature::new("t")
            .countdown(1.5)
            .priority(12)
            .header("x-a", 1)
            .link(Signature::new("cb"))
            .link(Signature::new("cb2"));
        assert_eq!(sig.option("countdown"), Some(&json!(1.5)));
        assert_eq!(sig.option("priority"), Some(&json!(9)));
        assert_eq!(sig.options["headers"], json!({"x-a": 1}));
        assert_eq!(sig.options["link"].as_array().unwrap().len(), 2);
    }
}
