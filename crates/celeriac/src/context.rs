//! [`TaskContext`]: what a running task knows about its request (Celery's `self.request`)
//! and what it can do from inside (retry, send child tasks that carry its ids).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use celeriac_core::protocol::TaskMessage;
use celeriac_core::Signature;

use crate::app::App;
use crate::error::{Error, Failure, RetryRequest, TaskError};
use crate::result::AsyncResult;

/// Where a message came from: exchange, routing key, priority, redelivery flag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestDeliveryInfo {
    /// Exchange it was published to (`""` = default exchange).
    pub exchange: String,
    /// Routing key (the queue, for the default exchange).
    pub routing_key: String,
    /// Message priority.
    pub priority: Option<u8>,
    /// Whether this delivery is a redelivery.
    pub redelivered: bool,
}

/// The request a task is running for. Take `ctx: &TaskContext` as a task's first parameter
/// to get it.
///
/// ```no_run
/// use celeriac::{TaskContext, TaskResult, TaskError};
///
/// #[celeriac::task(name = "tasks.fetch", max_retries = 5, retry_backoff = true)]
/// async fn fetch(ctx: &TaskContext, url: String) -> TaskResult<usize> {
///     if url.is_empty() {
///         return Err(ctx.retry(Some(2.0)));           // again in 2 s, retries + 1
///     }
///     Ok(url.len() + ctx.retries() as usize)
/// }
/// ```
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

/// Fires once when a task passes its soft time limit.
#[derive(Default)]
struct SoftLimit {
    fired: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

struct Inner {
    app: App,
    /// The request itself, shared with the worker's job (no per-field copies).
    msg: Arc<TaskMessage>,
    max_retries: Option<u32>,
    /// Built from `msg` on first use (most tasks never ask), or given.
    delivery_info: std::sync::OnceLock<RequestDeliveryInfo>,
    redelivered: bool,
    /// The queue the message was taken from, kept only when it has no routing key.
    queue: Option<String>,
    hostname: Arc<str>,
    eager: bool,
    soft: SoftLimit,
    /// Fired by `revoke(terminate=true)` while the task runs.
    terminate: tokio::sync::Notify,
    /// The signal number a `revoke(terminate=true)` asked for (15 unless told).
    terminate_signum: std::sync::atomic::AtomicI32,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("retries", &self.retries())
            .field("hostname", &self.inner.hostname)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    pub(crate) fn new(
        app: App,
        msg: Arc<TaskMessage>,
        delivery_info: RequestDeliveryInfo,
        hostname: Arc<str>,
        max_retries: Option<u32>,
        eager: bool,
    ) -> Self {
        let ctx = Self::build(app, msg, false, None, hostname, max_retries, eager);
        let _ = ctx.inner.delivery_info.set(delivery_info);
        ctx
    }

    /// The context of a message a worker took from `queue`; its delivery info is read from
    /// the message when asked for.
    pub(crate) fn for_delivery(
        app: App,
        msg: Arc<TaskMessage>,
        queue: &str,
        redelivered: bool,
        hostname: Arc<str>,
        max_retries: Option<u32>,
    ) -> Self {
        let queue = msg
            .properties
            .delivery_info
            .routing_key
            .is_empty()
            .then(|| queue.to_string());
        Self::build(app, msg, redelivered, queue, hostname, max_retries, false)
    }

    fn build(
        app: App,
        msg: Arc<TaskMessage>,
        redelivered: bool,
        queue: Option<String>,
        hostname: Arc<str>,
        max_retries: Option<u32>,
        eager: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                app,
                msg,
                max_retries,
                delivery_info: std::sync::OnceLock::new(),
                redelivered,
                queue,
                hostname,
                eager,
                soft: SoftLimit::default(),
                terminate: tokio::sync::Notify::new(),
                terminate_signum: std::sync::atomic::AtomicI32::new(15),
            }),
        }
    }

    /// The signal `revoke(terminate=true)` fires for this task (a permit is kept if it
    /// fires before anyone waits).
    pub(crate) fn terminate_signal(&self) -> &tokio::sync::Notify {
        &self.inner.terminate
    }

    /// Asks the task to stop, for `revoke(terminate=true)` with signal `signum`.
    pub(crate) fn terminate(&self, signum: i32) {
        self.inner
            .terminate_signum
            .store(signum, std::sync::atomic::Ordering::SeqCst);
        self.inner.terminate.notify_one();
    }

    /// The signal number the terminate request named.
    pub(crate) fn terminate_signum(&self) -> i32 {
        self.inner
            .terminate_signum
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn fire_soft_time_limit(&self) {
        self.inner
            .soft
            .fired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.soft.notify.notify_waiters();
    }

    /// Whether the task has passed its soft time limit (poll it in long loops of blocking
    /// tasks; async tasks can `select!` on [`soft_time_limit`](Self::soft_time_limit)).
    pub fn soft_time_limit_exceeded(&self) -> bool {
        self.inner
            .soft
            .fired
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when the task passes its soft time limit (never, without one): the async
    /// cancellation signal, so a task can clean up before the hard limit.
    pub async fn soft_time_limit(&self) {
        loop {
            let notified = self.inner.soft.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.soft_time_limit_exceeded() {
                return;
            }
            notified.await;
        }
    }

    /// `Err(SoftTimeLimitExceeded)` once the soft limit has passed: `ctx.check_soft_time_limit()?`
    /// in a loop stops the task as Celery's exception would.
    pub fn check_soft_time_limit(&self) -> Result<(), TaskError> {
        if self.soft_time_limit_exceeded() {
            Err(TaskError::soft_time_limit_exceeded())
        } else {
            Ok(())
        }
    }

    /// The task message this request came from.
    pub(crate) fn message(&self) -> &Arc<TaskMessage> {
        &self.inner.msg
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.inner.msg.headers.id
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.inner.msg.headers.task
    }

    /// How many times this task has been retried so far.
    pub fn retries(&self) -> u32 {
        self.inner.msg.headers.retries
    }

    /// The retry limit in force.
    pub fn max_retries(&self) -> Option<u32> {
        self.inner.max_retries
    }

    /// The ETA the task was sent with.
    pub fn eta(&self) -> Option<DateTime<Utc>> {
        self.inner.msg.headers.eta
    }

    /// When the task expires.
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        self.inner.msg.headers.expires
    }

    /// Id of the task that sent this one.
    pub fn parent_id(&self) -> Option<&str> {
        self.inner.msg.headers.parent_id.as_deref()
    }

    /// Id of the first task of the workflow (this task's own id for a top-level call).
    pub fn root_id(&self) -> &str {
        let h = &self.inner.msg.headers;
        h.root_id.as_deref().unwrap_or(&h.id)
    }

    /// Group this task belongs to.
    pub fn group(&self) -> Option<&str> {
        self.inner.msg.headers.group.as_deref()
    }

    /// Position in the group.
    pub fn group_index(&self) -> Option<u64> {
        self.inner.msg.headers.group_index
    }

    /// Exchange, routing key, priority and redelivery flag of the message.
    pub fn delivery_info(&self) -> &RequestDeliveryInfo {
        self.inner.delivery_info.get_or_init(|| {
            let info = &self.inner.msg.properties.delivery_info;
            RequestDeliveryInfo {
                exchange: info.exchange.clone(),
                routing_key: match &self.inner.queue {
                    Some(q) if info.routing_key.is_empty() => q.clone(),
                    _ => info.routing_key.clone(),
                },
                priority: self.inner.msg.properties.priority,
                redelivered: self.inner.redelivered,
            }
        })
    }

    /// The queue the message was taken from when it carries no routing key of its own.
    pub(crate) fn queue_if_unrouted(&self) -> Option<&str> {
        self.inner.queue.as_deref()
    }

    /// The sending process's reply-to id.
    pub fn reply_to(&self) -> Option<&str> {
        self.inner.msg.properties.reply_to.as_deref()
    }

    /// Node name of the worker running the task (`celery@host`).
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    /// Custom headers the message carried (`apply_async(headers=...)`).
    pub fn headers(&self) -> &Map<String, Value> {
        &self.inner.msg.headers.extra
    }

    /// Whether the task runs eagerly (in the caller, `task_always_eager`).
    pub fn is_eager(&self) -> bool {
        self.inner.eager
    }

    /// The app the task runs in.
    pub fn app(&self) -> &App {
        &self.inner.app
    }

    /// A request to run this task again after `countdown` seconds (`None`: the task's
    /// policy decides: backoff, or `default_retry_delay`). Return it: `Err(ctx.retry(..))`.
    pub fn retry(&self, countdown: Option<f64>) -> TaskError {
        TaskError::retry(countdown)
    }

    /// Like [`retry`](Self::retry), remembering `cause`: once retries run out, the task
    /// fails with it.
    pub fn retry_for(&self, cause: TaskError, countdown: Option<f64>) -> TaskError {
        let cause = match cause {
            TaskError::Failed(f) => Some(Box::new(f)),
            TaskError::Retry(RetryRequest { cause, .. }) => cause,
            other => Some(Box::new(Failure {
                exception: celeriac_core::ExceptionInfo::new(
                    "RuntimeError",
                    "builtins",
                    other.to_string(),
                ),
                traceback: None,
                retryable: false,
            })),
        };
        TaskError::Retry(RetryRequest {
            countdown,
            cause,
            max_retries: None,
        })
    }

    /// Sends a child task: its `parent_id` is this task and its `root_id` this task's root.
    pub async fn send(&self, signature: Signature) -> Result<AsyncResult, Error> {
        let parent = (self.id().to_string(), self.root_id().to_string());
        crate::producer::apply(&self.inner.app, signature, Some(parent)).await
    }
}
