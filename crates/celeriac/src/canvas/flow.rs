//! What happens after a task ran, for the workflow it belongs to (the message's `embed`):
//! callbacks (`link`) and the next chain step on success; on failure, errbacks
//! (`link_error`) and the same FAILURE written for every step the chain will no longer
//! reach; and, for a chord header member, the chord join — the member that completes the
//! chord sends the body with every result in header order, or fails it with `ChordError`.
//! The order and every field follow Celery 5.7's worker, so chains and chords started by
//! Python clients run on celeriac workers, mixed with Celery workers.
//!
//! Two hosts run these steps: the worker (records to the app's result backend, follow-ups
//! published to the broker) and eager mode (records kept in the call, follow-ups run
//! inline) — so eager mode has the worker's workflow semantics, `ChordError` and all.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tracing::{error, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::protocol::TaskMessage;
use celeriac_core::{
    Canvas, ChordEnd, ChordJoin, ChordPart, ExceptionInfo, ResultBackend, Signature, State,
    TaskMeta,
};

use crate::canvas::plan::{SendOptions, Sent};
use crate::error::Error;

/// What runs a workflow's steps: where records go, where chords are joined, and how what
/// follows a task is sent.
pub(crate) trait Host: Sync {
    /// The result backend chords are joined in and records are read from, if any.
    fn backend(&self) -> Option<&dyn ResultBackend>;

    /// Stores a record (retrying as the host sees fit; never fails the workflow).
    fn store(&self, meta: TaskMeta) -> BoxFuture<'_, ()>;

    /// Sends a task or canvas that follows a finished task.
    fn send(&self, sig: Signature, opts: SendOptions) -> BoxFuture<'_, Result<Sent, Error>>;
}

/// `(parent_id, root_id)` for what `msg`'s task sends.
fn parent_of(msg: &TaskMessage) -> Option<(String, String)> {
    Some((
        msg.headers.id.clone(),
        msg.headers
            .root_id
            .clone()
            .unwrap_or_else(|| msg.headers.id.clone()),
    ))
}

/// After a success, before its result is stored (Celery's order, so the result's readers
/// find the children sent): the callbacks, then the next chain step, each with the result
/// prepended to its arguments.
pub(crate) async fn on_success(
    host: &dyn Host,
    msg: &TaskMessage,
    value: &Value,
) -> Result<(), Error> {
    let has = |v: &Option<Vec<Signature>>| v.as_ref().is_some_and(|c| !c.is_empty());
    if !has(&msg.embed.callbacks) && !has(&msg.embed.chain) {
        return Ok(());
    }
    let parent = parent_of(msg);
    if let Some(callbacks) = msg.embed.callbacks.as_ref().filter(|c| !c.is_empty()) {
        let how = SendOptions {
            args: vec![value.clone()],
            parent: parent.clone(),
            chain: Vec::new(),
        };
        if callbacks.len() == 1 {
            host.send(callbacks[0].clone(), how).await?;
        } else {
            // Several callbacks: each group on its own, the others together as one group.
            let (groups, tasks): (Vec<Signature>, Vec<Signature>) = callbacks
                .iter()
                .cloned()
                .partition(|s| matches!(s.canvas(), Ok(Canvas::Group(_))));
            for g in groups {
                host.send(g, how.clone()).await?;
            }
            if !tasks.is_empty() {
                host.send(Signature::group(tasks), how).await?;
            }
        }
    }
    if let Some(chain) = msg.embed.chain.as_ref().filter(|c| !c.is_empty()) {
        let mut rest = chain.clone();
        if let Some(next) = rest.pop() {
            host.send(
                next,
                SendOptions {
                    args: vec![value.clone()],
                    parent,
                    chain: rest,
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// After a task's final record (SUCCESS, FAILURE or REVOKED) was stored: its part of a
/// chord, if it is a chord header member.
pub(crate) async fn chord_member_done(
    host: &dyn Host,
    msg: &TaskMessage,
    state: State,
    result: Value,
) {
    let Some(body) = msg.embed.chord.as_deref() else {
        return;
    };
    let Some(group_id) = msg.headers.group.clone() else {
        warn!(
            "Task {}[{}] is part of a chord but has no group id; its chord cannot complete",
            msg.headers.task, msg.headers.id
        );
        return;
    };
    let part = ChordPart {
        group_id,
        task_id: msg.headers.id.clone(),
        group_index: msg.headers.group_index,
        state,
        result,
    };
    join(host, &part, body, parent_of(msg)).await;
}

/// Reports `part` and, if it completed the chord, fires or fails `body`.
async fn join(
    host: &dyn Host,
    part: &ChordPart,
    body: &Signature,
    parent: Option<(String, String)>,
) {
    let Some(backend) = host.backend() else {
        error!(
            "chord {}: no result backend, so its body can never run",
            part.group_id
        );
        return;
    };
    // Retried for about a minute (pauses of 0.1 s doubling to 25.6 s), then given up.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let joined = loop {
        match backend.chord_part(part).await {
            Ok(j) => break j,
            Err(e) if e.is_retryable() && backoff.peek() < Duration::from_secs(30) => {
                warn!(
                    "chord {}: cannot record part {} ({e}); retrying",
                    part.group_id, part.task_id
                );
                backoff.wait().await;
            }
            Err(e) => {
                error!(
                    "chord {}: cannot record part {}: {e}",
                    part.group_id, part.task_id
                );
                return;
            }
        }
    };
    let ChordJoin::Complete { parts, claim } = joined else {
        return;
    };
    let gid = &part.group_id;
    if let Some(failed) = parts.iter().find(|p| p.state.is_exception()) {
        let exc = dependency_error(failed);
        error!("Chord {gid} raised: ChordError: {}", exc.message());
        fail_body(host, body, &exc).await;
        if let Err(e) = backend.chord_finish(gid, &claim, ChordEnd::Failed).await {
            warn!("chord {gid}: cannot close it ({e})");
        }
        return;
    }
    let results: Vec<Value> = parts.into_iter().map(|p| p.result).collect();
    let how = SendOptions {
        args: vec![Value::Array(results)],
        parent,
        chain: Vec::new(),
    };
    if let Err(e) = host.send(body.clone(), how).await {
        error!("Chord callback for {gid} raised: {e}");
        let exc = ExceptionInfo::celery("ChordError", format!("Callback error: {e}"));
        fail_body(host, body, &exc).await;
    }
    if let Err(e) = backend.chord_finish(gid, &claim, ChordEnd::Fired).await {
        warn!("chord {gid}: cannot clean up ({e})");
    }
}

/// `ChordError("Dependency <id> raised ValueError('boom')")`, as Celery words it.
fn dependency_error(failed: &ChordPart) -> ExceptionInfo {
    let repr = ExceptionInfo::from_value(&failed.result)
        .map_or_else(|| failed.result.to_string(), |e| e.python_repr());
    ExceptionInfo::celery(
        "ChordError",
        format!("Dependency {} raised {repr}", failed.task_id),
    )
}

/// A chord body that will not run: FAILURE for its id, its errbacks, and the rest of its
/// chain failed too (Celery's `chord_error_from_stack`).
async fn fail_body(host: &dyn Host, body: &Signature, exc: &ExceptionInfo) {
    let Some(body_id) = body.option("task_id").and_then(Value::as_str) else {
        warn!(
            "chord body {} has no task id; its failure is not stored",
            body.task
        );
        return;
    };
    host.store(TaskMeta::failure(body_id.to_string(), exc, None))
        .await;
    let errbacks = signatures(body.option("link_error"));
    if !errbacks.is_empty() {
        send_errbacks(host, errbacks, body_id, body_id).await;
    }
    fail_chain(host, &signatures(body.option("chain")), exc, None, true).await;
}

/// After a failure was stored: the chord part, the remaining chain steps failed with the
/// same exception, then the errbacks — Celery's `mark_as_failure`.
pub(crate) async fn on_failure(
    host: &dyn Host,
    msg: &TaskMessage,
    exc: &ExceptionInfo,
    traceback: Option<String>,
    store: bool,
) {
    chord_member_done(host, msg, State::Failure, exc.to_value()).await;
    if let Some(chain) = &msg.embed.chain {
        fail_chain(host, chain, exc, traceback, store).await;
    }
    if let Some(errbacks) = msg.embed.errbacks.as_ref().filter(|e| !e.is_empty()) {
        let root = msg.headers.root_id.as_deref().unwrap_or(&msg.headers.id);
        send_errbacks(host, errbacks.clone(), &msg.headers.id, root).await;
    }
}

/// Errbacks run as one group with the failed task's id prepended (Celery 5.7 sends even a
/// single errback as a group of one).
async fn send_errbacks(host: &dyn Host, errbacks: Vec<Signature>, failed_id: &str, root_id: &str) {
    let how = SendOptions {
        args: vec![Value::String(failed_id.to_string())],
        parent: Some((failed_id.to_string(), root_id.to_string())),
        chain: Vec::new(),
    };
    if let Err(e) = host.send(Signature::group(errbacks), how).await {
        error!("Task {failed_id}: cannot send its errbacks ({e})");
    }
}

/// Writes the failure for every step a failed chain will not run (so a waiter on any of
/// them, above all on the chain's last step, is released), reports chord members among
/// them, and descends into chord bodies — Celery's `_fail_chain`.
fn fail_chain<'a>(
    host: &'a dyn Host,
    chain: &'a [Signature],
    exc: &'a ExceptionInfo,
    traceback: Option<String>,
    store: bool,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let mut pending: VecDeque<Signature> = chain.iter().cloned().collect();
        while let Some(step) = pending.pop_front() {
            if let Ok(Canvas::Chord { body, .. }) = step.canvas() {
                pending.push_back(*body);
                continue;
            }
            let Some(id) = step.option("task_id").and_then(Value::as_str) else {
                continue;
            };
            let group_id = step.option("group_id").and_then(Value::as_str);
            let chord_body = step
                .option("chord")
                .and_then(|c| serde_json::from_value::<Signature>(c.clone()).ok());
            let already_failed = match (&chord_body, host.backend()) {
                (Some(_), Some(b)) => b
                    .get(id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.status.is_exception()),
                _ => false,
            };
            if store {
                let mut meta = TaskMeta::failure(id.to_string(), exc, traceback.clone());
                meta.group_id = group_id.map(str::to_string);
                host.store(meta).await;
            }
            if let (Some(body), Some(gid), false) = (chord_body, group_id, already_failed) {
                let part = ChordPart {
                    group_id: gid.to_string(),
                    task_id: id.to_string(),
                    group_index: step.option("group_index").and_then(Value::as_u64),
                    state: State::Failure,
                    result: exc.to_value(),
                };
                join(host, &part, &body, Some((id.to_string(), id.to_string()))).await;
            }
        }
    })
}

fn signatures(v: Option<&Value>) -> Vec<Signature> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| serde_json::from_value(i.clone()).ok())
            .collect(),
        Some(one @ Value::Object(_)) => serde_json::from_value(one.clone()).into_iter().collect(),
        _ => Vec::new(),
    }
}
