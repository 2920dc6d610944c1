//! The [`Task`] trait — what `#[celeriac::task]` implements for each task function — its
//! per-task settings ([`TaskConfig`]), and the binding of a message's `args`/`kwargs` to
//! typed parameters with Python's calling rules ([`Arguments`]).
//!
//! The trait is object-safe so an `App` can hold tasks of every signature in one registry
//! (`Arc<dyn Task>`). A task hands back an [`Invocation`]: a future for `async fn`s (run on
//! the runtime) or a closure for plain `fn`s (run on a blocking thread), so the worker
//! decides where it runs.

use std::fmt;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::context::TaskContext;
use crate::error::TaskError;

/// What running a task produces: its JSON result, or why it has none.
pub type TaskOutput = Result<Value, TaskError>;

/// A task body ready to run.
pub enum Invocation {
    /// An `async fn` task: poll it on the runtime.
    Async(BoxFuture<'static, TaskOutput>),
    /// A plain `fn` task: call it on a blocking thread.
    Blocking(Box<dyn FnOnce() -> TaskOutput + Send + 'static>),
    /// Already finished (e.g. the arguments did not bind).
    Ready(TaskOutput),
}

impl fmt::Debug for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invocation::Async(_) => "Invocation::Async",
            Invocation::Blocking(_) => "Invocation::Blocking",
            Invocation::Ready(_) => "Invocation::Ready",
        })
    }
}

/// Whether a task is an `async fn` or a plain (blocking) `fn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Runs on the async runtime.
    Async,
    /// Runs on a blocking thread.
    Blocking,
}

/// A registered task. Implemented by `#[celeriac::task]`; implement it by hand only for
/// tasks whose signature is decided at run time.
pub trait Task: Send + Sync + 'static {
    /// The registered name (`tasks.add`).
    fn name(&self) -> &'static str;

    /// Whether the body is async or blocking.
    fn kind(&self) -> TaskKind;

    /// Per-task settings.
    fn config(&self) -> TaskConfig {
        TaskConfig::default()
    }

    /// Binds `args`/`kwargs` and returns the body to run.
    fn invoke(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> Invocation;
}

/// The argument and result types of a `#[celeriac::task]` (the macro implements it), for
/// typed pool-style calls such as [`App::map`](crate::App::map).
pub trait TypedTask: Task + Copy {
    /// The arguments as a tuple (`(i64, i64)` for `add(x: i64, y: i64)`); the context
    /// parameter is not one of them.
    type Args: serde::Serialize + Send + 'static;
    /// What a successful call returns (the `T` of `TaskResult<T>`).
    type Output: Send + 'static;
}

/// The success type of a task's `Result` return type (used by the macro).
#[doc(hidden)]
pub trait TaskReturn {
    /// `T` of `Result<T, E>`.
    type Ok;
}

impl<T, E> TaskReturn for Result<T, E> {
    type Ok = T;
}

/// Per-task settings, with Celery's defaults and names.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskConfig {
    /// Most retries before the task fails; `None` retries forever. Default 3.
    pub max_retries: Option<u32>,
    /// Seconds before a retry when no countdown is given and backoff is off. Default 180.
    pub default_retry_delay: f64,
    /// Exponential backoff factor in seconds (`factor * 2^retries`); 0 disables it.
    pub retry_backoff: f64,
    /// Cap on the backoff delay in seconds. Default 600.
    pub retry_backoff_max: f64,
    /// Randomize the backoff delay in `[0, delay]` (full jitter). Default true.
    pub retry_jitter: bool,
    /// Retry every failure under this policy, not only those marked retryable.
    pub autoretry: bool,
    /// Acknowledge after the task finishes instead of when it starts; `None` = app default.
    pub acks_late: Option<bool>,
    /// Store STARTED when the task starts; `None` = app default.
    pub track_started: Option<bool>,
    /// Store no result.
    pub ignore_result: bool,
    /// Hard time limit in seconds.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds.
    pub soft_time_limit: Option<f64>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            max_retries: Some(3),
            default_retry_delay: 180.0,
            retry_backoff: 0.0,
            retry_backoff_max: 600.0,
            retry_jitter: true,
            autoretry: false,
            acks_late: None,
            track_started: None,
            ignore_result: false,
            time_limit: None,
            soft_time_limit: None,
        }
    }
}

impl TaskConfig {
    /// Sets `max_retries`.
    pub fn max_retries(mut self, n: Option<u32>) -> Self {
        self.max_retries = n;
        self
    }
    /// Sets `default_retry_delay` (seconds).
    pub fn default_retry_delay(mut self, secs: f64) -> Self {
        self.default_retry_delay = secs;
        self
    }
    /// Sets the backoff factor (seconds); `true` in the macro means 1.
    pub fn retry_backoff(mut self, factor: f64) -> Self {
        self.retry_backoff = factor;
        self
    }
    /// Sets `retry_backoff_max` (seconds).
    pub fn retry_backoff_max(mut self, secs: f64) -> Self {
        self.retry_backoff_max = secs;
        self
    }
    /// Sets `retry_jitter`.
    pub fn retry_jitter(mut self, on: bool) -> Self {
        self.retry_jitter = on;
        self
    }
    /// Sets `autoretry`.
    pub fn autoretry(mut self, on: bool) -> Self {
        self.autoretry = on;
        self
    }
    /// Sets `acks_late`.
    pub fn acks_late(mut self, on: bool) -> Self {
        self.acks_late = Some(on);
        self
    }
    /// Sets `track_started`.
    pub fn track_started(mut self, on: bool) -> Self {
        self.track_started = Some(on);
        self
    }
    /// Sets `ignore_result`.
    pub fn ignore_result(mut self, on: bool) -> Self {
        self.ignore_result = on;
        self
    }
    /// Sets the hard time limit (seconds).
    pub fn time_limit(mut self, secs: f64) -> Self {
        self.time_limit = Some(secs);
        self
    }
    /// Sets the soft time limit (seconds).
    pub fn soft_time_limit(mut self, secs: f64) -> Self {
        self.soft_time_limit = Some(secs);
        self
    }

    /// Seconds to wait before retry number `retries + 1` when no countdown was given.
    pub fn retry_delay(&self, retries: u32) -> f64 {
        if self.retry_backoff <= 0.0 {
            return self.default_retry_delay.max(0.0);
        }
        let exp = 2f64.powi(retries.min(63) as i32);
        let delay = (self.retry_backoff * exp)
            .min(self.retry_backoff_max)
            .max(0.0);
        if self.retry_jitter {
            rand::random::<f64>() * delay
        } else {
            delay
        }
    }
}

/// A message's `args` and `kwargs`, bound to a task's parameters with Python's rules:
/// positional arguments fill parameters in order, keyword arguments fill the rest by name,
/// a missing parameter is an error unless its type accepts `null` (`Option<T>`), and
/// leftovers are errors. Every error is a `TypeError`, as Python raises.
#[derive(Debug)]
pub struct Arguments {
    task: &'static str,
    params: &'static [&'static str],
    args: Vec<Option<Value>>,
    kwargs: Map<String, Value>,
}

impl Arguments {
    /// Starts binding for a task with these parameter names.
    pub fn new(
        task: &'static str,
        params: &'static [&'static str],
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<Self, TaskError> {
        if args.len() > params.len() {
            return Err(TaskError::type_error(format!(
                "{task}() takes {} positional argument{} but {} were given",
                params.len(),
                if params.len() == 1 { "" } else { "s" },
                args.len()
            )));
        }
        Ok(Self {
            task,
            params,
            args: args.into_iter().map(Some).collect(),
            kwargs,
        })
    }

    /// Takes parameter number `index` (named `params[index]`) as a `T`.
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, TaskError> {
        let name = self.params.get(index).copied().unwrap_or("?");
        let by_name = self.kwargs.remove(name);
        let value = match self.args.get_mut(index).and_then(Option::take) {
            Some(v) => {
                if by_name.is_some() {
                    return Err(TaskError::type_error(format!(
                        "{}() got multiple values for argument '{name}'",
                        self.task
                    )));
                }
                v
            }
            None => match by_name {
                Some(v) => v,
                None => {
                    return serde_json::from_value(Value::Null).map_err(|_| {
                        TaskError::type_error(format!(
                            "{}() missing 1 required positional argument: '{name}'",
                            self.task
                        ))
                    })
                }
            },
        };
        serde_json::from_value(value)
            .map_err(|e| TaskError::type_error(format!("{}() argument '{name}': {e}", self.task)))
    }

    /// Checks that no keyword argument was left unused.
    pub fn finish(self) -> Result<(), TaskError> {
        match self.kwargs.keys().next() {
            Some(extra) => Err(TaskError::type_error(format!(
                "{}() got an unexpected keyword argument '{extra}'",
                self.task
            ))),
            None => Ok(()),
        }
    }
}

/// Serializes a task's return value into the stored result.
pub fn result_value<T: Serialize>(value: &T) -> TaskOutput {
    serde_json::to_value(value).map_err(|e| {
        TaskError::with_module(
            "EncodeError",
            "kombu.exceptions",
            format!("cannot serialize the result: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bind(args: Value, kwargs: Value) -> Result<(i64, Option<String>), TaskError> {
        let mut a = Arguments::new(
            "tasks.f",
            &["x", "label"],
            serde_json::from_value(args).unwrap(),
            serde_json::from_value(kwargs).unwrap(),
        )?;
        let x = a.take(0)?;
        let label = a.take(1)?;
        a.finish()?;
        Ok((x, label))
    }

    #[test]
    fn binds_like_python() {
        assert_eq!(
            bind(json!([1, "a"]), json!({})).unwrap(),
            (1, Some("a".into()))
        );
        assert_eq!(
            bind(json!([1]), json!({"label": "b"})).unwrap(),
            (1, Some("b".into()))
        );
        assert_eq!(bind(json!([]), json!({"x": 2})).unwrap(), (2, None));
        let msg = |r: Result<_, TaskError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(bind(json!([]), json!({}))),
            "TypeError: tasks.f() missing 1 required positional argument: 'x'"
        );
        assert_eq!(
            msg(bind(json!([1, "a", 3]), json!({}))),
            "TypeError: tasks.f() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            msg(bind(json!([1]), json!({"x": 1}))),
            "TypeError: tasks.f() got multiple values for argument 'x'"
        );
        assert_eq!(
            msg(bind(json!([1]), json!({"nope": 1}))),
            "TypeError: tasks.f() got an unexpected keyword argument 'nope'"
        );
        assert!(msg(bind(json!(["one"]), json!({})))
            .starts_with("TypeError: tasks.f() argument 'x': invalid type"));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = TaskConfig::default()
            .retry_backoff(1.0)
            .retry_jitter(false)
            .retry_backoff_max(5.0);
        assert_eq!(
            [0, 1, 2, 3, 10].map(|r| c.retry_delay(r)),
            [1.0, 2.0, 4.0, 5.0, 5.0]
        );
        let j = TaskConfig::default().retry_backoff(2.0);
        for r in 0..20 {
            let d = j.retry_delay(r);
            assert!((0.0..=600.0).contains(&d));
        }
        assert_eq!(TaskConfig::default().retry_delay(4), 180.0);
    }
}
