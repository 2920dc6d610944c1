//! Celery's built-in canvas tasks every app registers: `celery.map` and `celery.starmap`
//! (what `task.map(items)`, `task.starmap(items)` and each part of `task.chunks(items, n)`
//! send). The worker that receives one calls the named task once per item, in order, in
//! the same task run, and stores the list of results — as Celery's `xmap`/`xstarmap` do.

use std::sync::Arc;

use serde_json::{Map, Value};

use celeriac_core::canvas::names;
use celeriac_core::Signature;

use crate::context::TaskContext;
use crate::error::TaskError;
use crate::task::{Invocation, Task, TaskKind, TaskOutput};

/// `celery.map` (`star = false`) or `celery.starmap` (`star = true`).
pub(crate) struct MapTask {
    star: bool,
}

/// The built-in tasks, to register in every app (a user's task of the same name wins).
pub(crate) fn all() -> Vec<Arc<dyn Task>> {
    vec![
        Arc::new(MapTask { star: false }),
        Arc::new(MapTask { star: true }),
    ]
}

impl Task for MapTask {
    fn name(&self) -> &'static str {
        if self.star {
            names::STARMAP
        } else {
            names::MAP
        }
    }

    fn kind(&self) -> TaskKind {
        TaskKind::Async
    }

    fn invoke(
        &self,
        ctx: TaskContext,
        args: Vec<Value>,
        mut kwargs: Map<String, Value>,
    ) -> Invocation {
        let star = self.star;
        let name = self.name();
        // Celery calls it as xmap(task, it): positionally or by keyword.
        let mut args = args.into_iter();
        let task = kwargs.remove("task").or_else(|| args.next());
        let items = kwargs.remove("it").or_else(|| args.next());
        let bad =
            |what: String| Invocation::Ready(Err(TaskError::type_error(format!("{name}: {what}"))));
        let task: Signature = match task.map(serde_json::from_value) {
            Some(Ok(sig)) => sig,
            Some(Err(e)) => return bad(format!("`task` is not a signature: {e}")),
            None => return bad("missing `task`".into()),
        };
        let items = match items {
            Some(Value::Array(items)) => items,
            Some(other) => return bad(format!("`it` must be a list, got {other}")),
            None => return bad("missing `it`".into()),
        };
        Invocation::Async(Box::pin(async move {
            let Some(inner) = ctx.app().task(&task.task).cloned() else {
                return Err(TaskError::with_module(
                    "NotRegistered",
                    celeriac_core::state::CELERY_EXCEPTIONS,
                    task.task.clone(),
                ));
            };
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let call_args = match (star, item) {
                    (true, Value::Array(a)) => a,
                    (true, other) => {
                        return Err(TaskError::type_error(format!(
                            "{name}: each item must be a list of arguments, got {other}"
                        )))
                    }
                    (false, one) => vec![one],
                };
                // Celery calls the task function with the item alone (the signature's own
                // arguments are not used).
                out.push(run_inline(inner.invoke(ctx.clone(), call_args, Map::new())).await?);
            }
            Ok(Value::Array(out))
        }))
    }
}

/// Runs one invocation to its end, a blocking one on a blocking thread.
async fn run_inline(inv: Invocation) -> TaskOutput {
    match inv {
        Invocation::Ready(out) => out,
        Invocation::Async(fut) => fut.await,
        Invocation::Blocking(f) => tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
            Err(TaskError::runtime_error(format!(
                "task thread ended abnormally: {e}"
            )))
        }),
    }
}
