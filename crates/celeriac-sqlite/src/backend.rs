//! `SqliteBackend`: task results in the `results` table, in Celery's record format, with
//! Celery's rules: a SUCCESS record is never overwritten (unless expired), records expire
//! after `result_expires`.
//!
//! Waiting sleeps on the database's change signal (this process's commits, and other
//! processes' through the file watch), re-reading the record on each change and at least
//! every `poll_interval`: no busy polling.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use celeriac_core::error::BackendError;
use celeriac_core::{ResultBackend, State, TaskMeta};

use crate::db::Db;
use crate::error::Error;
use crate::schema::now;

/// The SQLite result backend. Cheap to clone.
#[derive(Clone)]
pub struct SqliteBackend {
    db: Arc<Db>,
}

impl SqliteBackend {
    /// Opens the database named by `url` (creating it if needed).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let db = Db::open_url(url).await?;
        Ok(Self { db })
    }

    /// Deletes expired records now; returns how many.
    pub async fn purge_expired(&self) -> Result<usize, BackendError> {
        self.db
            .call(true, |c| {
                c.execute(
                    "DELETE FROM results WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                    params![now()],
                )
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "purge expired"))
    }

    async fn read(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let id = task_id.to_string();
        let raw: Option<Vec<u8>> = self
            .db
            .call(false, move |c| {
                c.prepare_cached(
                    "SELECT meta FROM results WHERE task_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                )?
                .query_row(params![id, now()], |r| r.get(0))
                .optional()
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "get"))?;
        raw.map(|r| {
            TaskMeta::from_json(&r).map_err(|e| BackendError::Corrupt {
                task_id: task_id.to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }
}

#[async_trait]
impl ResultBackend for SqliteBackend {
    fn url(&self) -> String {
        self.db.name.clone()
    }

    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        let (id, status, json) = (
            meta.task_id.clone(),
            meta.status.to_string(),
            meta.to_json(),
        );
        let expires_at = expires.map(|d| now() + d.as_secs_f64());
        self.db
            .call(true, move |c| {
                c.prepare_cached(
                    "INSERT INTO results (task_id, status, meta, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, meta = excluded.meta,
                         expires_at = excluded.expires_at
                     WHERE results.status != 'SUCCESS' OR (results.expires_at IS NOT NULL AND results.expires_at <= ?5)",
                )?
                .execute(params![id, status, json, expires_at, now()])
                .map(drop)
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "store"))
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.read(task_id).await
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let id = task_id.to_string();
        self.db
            .call(true, move |c| {
                c.execute("DELETE FROM results WHERE task_id = ?1", params![id])
                    .map(drop)
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "forget"))
    }

    async fn wait_ready(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.db.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let meta = self.read(task_id).await?;
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            let now_t = tokio::time::Instant::now();
            if now_t >= deadline {
                return Ok(meta);
            }
            let wait = self.db.cfg.poll_interval.min(deadline - now_t);
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl SqliteBackend {
    /// Whether `task_id` has a ready record (for tools that check many ids).
    pub async fn is_ready(&self, task_id: &str) -> Result<bool, BackendError> {
        Ok(self
            .read(task_id)
            .await?
            .is_some_and(|m| m.status.is_ready() || m.status == State::Ignored))
    }
}
