//! Running one task body and deciding what its outcome means — shared by the worker and
//! eager mode so both apply the same retry policy and turn panics into the same FAILURE.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{json, Value};
use tracing::warn;

use celeriac_core::ExceptionInfo;

use crate::context::TaskContext;
use crate::error::{traceback_text, Failure, TaskError, EXC_MODULE};
use crate::task::{Invocation, Task, TaskConfig, TaskKind, TaskOutput};

/// Where task bodies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pool {
    /// `async fn` tasks on the async runtime, plain `fn` tasks on blocking threads.
    #[default]
    Async,
    /// Every task on a thread of its own (async tasks are driven to completion there).
    Threads,
    /// Every task in a child process, so a crash (abort, segfault, leak) kills only the
    /// child; the worker's message loop stays in the parent.
    Prefork,
    /// One task at a time, in the worker's own loop (debugging).
    Solo,
}

impl std::str::FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "async" => Ok(Pool::Async),
            "threads" => Ok(Pool::Threads),
            "prefork" | "processes" => Ok(Pool::Prefork),
            "solo" => Ok(Pool::Solo),
            other => Err(format!(
                "unknown pool `{other}` (expected async, threads, prefork or solo)"
            )),
        }
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pool::Async => "async",
            Pool::Threads => "threads",
            Pool::Prefork => "prefork",
            Pool::Solo => "solo",
        })
    }
}

/// Time limits in force for one run, in seconds (Celery's `[hard, soft]`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Limits {
    pub(crate) hard: Option<f64>,
    pub(crate) soft: Option<f64>,
}

/// The longest time limit honoured, in seconds (ten years): a longer one — `1e300` in a
/// message's `timelimit` — is clamped to it rather than overflowing a `Duration`.
pub(crate) const MAX_LIMIT_SECS: f64 = 315_360_000.0;

impl Limits {
    /// Celery's rule, per limit: the message's value if set, else the task's, else the
    /// worker's. A limit that is not a positive number (0, negative) counts as unset, as
    /// in Celery; one beyond [`MAX_LIMIT_SECS`] is clamped.
    pub(crate) fn resolve(
        message: (Option<f64>, Option<f64>),
        task: Limits,
        worker: Limits,
    ) -> Limits {
        let sane = |v: Option<f64>| {
            v.filter(|v| *v > 0.0 && !v.is_nan())
                .map(|v| v.min(MAX_LIMIT_SECS))
        };
        let pick = |m: Option<f64>, t: Option<f64>, w: Option<f64>| sane(m).or(sane(t)).or(sane(w));
        Limits {
            hard: pick(message.0, task.hard, worker.hard),
            soft: pick(message.1, task.soft, worker.soft),
        }
    }

    /// What is wrong with a message's `timelimit`, if a value in it is out of range
    /// (clamped or ignored by [`resolve`](Self::resolve)), for the worker's log.
    pub(crate) fn out_of_range(message: (Option<f64>, Option<f64>)) -> Option<String> {
        let bad = |v: Option<f64>| v.filter(|v| v.is_nan() || *v < 0.0 || *v > MAX_LIMIT_SECS);
        match (bad(message.0), bad(message.1)) {
            (None, None) => None,
            (h, s) => Some(format!(
                "time limits [{}, {}] out of range (0 to {MAX_LIMIT_SECS} s): a negative one is ignored, a longer one clamped",
                h.map_or("ok".into(), |v| v.to_string()),
                s.map_or("ok".into(), |v| v.to_string()),
            )),
        }
    }

    /// `secs` as a `Duration`, whatever the number: never panics.
    pub(crate) fn duration(secs: f64) -> Duration {
        Duration::try_from_secs_f64(secs.clamp(0.0, MAX_LIMIT_SECS)).unwrap_or_default()
    }
}

/// The FAILURE for a task stopped at its hard time limit, as Celery stores it.
pub(crate) fn time_limit_exceeded(limit: f64) -> TaskError {
    TaskError::Failed(Failure {
        exception: ExceptionInfo {
            exc_type: "TimeLimitExceeded".into(),
            exc_message: json!([limit]),
            exc_module: Some("billiard.exceptions".into()),
        },
        traceback: None,
        retryable: false,
    })
}

/// Runs the task body for `ctx` in `pool` within `limits`; a panic becomes a `RustPanic`
/// failure, the hard limit a `TimeLimitExceeded` one. At the soft limit the context's
/// soft-limit signal fires (the task decides what to do).
pub(crate) async fn run(
    task: &Arc<dyn Task>,
    ctx: TaskContext,
    args: Vec<Value>,
    kwargs: serde_json::Map<String, Value>,
    pool: Pool,
    limits: Limits,
) -> TaskOutput {
    let soft_timer = limits.soft.map(|secs| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Limits::duration(secs)).await;
            ctx.fire_soft_time_limit();
        })
    });
    let body = run_body(task, ctx, args, kwargs, pool);
    let out = match limits.hard {
        None => body.await,
        Some(secs) => match tokio::time::timeout(Limits::duration(secs), body).await {
            Ok(out) => out,
            Err(_) => {
                if pool != Pool::Async || task.kind() == TaskKind::Blocking {
                    // A thread cannot be stopped from outside: the task fails now and its
                    // thread is abandoned, its eventual result discarded.
                    warn!(
                        "task {} hit its hard time limit ({secs}s) on a thread that cannot be stopped; \
                         the thread is abandoned (use the prefork pool to kill such tasks)",
                        task.name()
                    );
                }
                Err(time_limit_exceeded(secs))
            }
        },
    };
    if let Some(t) = soft_timer {
        t.abort();
    }
    out
}

async fn run_body(
    task: &Arc<dyn Task>,
    ctx: TaskContext,
    args: Vec<Value>,
    kwargs: serde_json::Map<String, Value>,
    pool: Pool,
) -> TaskOutput {
    let name = task.name();
    // Binding arguments runs user `Deserialize` impls, which may panic too.
    let invocation =
        match std::panic::catch_unwind(AssertUnwindSafe(|| task.invoke(ctx, args, kwargs))) {
            Ok(inv) => inv,
            Err(payload) => return Err(panic_failure(name, payload.as_ref())),
        };
    match (invocation, pool) {
        (Invocation::Ready(out), _) => out,
        (Invocation::Async(fut), Pool::Async | Pool::Solo) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|p| Err(panic_failure(name, p.as_ref()))),
        (Invocation::Async(fut), Pool::Threads | Pool::Prefork) => {
            let handle = tokio::runtime::Handle::current();
            blocking(name, move || handle.block_on(fut)).await
        }
        (Invocation::Blocking(f), _) => blocking(name, f).await,
    }
}

async fn blocking(
    name: &'static str,
    f: impl FnOnce() -> TaskOutput + Send + 'static,
) -> TaskOutput {
    match tokio::task::spawn_blocking(move || std::panic::catch_unwind(AssertUnwindSafe(f))).await {
        Ok(Ok(out)) => out,
        Ok(Err(payload)) => Err(panic_failure(name, payload.as_ref())),
        Err(join) => Err(TaskError::with_module(
            "WorkerLostError",
            "billiard.exceptions",
            format!("task thread ended abnormally: {join}"),
        )),
    }
}

fn panic_failure(task: &str, payload: &(dyn Any + Send)) -> TaskError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_string());
    let exception = ExceptionInfo::new("RustPanic", EXC_MODULE, msg);
    let traceback = Some(traceback_text(
        &exception,
        &[format!("task {task} panicked")],
    ));
    TaskError::Failed(Failure {
        exception,
        traceback,
        retryable: false,
    })
}

/// What the worker does with a finished task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Store SUCCESS.
    Success(Value),
    /// Re-send with `retries + 1` after `countdown` seconds; store RETRY.
    Retry { countdown: f64, reason: String },
    /// Store FAILURE.
    Failure(Failure),
    /// Refuse the message (requeue or drop).
    Reject { requeue: bool, reason: String },
    /// Acknowledge, store nothing.
    Ignore,
}

/// Applies the task's retry policy to what the body returned.
pub(crate) fn decide(output: TaskOutput, cfg: &TaskConfig, ctx: &TaskContext) -> Outcome {
    let retries = ctx.retries();
    let (countdown, cause, max) = match output {
        Ok(v) => return Outcome::Success(v),
        Err(TaskError::Failed(f)) if f.retryable || cfg.autoretry => {
            (None, Some(f), cfg.max_retries)
        }
        Err(TaskError::Failed(f)) => return Outcome::Failure(f),
        Err(TaskError::Retry(r)) => (
            r.countdown,
            r.cause.map(|c| *c),
            r.max_retries.or(cfg.max_retries),
        ),
        Err(TaskError::Reject { requeue, reason }) => return Outcome::Reject { requeue, reason },
        Err(TaskError::Ignore) => return Outcome::Ignore,
    };
    if max.is_some_and(|m| retries >= m) {
        return Outcome::Failure(cause.unwrap_or_else(|| {
            let exception = ExceptionInfo::celery(
                "MaxRetriesExceededError",
                format!(
                    "Can't retry {}[{}] args:() kwargs:{{}}",
                    ctx.name(),
                    ctx.id()
                ),
            );
            Failure {
                traceback: Some(traceback_text(&exception, &[])),
                exception,
                retryable: false,
            }
        }));
    }
    let countdown = countdown
        .unwrap_or_else(|| cfg.retry_delay(retries))
        .max(0.0);
    let reason = match &cause {
        Some(f) => format!("Retry in {countdown:.3}s: {}", f.exception),
        None => format!("Retry in {countdown:.3}s"),
    };
    Outcome::Retry { countdown, reason }
}

/// The FAILURE exception for `Reject(requeue=False)`, as Celery stores it.
pub(crate) fn reject_exception(reason: &str) -> ExceptionInfo {
    ExceptionInfo {
        exc_type: "Reject".into(),
        exc_message: json!([reason, false]),
        exc_module: Some(celeriac_core::state::CELERY_EXCEPTIONS.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limits_from_the_wire_never_overflow() {
        let task = Limits {
            hard: Some(30.0),
            soft: Some(20.0),
        };
        let none = Limits::default();
        // 1e300 s is clamped; a negative or zero limit counts as unset (the task's applies).
        let l = Limits::resolve((Some(1e300), Some(-1.0)), task, none);
        assert_eq!(l.hard, Some(MAX_LIMIT_SECS));
        assert_eq!(l.soft, Some(20.0));
        assert!(Limits::out_of_range((Some(1e300), None)).is_some());
        assert!(Limits::out_of_range((Some(f64::NAN), None)).is_some());
        assert!(Limits::out_of_range((Some(10.0), Some(5.0))).is_none());
        let l = Limits::resolve((Some(f64::NAN), Some(0.0)), none, none);
        assert_eq!((l.hard, l.soft), (None, None));
        for secs in [1e300, f64::INFINITY, f64::NAN, -1.0, 0.0, 1.5] {
            let d = Limits::duration(secs);
            assert!(
                d <= Duration::from_secs_f64(MAX_LIMIT_SECS),
                "{secs}: {d:?}"
            );
        }
        assert_eq!(Limits::duration(1.5), Duration::from_millis(1500));
    }
}
