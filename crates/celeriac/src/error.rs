//! Errors: [`TaskError`], what a task returns when it does not succeed (including the
//! control-flow values retry, reject and ignore), and [`Error`], what celeriac's own
//! operations return to the caller.

use std::fmt;
use std::time::Duration;

use celeriac_core::error::{BackendError, BrokerError, PublishError};
use celeriac_core::protocol::SignatureError;
use celeriac_core::url::UrlError;
use celeriac_core::ExceptionInfo;

/// What a task returns: its value, or a [`TaskError`].
pub type TaskResult<T> = Result<T, TaskError>;

/// Module name used for errors that have no Python equivalent.
pub const EXC_MODULE: &str = "celeriac.exceptions";

/// Why a task did not return a value: it failed, asked to be retried, rejected its
/// message, or asked to be ignored.
///
/// Any `std::error::Error` converts into a failure with `?`, named after its type:
///
/// ```
/// use celeriac::TaskResult;
/// fn parse(s: &str) -> TaskResult<i64> {
///     Ok(s.parse::<i64>()?)                       // FAILURE ParseIntError: invalid digit...
/// }
/// let err = parse("x").unwrap_err();
/// assert_eq!(err.exception().unwrap().exc_type, "ParseIntError");
/// ```
///
/// `TaskError` deliberately does not implement `std::error::Error` itself (as `anyhow::Error`
/// does not), which is what lets that blanket conversion exist.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskError {
    /// The task failed; stored as FAILURE unless retryable and retries remain.
    Failed(Failure),
    /// Run the task again later (`ctx.retry(..)`).
    Retry(RetryRequest),
    /// Refuse the message: drop it, or put it back in its queue with `requeue`.
    Reject {
        /// Put the message back instead of dropping it.
        requeue: bool,
        /// Why, for the log and the FAILURE record.
        reason: String,
    },
    /// Acknowledge the message and store nothing.
    Ignore,
}

/// A task failure: the exception as Celery stores it, a traceback text, and whether the
/// task's retry policy may retry it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Exception type, message and module.
    pub exception: ExceptionInfo,
    /// Traceback text (its last line is `<Type>: <message>`).
    pub traceback: Option<String>,
    /// Retry this failure under the task's retry policy.
    pub retryable: bool,
}

/// A request to run the task again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryRequest {
    /// Seconds to wait; `None` uses the task's policy (backoff or `default_retry_delay`).
    pub countdown: Option<f64>,
    /// The error that caused the retry; it becomes the FAILURE once retries run out.
    pub cause: Option<Box<Failure>>,
    /// Overrides the task's `max_retries` for this retry.
    pub max_retries: Option<u32>,
}

impl TaskError {
    /// A failure with a custom exception type (module `celeriac.exceptions`).
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_module(exc_type, EXC_MODULE, message)
    }

    /// A failure with an exception type and module, e.g. to raise a real Python class in a
    /// Python client (`"ValueError"`, `"builtins"`).
    pub fn with_module(
        exc_type: impl Into<String>,
        module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let exception = ExceptionInfo::new(exc_type, module, message);
        let traceback = Some(traceback_text(&exception, &[]));
        TaskError::Failed(Failure {
            exception,
            traceback,
            retryable: false,
        })
    }

    /// `ValueError` (a Python client can `except ValueError`).
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::with_module("ValueError", "builtins", message)
    }

    /// `TypeError`.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::with_module("TypeError", "builtins", message)
    }

    /// `KeyError`.
    pub fn key_error(message: impl Into<String>) -> Self {
        Self::with_module("KeyError", "builtins", message)
    }

    /// `RuntimeError`.
    pub fn runtime_error(message: impl Into<String>) -> Self {
        Self::with_module("RuntimeError", "builtins", message)
    }

    /// `SoftTimeLimitExceeded` (module `billiard.exceptions`, as Celery stores it).
    pub fn soft_time_limit_exceeded() -> Self {
        let exception = ExceptionInfo {
            exc_type: "SoftTimeLimitExceeded".into(),
            exc_message: serde_json::json!([]),
            exc_module: Some("billiard.exceptions".into()),
        };
        let traceback = Some(traceback_text(&exception, &[]));
        TaskError::Failed(Failure {
            exception,
            traceback,
            retryable: false,
        })
    }

    /// Retry after `countdown` seconds (`None`: the task's policy decides).
    pub fn retry(countdown: Option<f64>) -> Self {
        TaskError::Retry(RetryRequest {
            countdown,
            ..RetryRequest::default()
        })
    }

    /// Reject the message; with `requeue` it goes back to its queue and no result is stored.
    pub fn reject(requeue: bool, reason: impl Into<String>) -> Self {
        TaskError::Reject {
            requeue,
            reason: reason.into(),
        }
    }

    /// Marks a failure as retryable under the task's retry policy (`max_retries`,
    /// backoff). Other kinds are returned unchanged.
    pub fn retryable(self) -> Self {
        match self {
            TaskError::Failed(mut f) => {
                f.retryable = true;
                TaskError::Failed(f)
            }
            other => other,
        }
    }

    /// The exception of a failure (or of a retry's cause).
    pub fn exception(&self) -> Option<&ExceptionInfo> {
        match self {
            TaskError::Failed(f) => Some(&f.exception),
            TaskError::Retry(r) => r.cause.as_ref().map(|c| &c.exception),
            _ => None,
        }
    }

    /// The failure itself, if this is one.
    pub fn as_failure(&self) -> Option<&Failure> {
        match self {
            TaskError::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// A failure from any error, named after its Rust type, with its source chain in the
    /// traceback text.
    pub fn from_error<E: std::error::Error + ?Sized>(err: &E, type_name: &str) -> Self {
        let exception = ExceptionInfo::new(short_type_name(type_name), EXC_MODULE, err.to_string());
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        let traceback = Some(traceback_text(&exception, &causes));
        TaskError::Failed(Failure {
            exception,
            traceback,
            retryable: false,
        })
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(err: E) -> Self {
        TaskError::from_error(&err, std::any::type_name::<E>())
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(fail) => write!(f, "{}", fail.exception),
            TaskError::Retry(r) => match r.countdown {
                Some(c) => write!(f, "Retry in {c}s"),
                None => f.write_str("Retry"),
            },
            TaskError::Reject { requeue, reason } => {
                write!(f, "Reject({reason:?}, requeue={requeue})")
            }
            TaskError::Ignore => f.write_str("Ignore"),
        }
    }
}

/// `std::num::ParseIntError` → `ParseIntError`; `my::Error<T>` → `Error`.
fn short_type_name(full: &str) -> String {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// A traceback in Python's shape, so Python clients and tools display it as usual: the
/// last line is `<Type>: <message>`.
pub(crate) fn traceback_text(exc: &ExceptionInfo, causes: &[String]) -> String {
    let mut t = String::from("Traceback (most recent call last):\n  (Rust task)\n");
    for c in causes.iter().rev() {
        t.push_str("caused by: ");
        t.push_str(c);
        t.push('\n');
    }
    t.push_str(&format!("{}: {}\n", exc.exc_type, exc.message()));
    t
}

/// Errors of celeriac's operations: configuration, broker and backend failures, and the
/// outcome of waiting for a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A broker or backend URL is malformed, unknown, or not compiled in.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A message could not be published; it is handed back inside.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A batch could not be published; the unpublished messages are handed back inside.
    #[error(transparent)]
    PublishMany(#[from] celeriac_core::broker::PublishManyError),
    /// The result backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A signature cannot be sent (bad option or argument).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A canvas signature (chain, group, chord) that cannot be applied.
    #[error(transparent)]
    Canvas(#[from] celeriac_core::CanvasError),
    /// Arguments given by name-based sending are not `[args]` / `{kwargs}`.
    #[error("invalid arguments for `{task}`: {reason}")]
    InvalidArguments {
        /// The task name.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// Eager mode was asked to run a task this app does not have.
    #[error("task `{0}` is not registered in this app")]
    NotRegistered(String),
    /// Results were asked for but the app has no result backend.
    #[error("no result backend is configured (set result_backend_url, CELERIAC_RESULT_BACKEND or --backend)")]
    NoResultBackend,
    /// The task did not finish within the wait.
    #[error("task {task_id} did not finish within {timeout:?} (state {state})")]
    Timeout {
        /// The task id.
        task_id: String,
        /// How long was waited.
        timeout: Duration,
        /// The last state seen.
        state: String,
    },
    /// The task failed; its exception and traceback are inside.
    #[error("task {task_id} failed: {exception}")]
    TaskFailed {
        /// The task id.
        task_id: String,
        /// Exception type, message and module, as stored.
        exception: ExceptionInfo,
        /// Traceback text, if stored.
        traceback: Option<String>,
    },
    /// The task was revoked or expired and did not run.
    #[error("task {task_id} was revoked: {exception}")]
    TaskRevoked {
        /// The task id.
        task_id: String,
        /// The stored `TaskRevokedError`.
        exception: ExceptionInfo,
    },
    /// The stored result does not deserialize into the requested type.
    #[error("result of task {task_id} is not a {expected}: {source}")]
    ResultType {
        /// The task id.
        task_id: String,
        /// The requested Rust type.
        expected: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Invalid input (a command-line file, say); the message says where.
    #[error("{0}")]
    Input(String),
    /// The worker stopped without being asked to (its broker ended consumption): a
    /// supervisor should restart it. The CLI prints this line and exits 1.
    #[error("the worker stopped unasked: {0}")]
    Stopped(String),
    /// An engine could not start (e.g. an SQLite file that is not usable); the message
    /// names the resource.
    #[error(transparent)]
    Engine(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// True if waiting for a result timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// The task's exception, for [`Error::TaskFailed`] and [`Error::TaskRevoked`].
    pub fn exception(&self) -> Option<&ExceptionInfo> {
        match self {
            Error::TaskFailed { exception, .. } | Error::TaskRevoked { exception, .. } => {
                Some(exception)
            }
            _ => None,
        }
    }

    /// True when the broker or backend could not be reached.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Broker(e) => e.is_connection(),
            Error::Publish(e) => e.source.is_connection(),
            Error::PublishMany(e) => e.source.is_connection(),
            Error::Backend(e) => e.is_connection(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn std_errors_become_named_failures_with_their_chain() {
        let err: TaskError = Outer(std::io::Error::other("disk on fire")).into();
        let f = err.as_failure().unwrap();
        assert_eq!(f.exception.exc_type, "Outer");
        assert_eq!(f.exception.exc_module.as_deref(), Some(EXC_MODULE));
        let tb = f.traceback.as_deref().unwrap();
        assert!(tb.contains("caused by: disk on fire"), "{tb}");
        assert!(tb.ends_with("Outer: outer\n"), "{tb}");
        assert_eq!(short_type_name("a::b::Thing<c::D>"), "Thing");
    }

    #[test]
    fn python_builtin_names() {
        let e = TaskError::value_error("boom");
        assert_eq!(e.to_string(), "ValueError: boom");
        assert_eq!(
            e.exception().unwrap().exc_module.as_deref(),
            Some("builtins")
        );
        assert!(matches!(
            e.clone().retryable(),
            TaskError::Failed(Failure {
                retryable: true,
                ..
            })
        ));
    }
}
