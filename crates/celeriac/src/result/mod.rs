//! Result handles: [`AsyncResult`], a handle to one task's result — `get`, `wait`,
//! `ready`, `state`, `successful`, `failed`, `forget` — as Celery's `AsyncResult`, and
//! [`GroupResult`] (in `group.rs`) for a group's members.

mod group;

pub use group::GroupResult;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use celeriac_core::{ResultBackend, State, TaskMeta};

use crate::error::Error;

/// A handle to the result of one task.
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
/// use std::time::Duration;
/// let r = app.send_task("tasks.add", serde_json::json!([2, 3]), serde_json::json!({})).await?;
/// let sum: i64 = r.get(Duration::from_secs(10)).await?;   // Err(TaskFailed) if it raised
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncResult {
    id: String,
    source: Source,
    /// The app that sent it, for `revoke`.
    app: Option<crate::App>,
}

#[derive(Clone)]
enum Source {
    Backend(Option<Arc<dyn ResultBackend>>),
    Eager(Box<TaskMeta>),
}

impl std::fmt::Debug for AsyncResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AsyncResult {
    pub(crate) fn new(id: String, app: &crate::App) -> Self {
        Self {
            id,
            source: Source::Backend(app.backend().cloned()),
            app: Some(app.clone()),
        }
    }

    pub(crate) fn eager(meta: TaskMeta) -> Self {
        Self {
            id: meta.task_id.clone(),
            source: Source::Eager(Box::new(meta)),
            app: None,
        }
    }

    /// Revokes the task on every worker: if it has not started it will not run (REVOKED
    /// is stored); with `terminate`, a running one is stopped too.
    pub async fn revoke(&self, terminate: bool) -> Result<(), Error> {
        match &self.app {
            Some(app) => app.control().revoke(&[&self.id], terminate).await,
            None => Ok(()),
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> Result<&Arc<dyn ResultBackend>, Error> {
        match &self.source {
            Source::Backend(Some(b)) => Ok(b),
            _ => Err(Error::NoResultBackend),
        }
    }

    /// The current record (PENDING when the backend has none).
    pub async fn info(&self) -> Result<TaskMeta, Error> {
        match &self.source {
            Source::Eager(meta) => Ok((**meta).clone()),
            Source::Backend(_) => Ok(self
                .backend()?
                .get(&self.id)
                .await?
                .unwrap_or_else(|| TaskMeta::pending(self.id.clone()))),
        }
    }

    /// The current state.
    pub async fn state(&self) -> Result<State, Error> {
        Ok(self.info().await?.status)
    }

    /// Whether the task has finished (SUCCESS, FAILURE or REVOKED).
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.state().await?.is_ready())
    }

    /// Whether the task finished with SUCCESS.
    pub async fn successful(&self) -> Result<bool, Error> {
        Ok(self.state().await? == State::Success)
    }

    /// Whether the task finished with FAILURE.
    pub async fn failed(&self) -> Result<bool, Error> {
        Ok(self.state().await? == State::Failure)
    }

    /// Waits until the task is ready and returns its record, whatever the state.
    ///
    /// Waiting uses the backend's notifications where it has them (no polling loop).
    pub async fn wait(&self, timeout: Duration) -> Result<TaskMeta, Error> {
        let meta = match &self.source {
            Source::Eager(meta) => Some((**meta).clone()),
            Source::Backend(_) => self.backend()?.wait_ready(&self.id, timeout).await?,
        };
        match meta {
            Some(m) if m.status.is_ready() => Ok(m),
            other => Err(Error::Timeout {
                task_id: self.id.clone(),
                timeout,
                state: other.map_or_else(|| "PENDING".to_string(), |m| m.status.to_string()),
            }),
        }
    }

    /// Waits for the task and returns its result as a `T`.
    ///
    /// A FAILURE comes back as [`Error::TaskFailed`] with the exception's type, message
    /// and traceback; a REVOKED task as [`Error::TaskRevoked`]; no result within
    /// `timeout` as [`Error::Timeout`].
    pub async fn get<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, Error> {
        let meta = self.wait(timeout).await?;
        into_result(meta)
    }

    /// Deletes the stored result.
    pub async fn forget(&self) -> Result<(), Error> {
        match &self.source {
            Source::Eager(_) => Ok(()),
            Source::Backend(_) => Ok(self.backend()?.forget(&self.id).await?),
        }
    }
}

/// Turns a ready record into the typed result or the matching error.
pub(crate) fn into_result<T: DeserializeOwned>(meta: TaskMeta) -> Result<T, Error> {
    let exception = || {
        meta.exception().unwrap_or_else(|| {
            celeriac_core::ExceptionInfo::new("Exception", "builtins", meta.result.to_string())
        })
    };
    match meta.status {
        State::Success => {
            serde_json::from_value(meta.result.clone()).map_err(|source| Error::ResultType {
                task_id: meta.task_id.clone(),
                expected: std::any::type_name::<T>(),
                source,
            })
        }
        State::Revoked => Err(Error::TaskRevoked {
            task_id: meta.task_id.clone(),
            exception: exception(),
        }),
        _ => Err(Error::TaskFailed {
            task_id: meta.task_id.clone(),
            exception: exception(),
            traceback: meta.traceback.clone(),
        }),
    }
}
