//! Eager mode (`task_always_eager`): `apply_async` runs the task inline, in the caller, and
//! returns a result that is already ready — for unit tests of code that sends tasks.
//!
//! The message is still built and decoded exactly as for a real send, so option errors
//! and argument errors show up in tests. Retries run at once (countdowns are not waited
//! for), as in Celery; nothing touches the broker or the result backend.

use futures::future::BoxFuture;
use serde_json::Value;

use celeriac_core::protocol::TaskMessage;
use celeriac_core::{Canvas, Signature, State, TaskMeta};

use crate::app::App;
use crate::canvas::GroupResult;
use crate::context::{RequestDeliveryInfo, TaskContext};
use crate::error::Error;
use crate::execute::{self, Outcome, Pool};
use crate::result::AsyncResult;

/// Runs `sig` inline and returns its finished result.
pub(crate) async fn apply(
    app: &App,
    sig: Signature,
    parent: Option<(String, String)>,
) -> Result<AsyncResult, Error> {
    let (mut msg, _) = app.prepare(&sig, parent)?;
    // Round-trip through the wire format so eager runs see what a worker would.
    msg = TaskMessage::decode(&msg.encode())
        .map_err(|e| Error::Config(format!("eager message does not decode: {e}")))?;
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
            std::sync::Arc::new(msg.clone()),
            delivery.clone(),
            "eager@localhost".into(),
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
        let meta = match execute::decide(output, &cfg, &ctx) {
            Outcome::Success(v) => TaskMeta::success(id, v),
            Outcome::Retry { .. } => {
                msg.headers.retries += 1;
                continue;
            }
            Outcome::Failure(f) => TaskMeta::failure(id, &f.exception, f.traceback),
            Outcome::Reject { reason, .. } => {
                TaskMeta::failure(id, &execute::reject_exception(&reason), None)
            }
            Outcome::Ignore => TaskMeta::new(id, State::Ignored, serde_json::Value::Null),
        };
        return Ok(AsyncResult::eager(meta));
    }
}

/// What an eager canvas produced: one task's result, or a group's.
pub(crate) enum EagerOut {
    One(AsyncResult),
    Many(GroupResult),
}

/// Runs a canvas inline: a chain step by step, a group member by member, a chord's header
/// then its body (Celery's `apply()`); links and errbacks of tasks run too.
pub(crate) async fn apply_canvas(
    app: &App,
    sig: Signature,
    parent: Option<(String, String)>,
) -> Result<AsyncResult, Error> {
    match eval(app, sig, Vec::new(), parent).await? {
        EagerOut::One(r) => Ok(r),
        EagerOut::Many(g) => Err(Error::Input(format!(
            "this canvas ends in a group ({}); send it with celeriac::group(..).apply_async to get its GroupResult",
            g.id()
        ))),
    }
}

/// [`apply_canvas`] for a group.
pub(crate) async fn apply_group(app: &App, sig: Signature) -> Result<GroupResult, Error> {
    match eval(app, sig, Vec::new(), None).await? {
        EagerOut::Many(g) => Ok(g),
        EagerOut::One(r) => Ok(GroupResult::eager(r.id().to_string(), vec![r])),
    }
}

fn eval<'a>(
    app: &'a App,
    sig: Signature,
    args: Vec<Value>,
    parent: Option<(String, String)>,
) -> BoxFuture<'a, Result<EagerOut, Error>> {
    Box::pin(async move {
        match sig.canvas()? {
            Canvas::Task => {
                let mut sig = sig.with_parent_args(&args);
                let links = take_list(&mut sig, "link");
                let errbacks = take_list(&mut sig, "link_error");
                sig.options.remove("chain");
                sig.options.remove("chord");
                let r = apply(app, sig, parent.clone()).await?;
                let meta = r.info().await?;
                let (follow, with) = match meta.status {
                    State::Success => (links, meta.result.clone()),
                    State::Failure => (errbacks, Value::String(meta.task_id.clone())),
                    _ => (Vec::new(), Value::Null),
                };
                for f in follow {
                    eval(
                        app,
                        f,
                        vec![with.clone()],
                        Some((r.id().to_string(), r.id().to_string())),
                    )
                    .await?;
                }
                Ok(EagerOut::One(r))
            }
            Canvas::Chain(_) => {
                let steps = crate::canvas::normalize(sig)?;
                let mut args = args;
                let mut last = None;
                for step in steps {
                    let out = eval(app, step, std::mem::take(&mut args), parent.clone()).await?;
                    match &out {
                        EagerOut::One(r) => {
                            let meta = r.info().await?;
                            if meta.status != State::Success {
                                return Ok(out);
                            }
                            args = vec![meta.result];
                        }
                        EagerOut::Many(g) => {
                            let mut values = Vec::with_capacity(g.len());
                            for r in g.results() {
                                values.push(r.info().await?.result);
                            }
                            args = vec![Value::Array(values)];
                        }
                    }
                    last = Some(out);
                }
                last.ok_or_else(|| Error::Input("a chain needs at least one step".into()))
            }
            Canvas::Group(members) => {
                let gid = sig
                    .option("task_id")
                    .and_then(Value::as_str)
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
                let mut results = Vec::with_capacity(members.len());
                for m in members {
                    match eval(app, m, args.clone(), parent.clone()).await? {
                        EagerOut::One(r) => results.push(r),
                        EagerOut::Many(_) => {
                            return Err(Error::Input(
                                "a group directly inside a group is not supported".into(),
                            ))
                        }
                    }
                }
                Ok(EagerOut::Many(GroupResult::eager(gid, results)))
            }
            Canvas::Chord { header, body, .. } => {
                let out = eval(app, Signature::group(header), args, parent.clone()).await?;
                let EagerOut::Many(g) = out else {
                    return Err(Error::Input("a chord header must be a group".into()));
                };
                let mut values = Vec::with_capacity(g.len());
                for r in g.results() {
                    let meta = r.info().await?;
                    if meta.status.is_exception() {
                        let mut body = *body;
                        let id = crate::canvas::freeze(&mut body)?.id().to_string();
                        let exc = chord_error(&meta);
                        return Ok(EagerOut::One(AsyncResult::eager(TaskMeta::failure(
                            id, &exc, None,
                        ))));
                    }
                    values.push(meta.result);
                }
                eval(app, *body, vec![Value::Array(values)], parent).await
            }
            Canvas::Chunks { task, items, size } => {
                eval(
                    app,
                    Signature::chunks_group(&task, &items, size),
                    args,
                    parent,
                )
                .await
            }
        }
    })
}

fn take_list(sig: &mut Signature, key: &str) -> Vec<Signature> {
    match sig.options.remove(key) {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|i| serde_json::from_value(i).ok())
            .collect(),
        Some(one @ Value::Object(_)) => serde_json::from_value(one).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Celery's `ChordError("Dependency <id> raised <repr>")` for a failed header part.
pub(crate) fn chord_error(failed: &TaskMeta) -> celeriac_core::ExceptionInfo {
    let repr = failed
        .exception()
        .map_or_else(|| failed.result.to_string(), |e| e.python_repr());
    celeriac_core::ExceptionInfo::new(
        "ChordError",
        "celery.exceptions",
        format!("Dependency {} raised {repr}", failed.task_id),
    )
}
