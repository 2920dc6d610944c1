//! What the worker and its child processes say to each other: one JSON object per line
//! over a Unix socket. The task message travels as kombu's envelope, so the child decodes
//! exactly what the worker received.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use celeriac_core::ExceptionInfo;

use crate::context::RequestDeliveryInfo;
use crate::error::{Failure, RetryRequest, TaskError};
use crate::task::TaskOutput;

/// The first line a child sends: who it is, and the token it was given to prove it. (Its
/// pid is not asked: the worker takes that from the kernel, `SO_PEERCRED`.)
#[derive(Serialize, Deserialize)]
pub(super) struct Hello {
    pub(super) child: u64,
    pub(super) token: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("child", &self.child)
            .finish_non_exhaustive()
    }
}

/// Run one task.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    pub(super) seq: u64,
    /// The task message as a kombu envelope (JSON).
    pub(super) envelope: Value,
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) priority: Option<u8>,
    pub(super) redelivered: bool,
    pub(super) hostname: String,
    pub(super) max_retries: Option<u32>,
    pub(super) soft_time_limit: Option<f64>,
}

impl Request {
    pub(super) fn delivery_info(&self) -> RequestDeliveryInfo {
        RequestDeliveryInfo {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            priority: self.priority,
            redelivered: self.redelivered,
        }
    }
}

/// A task's outcome.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Response {
    pub(super) seq: u64,
    pub(super) output: Output,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Output {
    Ok {
        value: Value,
    },
    Failed {
        exception: ExceptionInfo,
        traceback: Option<String>,
        retryable: bool,
    },
    Retry {
        countdown: Option<f64>,
        cause: Option<(ExceptionInfo, Option<String>)>,
        max_retries: Option<u32>,
    },
    Reject {
        requeue: bool,
        reason: String,
    },
    Ignore,
}

impl From<TaskOutput> for Output {
    fn from(out: TaskOutput) -> Self {
        match out {
            Ok(value) => Output::Ok { value },
            Err(TaskError::Failed(f)) => Output::Failed {
                exception: f.exception,
                traceback: f.traceback,
                retryable: f.retryable,
            },
            Err(TaskError::Retry(r)) => Output::Retry {
                countdown: r.countdown,
                cause: r.cause.map(|c| (c.exception, c.traceback)),
                max_retries: r.max_retries,
            },
            Err(TaskError::Reject { requeue, reason }) => Output::Reject { requeue, reason },
            Err(TaskError::Ignore) => Output::Ignore,
        }
    }
}

impl From<Output> for TaskOutput {
    fn from(out: Output) -> Self {
        match out {
            Output::Ok { value } => Ok(value),
            Output::Failed {
                exception,
                traceback,
                retryable,
            } => Err(TaskError::Failed(Failure {
                exception,
                traceback,
                retryable,
            })),
            Output::Retry {
                countdown,
                cause,
                max_retries,
            } => Err(TaskError::Retry(RetryRequest {
                countdown,
                cause: cause.map(|(exception, traceback)| {
                    Box::new(Failure {
                        exception,
                        traceback,
                        retryable: false,
                    })
                }),
                max_retries,
            })),
            Output::Reject { requeue, reason } => Err(TaskError::Reject { requeue, reason }),
            Output::Ignore => Err(TaskError::Ignore),
        }
    }
}
