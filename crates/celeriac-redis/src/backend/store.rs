//! Storing task records: `RedisBackend::store` queues a record for one writer task, which
//! writes every record waiting in batches of up to `STORE_BATCH`, each batch one call of
//! `SCRIPT` (`lua/store_result.lua`: `SETEX` + `PUBLISH` per record, never overwriting
//! SUCCESS). Also `forget`, which deletes a record.

use std::time::Duration;

use celeriac_core::error::BackendError;
use celeriac_core::TaskMeta;

use super::{Inner, RedisBackend};
use crate::error::{names, UNAVAILABLE};

/// Writes a batch of records, each unless SUCCESS is already stored, and publishes each.
pub(super) const SCRIPT: &str = include_str!("../lua/store_result.lua");

/// A record waiting to be written: key, JSON, TTL in seconds (0: none), and who waits.
pub(super) struct PendingStore {
    key: String,
    json: Vec<u8>,
    ttl: u64,
    done: tokio::sync::oneshot::Sender<Result<(), BackendError>>,
}

/// Most records written by one script call.
const STORE_BATCH: usize = 500;

impl RedisBackend {
    /// `ResultBackend::store`: the record under its key, with `expires` rounded up to whole
    /// seconds (at least 1).
    pub(super) async fn store_meta(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let ttl = expires.map_or(0, |d| d.as_secs_f64().ceil().max(1.0) as u64);
        self.inner
            .store(
                self.inner.keys.task_meta(&meta.task_id),
                meta.to_json(),
                ttl,
            )
            .await
    }

    /// `ResultBackend::forget`: deletes the task's record.
    pub(super) async fn forget_meta(&self, task_id: &str) -> Result<(), BackendError> {
        redis::cmd("DEL")
            .arg(self.inner.keys.task_meta(task_id))
            .exec_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("forget", e))
    }
}

impl Inner {
    /// Queues a record for the writer task (started if none runs) and waits until the
    /// batch holding it is written.
    async fn store(&self, key: String, json: Vec<u8>, ttl: u64) -> Result<(), BackendError> {
        let (done, written) = tokio::sync::oneshot::channel();
        let start_writer = self.stores.push(PendingStore {
            key,
            json,
            ttl,
            done,
        });
        if start_writer {
            match self.me.upgrade() {
                Some(me) => {
                    tokio::spawn(async move { me.write_stores().await });
                }
                None => self.stores.not_started(),
            }
        }
        written.await.unwrap_or_else(|_| {
            Err(BackendError::Operation {
                op: "store",
                reason: "the backend was closed".into(),
            })
        })
    }

    /// Writes waiting records in batches until none wait.
    async fn write_stores(&self) {
        while let Some(batch) = self.stores.next_batch() {
            let mut batch = batch.into_iter().peekable();
            while batch.peek().is_some() {
                let chunk: Vec<PendingStore> = batch.by_ref().take(STORE_BATCH).collect();
                let mut call = self.store.prepare_invoke();
                for p in &chunk {
                    call.key(&p.key).arg(&p.json).arg(p.ttl);
                }
                let result: Result<Vec<String>, BackendError> = call
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(|e| self.err("store", e));
                match result {
                    Ok(replies) => {
                        let mut replies = replies.into_iter();
                        for p in chunk {
                            let outcome = match replies.next() {
                                // The script passes a write's error on as text: a server
                                // that cannot take writes for now (a replica after a
                                // failover, out of memory) is retried like any other.
                                Some(r) if r.starts_with("ERR ") && names(&r, UNAVAILABLE) => {
                                    self.target.check_text(&r);
                                    Err(BackendError::Unavailable {
                                        url: self.cfg.masked.clone(),
                                        reason: r[4..].to_string(),
                                    })
                                }
                                Some(r) if r.starts_with("ERR ") => Err(BackendError::Operation {
                                    op: "store",
                                    reason: format!("{} ({})", &r[4..], self.cfg.masked),
                                }),
                                Some(_) => Ok(()),
                                None => Err(BackendError::Operation {
                                    op: "store",
                                    reason: format!(
                                        "no reply for this record ({})",
                                        self.cfg.masked
                                    ),
                                }),
                            };
                            let _ = p.done.send(outcome);
                        }
                    }
                    Err(e) => {
                        for p in chunk {
                            let _ = p.done.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }
}
