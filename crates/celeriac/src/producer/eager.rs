//! Eager mode (`task_always_eager`): what is sent runs inline, in the caller, and the
//! result comes back already ready — for unit tests of code that sends tasks.
//!
//! Eager mode sends through the same plan as the broker path and runs the same workflow
//! steps as a worker ([`canvas::flow`](crate::canvas::flow)): it is a host whose "broker"
//! is a queue in this call and whose result store is a `memory://` backend of its own, so
//! a chain, a chord (its join and `ChordError`), callbacks and errbacks behave as on a
//! worker. Each message is still encoded and decoded exactly as for a real send, so option
//! and argument errors show up in tests. Retries run at once (countdowns are not waited
//! for), as in Celery; nothing touches the app's broker or result backend.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::Value;

use celeriac_core::memory::MemoryBackend;
use celeriac_core::protocol::TaskMessage;
use celeriac_core::{ResultBackend, Signature, State, TaskMeta};

use super::{prepare, SendOptions, Sent};
use crate::app::App;
use crate::canvas::{flow, plan};
use crate::context::{RequestDeliveryInfo, TaskContext};
use crate::error::Error;
use crate::execute::{self, Outcome, Pool};
use crate::result::AsyncResult;

/// The node name eager tasks see as their worker.
const HOSTNAME: &str = "eager@localhost";

/// One eager send: the messages still to run, and every record written.
struct Run {
    app: App,
    records: MemoryBackend,
    queue: Mutex<VecDeque<TaskMessage>>,
}

/// What an eager send did: the ids it sent and every record its tasks wrote.
pub(super) struct Finished {
    sent: Sent,
    records: MemoryBackend,
}

impl Finished {
    /// The ids the send returned.
    pub(super) fn sent(&self) -> &Sent {
        &self.sent
    }

    /// A ready result for task `id` (PENDING if nothing wrote its record).
    pub(super) async fn result(&self, id: &str) -> AsyncResult {
        let meta = self.records.get(id).await.ok().flatten();
        AsyncResult::eager(meta.unwrap_or_else(|| TaskMeta::pending(id)))
    }
}

/// Plans `sig` and runs every message it produced, and every message those produced, in
/// order, until none is left.
pub(super) async fn run(app: &App, sig: Signature, opts: SendOptions) -> Result<Finished, Error> {
    let run = Run {
        app: app.clone(),
        records: MemoryBackend::new(),
        queue: Mutex::new(VecDeque::new()),
    };
    let sent = run.enqueue(sig, opts).await?;
    while let Some(msg) = run.next() {
        run.execute(msg).await?;
    }
    Ok(Finished {
        sent,
        records: run.records,
    })
}

impl Run {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<TaskMessage>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self) -> Option<TaskMessage> {
        self.queue().pop_front()
    }

    /// Plans `sig` as the broker path does and queues its messages here.
    async fn enqueue(&self, sig: Signature, opts: SendOptions) -> Result<Sent, Error> {
        let mut planned = Vec::new();
        let chords: &dyn ResultBackend = &self.records;
        let sent = plan::plan(Some(chords), sig, opts.args, opts.chain, &mut planned).await?;
        let mut messages = Vec::with_capacity(planned.len());
        for s in &planned {
            let msg = prepare::message(&self.app, s, opts.parent.as_ref())?;
            // Round-trip through the wire format so eager runs see what a worker would.
            let msg = TaskMessage::decode(&msg.encode())
                .map_err(|e| Error::Config(format!("eager message does not decode: {e}")))?;
            messages.push(msg);
        }
        self.queue().extend(messages);
        Ok(sent)
    }

    /// Runs one message as a worker would (retries at once), stores its record and does
    /// what follows it in its workflow.
    async fn execute(&self, mut msg: TaskMessage) -> Result<(), Error> {
        let app = &self.app;
        let task = app
            .task(&msg.headers.task)
            .cloned()
            .ok_or_else(|| Error::NotRegistered(msg.headers.task.clone()))?;
        let cfg = task.config();
        let delivery = RequestDeliveryInfo {
            exchange: msg.properties.delivery_info.exchange.clone(),
            routing_key: msg.properties.delivery_info.routing_key.clone(),
            priority: msg.properties.priority,
            redelivered: false,
        };
        loop {
            let ctx = TaskContext::new(
                app.clone(),
                Arc::new(msg.clone()),
                delivery.clone(),
                HOSTNAME.into(),
                cfg.max_retries,
                true,
            );
            let output = execute::run(
                &task,
                ctx.clone(),
                msg.args.clone(),
                msg.kwargs.clone(),
                Pool::Async,
                // Celery's eager mode applies no time limits either.
                execute::Limits::default(),
            )
            .await;
            let id = msg.headers.id.clone();
            match execute::decide(output, &cfg, &ctx) {
                Outcome::Success(value) => {
                    flow::on_success(self, &msg, &value).await?;
                    self.keep(TaskMeta::success(id, value.clone())).await;
                    flow::chord_member_done(self, &msg, State::Success, value).await;
                }
                Outcome::Retry { .. } => {
                    msg.headers.retries += 1;
                    continue;
                }
                Outcome::Failure(f) => {
                    self.keep(TaskMeta::failure(id, &f.exception, f.traceback.clone()))
                        .await;
                    flow::on_failure(self, &msg, &f.exception, f.traceback, true).await;
                }
                Outcome::Reject { reason, .. } => {
                    let exc = execute::reject_exception(&reason);
                    self.keep(TaskMeta::failure(id, &exc, None)).await;
                }
                Outcome::Ignore => {
                    self.keep(TaskMeta::new(id, State::Ignored, Value::Null))
                        .await
                }
            }
            return Ok(());
        }
    }

    /// Keeps a record (in memory: it cannot fail), never expiring within the call.
    async fn keep(&self, meta: TaskMeta) {
        if let Err(e) = self.records.store(&meta, None).await {
            tracing::warn!("eager result of task {} not kept: {e}", meta.task_id);
        }
    }
}

impl flow::Host for Run {
    fn backend(&self) -> Option<&dyn ResultBackend> {
        Some(&self.records)
    }

    fn store(&self, meta: TaskMeta) -> BoxFuture<'_, ()> {
        Box::pin(self.keep(meta))
    }

    fn send(&self, sig: Signature, opts: SendOptions) -> BoxFuture<'_, Result<Sent, Error>> {
        Box::pin(self.enqueue(sig, opts))
    }
}
