//! Eager mode (`task_always_eager`): `apply_async` runs the task inline, in the caller, and
//! returns a result that is already ready — for unit tests of code that sends tasks.
//!
//! The message is still built and decoded exactly as for a real send, so option errors
//! and argument errors show up in tests. Retries run at once (countdowns are not waited
//! for), as in Celery; nothing touches the broker or the result backend.

use celeriac_core::protocol::TaskMessage;
use celeriac_core::{Signature, State, TaskMeta};

use crate::app::App;
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
            &msg,
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
