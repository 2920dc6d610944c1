//! The `ResultBackend` trait: where task states and results are stored and waited for.
//!
//! Records are [`TaskMeta`] in Celery's format. Every engine keeps Celery's rule that a
//! SUCCESS record is never overwritten (a late duplicate run cannot replace a result a
//! client may already have read). Waiting is the engine's job: engines that can push
//! (Redis pub/sub, the memory engine's notifications) override
//! [`ResultBackend::wait_ready`]; the default polls with back-off.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;
use crate::state::TaskMeta;

/// A store of task results.
#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    /// The backend URL with credentials masked.
    fn url(&self) -> String;

    /// Stores `meta` under its task id, expiring after `expires` (`None` = never).
    ///
    /// Does nothing if a SUCCESS record is already stored for the id.
    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError>;

    /// The stored record, or `None` if there is none (the task is PENDING to a client).
    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError>;

    /// Deletes the record.
    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// Waits until the task's record is in a ready state (SUCCESS, FAILURE, REVOKED) and
    /// returns it; returns the latest record (or `None`) if `timeout` passes first.
    ///
    /// The default polls [`get`](Self::get), starting at 5 ms and backing off to 500 ms.
    async fn wait_ready(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let meta = self.get(task_id).await?;
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(meta);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}
