//! One message's life inside the worker once it is accepted: acknowledgement (early or
//! late), expiry, STARTED, running the body, and storing the outcome — SUCCESS, RETRY
//! (re-sent first, then recorded, as Celery does), FAILURE, or a reject — plus the paths
//! for messages that never run (undecodable, unregistered, expired).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::{debug, error, info, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::protocol::{DecodeError, TaskMessage};
use celeriac_core::{Delivery, ExceptionInfo, ReplyTo, State, TaskMeta};

use super::overrides::Overrides;
use super::prefork::{PreforkPool, Ran};
use super::revoked::Revoked;
use super::stats::{Event, WorkerStats};
use super::terminate::Terminators;
use super::Phase;
use crate::app::App;
use crate::canvas::flow;
use crate::context::TaskContext;
use crate::events::dispatcher::Dispatcher;
use crate::events::EventKind;
use crate::execute::{self, Limits, Outcome, Pool};
use crate::producer;
use crate::task::{Task, TaskConfig};

/// What every job of one worker runs with, shared by all of them behind an `Arc`: the app,
/// the node name, the pool, the counters, the shutdown phase, the worker-wide time limits,
/// the prefork children, the revoke and terminate registries, the event sender, the
/// settings remote control changed, and the queues consumed.
pub(super) struct JobEnv {
    pub(super) app: App,
    pub(super) hostname: Arc<str>,
    pub(super) pool: Pool,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) phase: watch::Receiver<Phase>,
    /// Worker-wide time limits (`--time-limit`, `--soft-time-limit`).
    pub(super) limits: Limits,
    /// Child processes, for the prefork pool.
    pub(super) prefork: Option<Arc<PreforkPool>>,
    /// Signals that stop running tasks, by task id.
    pub(super) terminators: Terminators,
    /// Revoked task ids.
    pub(super) revoked: Revoked,
    /// Events (worker events always; task events when on).
    pub(super) events: Arc<Dispatcher>,
    /// Rate and time limits set by remote control.
    pub(super) overrides: Overrides,
    /// The queues consumed now (`add_consumer`, `cancel_consumer` change them).
    pub(super) queues: std::sync::Mutex<Vec<String>>,
}

/// An accepted task message waiting for (or holding) a slot.
pub(super) struct Job {
    pub(super) delivery: Delivery,
    /// Shared with the broker when it lives in this process (memory://).
    pub(super) msg: Arc<TaskMessage>,
    pub(super) task: Arc<dyn Task>,
}

impl Job {
    pub(super) fn label(&self) -> Label<'_> {
        Label(&self.msg)
    }
}

/// `name[id]` of a task for the log, as Celery writes it; formatted only when a line is
/// written (a worker at full speed logs nothing per task).
pub(super) struct Label<'a>(&'a TaskMessage);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.0.headers;
        write!(f, "{}[{}]", h.shadow.as_deref().unwrap_or(&h.task), h.id)
    }
}

/// A result as JSON for a log line, cut after 200 bytes as Celery's `saferepr` cuts it.
fn truncate_for_log(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

impl JobEnv {
    /// The queues consumed now.
    pub(super) fn queues(&self) -> Vec<String> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether tasks named `task` are acknowledged after they run.
    pub(super) fn acks_late(&self, task: &str) -> bool {
        self.app
            .task(task)
            .and_then(|t| t.config().acks_late)
            .unwrap_or(self.app.config().acks_late)
    }

    /// A `task-revoked` event (`terminated` with `signum`, or not; `expired`).
    fn revoked_event(&self, id: &str, terminated: Option<i32>, expired: bool) {
        self.events.task(EventKind::TaskRevoked, id, |f| {
            f.value("terminated", &terminated.is_some());
            f.value("signum", &terminated);
            f.value("expired", &expired);
        });
    }

    /// A `task-rejected` event (`requeue`).
    fn rejected_event(&self, id: &str, requeue: bool) {
        self.events.task(EventKind::TaskRejected, id, |f| {
            f.value("requeue", &requeue);
        });
    }

    /// A `task-failed` event for `exc`.
    fn failed_event(&self, id: &str, exc: &ExceptionInfo, traceback: Option<&str>) {
        self.events.task(EventKind::TaskFailed, id, |f| {
            f.str("exception", &exc.python_repr());
            f.str("traceback", traceback.unwrap_or_default());
        });
    }

    /// Base record for `msg` in `status`, with Celery's group/parent and extended fields.
    fn meta(&self, msg: &TaskMessage, status: State, result: Value) -> TaskMeta {
        let mut m = TaskMeta::new(msg.headers.id.clone(), status, result);
        m.reply = msg.properties.reply_to.as_ref().map(|queue| ReplyTo {
            queue: queue.clone(),
            correlation_id: msg
                .properties
                .correlation_id
                .clone()
                .unwrap_or_else(|| msg.headers.id.clone()),
        });
        m.group_id = msg.headers.group.clone();
        m.parent_id = msg.headers.parent_id.clone();
        if self.app.config().result_extended {
            m.name = Some(msg.headers.task.clone());
            m.args = Some(Value::Array(msg.args.clone()));
            m.kwargs = Some(Value::Object(msg.kwargs.clone()));
            m.worker = Some(self.hostname.to_string());
            m.retries = Some(msg.headers.retries);
            m.queue = Some(msg.properties.delivery_info.routing_key.clone());
        }
        m
    }

    /// A FAILURE record for `msg`.
    fn meta_failure(
        &self,
        msg: &TaskMessage,
        exc: &ExceptionInfo,
        traceback: Option<String>,
    ) -> TaskMeta {
        let mut meta = self.meta(msg, State::Failure, exc.to_value());
        meta.traceback = traceback;
        meta
    }

    /// Stores a record, retrying with back-off while the backend is unreachable, so a
    /// result is not lost to a backend outage (until a cold shutdown gives up).
    pub(super) fn store(
        &self,
        meta: TaskMeta,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        // Boxed so that the futures of the jobs that await this stay small: a worker keeps
        // one job future per running task, and 10,000 of them add up.
        Box::pin(self.store_retrying(meta))
    }

    async fn store_retrying(&self, meta: TaskMeta) {
        let Some(backend) = self.app.backend() else {
            return;
        };
        let expires = self.app.config().result_expires;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut warned = false;
        loop {
            match backend.store(&meta, expires).await {
                Ok(()) => {
                    if warned {
                        info!(
                            "result of task {} stored after the backend came back",
                            meta.task_id
                        );
                    }
                    return;
                }
                Err(e) if e.is_retryable() && *self.phase.borrow() != Phase::Cold => {
                    if !warned {
                        warn!(
                            "cannot store result of task {} ({e}); retrying",
                            meta.task_id
                        );
                        warned = true;
                    }
                    backoff.wait().await;
                }
                Err(e) => {
                    error!(
                        "result of task {} ({}) not stored: {e}",
                        meta.task_id, meta.status
                    );
                    return;
                }
            }
        }
    }

    /// A message that is not a task message: log why, store FAILURE if it has an id,
    /// and drop it (rejected, never requeued forever).
    pub(super) async fn undecodable(self: Arc<Self>, delivery: Delivery, err: DecodeError) {
        self.stats.record(None, Event::Received);
        error!(
            "Received invalid task message from queue `{}` (task id {}): {err}; message rejected",
            delivery.queue(),
            err.task_id.as_deref().unwrap_or("unknown")
        );
        if let Some(id) = &err.task_id {
            let exc = ExceptionInfo::new(err.exc_type(), err.exc_module(), err.to_string());
            let mut meta = TaskMeta::failure(id.clone(), &exc, None);
            meta.children = Value::Null;
            self.store(meta).await;
        }
        // Not under its name: names from undecodable or unknown messages are whatever the
        // wire said, and the per-task counters would grow with every one.
        self.stats.record(None, Event::Failed);
        self.stats.record(None, Event::Rejected);
        settle("reject", delivery.reject(false).await);
    }

    /// A message over `max_message_size`: not decoded; logged, FAILURE `MessageTooLarge`
    /// stored under the task id its headers give (if any), message dropped.
    pub(super) async fn oversized(self: Arc<Self>, delivery: Delivery, size: usize, max: usize) {
        self.stats.record(None, Event::Received);
        let id = delivery
            .message()
            .headers
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let reason =
            format!("message of {size} bytes is over the worker's max_message_size of {max} bytes");
        error!(
            "Rejected a message from queue `{}` (task id {}): {reason}",
            delivery.queue(),
            id.as_deref().unwrap_or("unknown")
        );
        if let Some(id) = id {
            let exc = ExceptionInfo::new("MessageTooLarge", crate::error::EXC_MODULE, reason);
            let mut meta = TaskMeta::failure(id, &exc, None);
            meta.children = Value::Null;
            self.store(meta).await;
        }
        self.stats.record(None, Event::Failed);
        self.stats.record(None, Event::Rejected);
        settle("reject", delivery.reject(false).await);
    }

    /// A task name this worker does not have: FAILURE `NotRegistered`, message dropped.
    pub(super) async fn unregistered(self: Arc<Self>, delivery: Delivery, msg: Arc<TaskMessage>) {
        error!(
            "Received unregistered task of type '{}' (id {}) from queue `{}`; stored FAILURE NotRegistered and discarded the message",
            msg.headers.task,
            msg.headers.id,
            delivery.queue()
        );
        let exc = ExceptionInfo::celery("NotRegistered", msg.headers.task.clone());
        self.events
            .task(EventKind::TaskFailed, &msg.headers.id, |f| {
                f.str("exception", &exc.python_repr());
            });
        let mut meta = self.meta(&msg, State::Failure, exc.to_value());
        meta.children = Value::Null;
        self.store(meta).await;
        self.stats.record(None, Event::Failed);
        self.stats.record(None, Event::Rejected);
        settle("reject", delivery.reject(false).await);
    }

    /// A task that will not run — `reason` "expired" or "revoked": REVOKED
    /// (`TaskRevokedError(reason)`), acknowledged.
    pub(super) async fn not_run(
        self: Arc<Self>,
        delivery: Option<Delivery>,
        msg: Arc<TaskMessage>,
        store: bool,
        reason: &'static str,
    ) {
        warn!("Task {} {reason}; not run, stored REVOKED", Label(&msg));
        self.revoked_event(&msg.headers.id, None, reason == "expired");
        if store {
            // Celery 5.7 writes `children: []` here (observed; the wire spec says null).
            let exc = ExceptionInfo::revoked(reason);
            self.store(self.meta(&msg, State::Revoked, exc.to_value()))
                .await;
        }
        if msg.embed.chord.is_some() {
            let exc = ExceptionInfo::revoked(reason);
            Box::pin(flow::chord_member_done(
                &*self,
                &msg,
                State::Revoked,
                exc.to_value(),
            ))
            .await;
        }
        self.stats.record(Some(&msg.headers.task), Event::Revoked);
        if let Some(d) = delivery {
            settle("ack", d.ack().await);
        }
    }
}

fn settle(op: &str, r: Result<(), celeriac_core::BrokerError>) {
    if let Err(e) = r {
        // The broker redelivers what it did not hear an ack for (at-least-once).
        warn!("{op} failed: {e}");
    }
}

impl JobEnv {
    /// Why `msg` must not run now, if it must not: revoked, or expired.
    pub(super) fn why_not_run(&self, msg: &TaskMessage) -> Option<&'static str> {
        if self.revoked.contains(&msg.headers.id) || self.revoked.stamped(&msg.headers.stamps) {
            Some("revoked")
        } else if msg.headers.expires.is_some_and(|e| e <= Utc::now()) {
            Some("expired")
        } else {
            None
        }
    }
}

/// Runs one accepted job in its slot and settles its message.
pub(super) fn execute(
    shared: Arc<JobEnv>,
    job: Job,
    slot: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> {
    // Taken apart here and run in an `async move` block rather than an `async fn`: a
    // future keeps its arguments and what is moved out of them side by side
    // (rust-lang/rust#62958), which would hold the message twice. A worker holds one such
    // future per running task, so its size is the worker's memory per task.
    let Job {
        delivery,
        msg,
        task,
    } = job;
    async move {
        let _slot = slot; // held until the job ends
        let cfg = task.config();
        let app = &shared.app;
        let acks_late = cfg.acks_late.unwrap_or(app.config().acks_late);
        let store_results =
            !msg.headers.ignore_result.unwrap_or(cfg.ignore_result) && app.backend().is_some();
        let ctx = TaskContext::for_delivery(
            app.clone(),
            msg.clone(),
            delivery.queue(),
            delivery.redelivered(),
            shared.hostname.clone(),
            cfg.max_retries,
        );
        let mut delivery = Some(delivery);
        if !acks_late {
            if let Some(d) = delivery.take() {
                settle("ack", d.ack().await);
            }
        }
        // Revoked or expired while it waited for a slot or its ETA.
        if let Some(reason) = shared.why_not_run(&msg) {
            Box::pin(shared.clone().not_run(delivery, msg, store_results, reason)).await;
            return;
        }
        if store_results && cfg.track_started.unwrap_or(app.config().track_started) {
            let started = json!({"pid": std::process::id(), "hostname": &*shared.hostname});
            let mut meta = shared.meta(&msg, State::Started, started);
            meta.date_done = None;
            shared.store(meta).await;
        }
        shared
            .events
            .task(EventKind::TaskStarted, &msg.headers.id, |_| {});
        if let Some(problem) = Limits::out_of_range(msg.headers.timelimit) {
            warn!("Task {}: {problem}", Label(&msg));
        }
        let task_limits = shared
            .overrides
            .limits(&msg.headers.task)
            .unwrap_or(Limits {
                hard: cfg.time_limit,
                soft: cfg.soft_time_limit,
            });
        let limits = Limits::resolve(msg.headers.timelimit, task_limits, shared.limits);
        shared.stats.started();
        let t0 = Instant::now();
        // `revoke(terminate=true)` reaches a running task through this.
        let running_key = shared.terminators.register(&ctx, crate::events::unix_now());
        let terminate = ctx.terminate_signal();
        let ran = match &shared.prefork {
            // Boxed, like the body below: the job future lives as long as the task, so it stays
            // small (10,000 sleeping tasks should not carry 10,000 copies of the prefork state).
            Some(pool) => {
                Box::pin(pool.run(
                    &msg,
                    ctx.delivery_info(),
                    &shared.hostname,
                    cfg.max_retries,
                    limits.hard,
                    limits.soft,
                    terminate,
                ))
                .await
            }
            None => {
                let body = Box::pin(execute::run(
                    &task,
                    ctx.clone(),
                    msg.args.clone(),
                    msg.kwargs.clone(),
                    shared.pool,
                    limits,
                ));
                tokio::select! {
                    out = body => Ran::Output(out),
                    _ = terminate.notified() => Ran::Terminated,
                }
            }
        };
        shared.terminators.remove(running_key);
        let runtime = t0.elapsed().as_secs_f64();
        shared.stats.finished();
        // Boxed: this future is allocated once per job for the job's whole life, so what only
        // happens after the task ran should not make it bigger.
        Box::pin(finish(Finished {
            shared,
            cfg,
            ctx,
            msg,
            delivery,
            store_results,
            runtime,
            ran,
        }))
        .await
    }
}

/// A job whose task has run (or was terminated), ready to be recorded and settled.
struct Finished {
    shared: Arc<JobEnv>,
    cfg: TaskConfig,
    ctx: TaskContext,
    msg: Arc<TaskMessage>,
    delivery: Option<Delivery>,
    store_results: bool,
    runtime: f64,
    ran: Ran,
}

/// Records a finished job's outcome (result, retry, stats) and settles its message.
fn finish(job: Finished) -> impl std::future::Future<Output = ()> {
    let Finished {
        shared,
        cfg,
        ctx,
        msg,
        mut delivery,
        store_results,
        runtime,
        ran,
    } = job;
    // See `execute` for why this is an `async move` block.
    async move {
        let app = &shared.app;
        let label = Label(&msg);
        let task_name = msg.headers.task.as_str();
        let output = match ran {
            Ran::Output(output) => output,
            Ran::Terminated => {
                warn!("Task {label} terminated by a revoke request; stored REVOKED");
                shared.revoked_event(&msg.headers.id, Some(ctx.terminate_signum()), false);
                shared.stats.record(Some(task_name), Event::Terminated);
                if store_results {
                    let exc = ExceptionInfo::revoked("terminated");
                    shared
                        .store(shared.meta(&msg, State::Revoked, exc.to_value()))
                        .await;
                }
                let exc = ExceptionInfo::revoked("terminated");
                Box::pin(flow::chord_member_done(
                    &*shared,
                    &msg,
                    State::Revoked,
                    exc.to_value(),
                ))
                .await;
                if let Some(d) = delivery.take() {
                    settle("ack", d.ack().await);
                }
                return;
            }
        };
        match execute::decide(output, &cfg, &ctx) {
            Outcome::Success(value) => {
                match Box::pin(flow::on_success(&*shared, &msg, &value)).await {
                    Ok(()) => {
                        info!(
                            "Task {label} succeeded in {runtime:.6}s: {}",
                            truncate_for_log(&value)
                        );
                        shared.stats.record(Some(task_name), Event::Succeeded);
                        shared
                            .events
                            .task(EventKind::TaskSucceeded, &msg.headers.id, |f| {
                                f.str("result", &celeriac_core::protocol::json::value_repr(&value));
                                f.value("runtime", &runtime);
                            });
                        if store_results {
                            shared
                                .store(shared.meta(&msg, State::Success, value.clone()))
                                .await;
                        }
                        Box::pin(flow::chord_member_done(
                            &*shared,
                            &msg,
                            State::Success,
                            value,
                        ))
                        .await;
                    }
                    Err(e) => {
                        // As Celery: a task whose successors cannot be sent has failed.
                        let exc = ExceptionInfo::new(
                            "CanvasError",
                            crate::error::EXC_MODULE,
                            format!("cannot send what follows the task: {e}"),
                        );
                        error!("Task {label} raised unexpected: {exc}");
                        shared.failed_event(&msg.headers.id, &exc, None);
                        shared.stats.record(Some(task_name), Event::Failed);
                        if store_results {
                            shared.store(shared.meta_failure(&msg, &exc, None)).await;
                        }
                        Box::pin(flow::on_failure(&*shared, &msg, &exc, None, store_results)).await;
                    }
                }
            }
            Outcome::Retry { countdown, reason } => {
                let retried = producer::retry(app, &msg, countdown, ctx.queue_if_unrouted());
                match Box::pin(retried).await {
                    Ok(()) => {
                        info!("Task {label} retry: {reason}");
                        shared
                            .events
                            .task(EventKind::TaskRetried, &msg.headers.id, |f| {
                                f.str(
                                    "exception",
                                    &format!("Retry('{}')", reason.replace('\'', "\\'")),
                                );
                                f.str("traceback", &format!("celery.exceptions.Retry: {reason}\n"));
                            });
                        shared.stats.record(Some(task_name), Event::Retried);
                        if store_results {
                            let mut meta = shared.meta(&msg, State::Retry, Value::Null);
                            meta.traceback = Some(format!("Traceback (most recent call last):\n  (Rust task)\ncelery.exceptions.Retry: {reason}\n"));
                            meta.children = json!([[[msg.headers.id, null], null]]);
                            meta.date_done = None;
                            shared.store(meta).await;
                        }
                    }
                    Err(e) => {
                        error!("Task {label}: cannot send its retry ({e})");
                        if let Some(d) = delivery.take() {
                            // Late ack: the original goes back to the queue, nothing is lost.
                            settle("restore", d.restore().await);
                            return;
                        }
                        shared.stats.record(Some(task_name), Event::Failed);
                        if store_results {
                            let exc = ExceptionInfo::new(
                                "RetryError",
                                crate::error::EXC_MODULE,
                                format!("cannot send retry: {e}"),
                            );
                            shared.store(shared.meta_failure(&msg, &exc, None)).await;
                        }
                    }
                }
            }
            Outcome::Failure(f) => {
                error!("Task {label} raised unexpected: {}", f.exception);
                shared.failed_event(&msg.headers.id, &f.exception, f.traceback.as_deref());
                if let Some(tb) = &f.traceback {
                    debug!("Task {label} traceback:\n{tb}");
                }
                shared.stats.record(Some(task_name), Event::Failed);
                if store_results {
                    shared
                        .store(shared.meta_failure(&msg, &f.exception, f.traceback.clone()))
                        .await;
                }
                Box::pin(flow::on_failure(
                    &*shared,
                    &msg,
                    &f.exception,
                    f.traceback.clone(),
                    store_results,
                ))
                .await;
            }
            Outcome::Reject {
                requeue: true,
                reason,
            } => {
                warn!("Task {label} rejected its message ({reason}); requeued");
                shared.rejected_event(&msg.headers.id, true);
                shared.stats.record(None, Event::Rejected);
                match delivery.take() {
                    Some(d) => settle("reject", d.reject(true).await),
                    None => {
                        // Early ack already removed the original: send it again instead.
                        if let Err(e) = Box::pin(producer::publish(app, (*msg).clone())).await {
                            error!("Task {label}: cannot requeue ({e})");
                        }
                    }
                }
                return;
            }
            Outcome::Reject {
                requeue: false,
                reason,
            } => {
                warn!("Task {label} rejected its message ({reason}); dropped");
                shared.rejected_event(&msg.headers.id, false);
                shared.stats.record(None, Event::Rejected);
                if store_results {
                    let mut meta =
                        shared.meta_failure(&msg, &execute::reject_exception(&reason), None);
                    meta.traceback = None;
                    shared.store(meta).await;
                }
            }
            Outcome::Ignore => info!("Task {label} ignored"),
        }
        if let Some(d) = delivery.take() {
            settle("ack", d.ack().await);
        }
    }
}

/// A worker runs a workflow's steps against the app's result backend, and sends what
/// follows a task to the broker.
impl flow::Host for JobEnv {
    fn backend(&self) -> Option<&dyn celeriac_core::ResultBackend> {
        self.app.backend().map(|b| b.as_ref())
    }

    fn store(&self, meta: TaskMeta) -> futures::future::BoxFuture<'_, ()> {
        JobEnv::store(self, meta)
    }

    fn send(
        &self,
        sig: celeriac_core::Signature,
        opts: producer::SendOptions,
    ) -> futures::future::BoxFuture<'_, Result<producer::Sent, crate::Error>> {
        Box::pin(producer::send(&self.app, sig, opts))
    }
}
