//! `SqliteBackend`: task results in the `results` table, in Celery's record format, with
//! Celery's rules: a SUCCESS record is never overwritten (unless expired), records expire
//! after `result_expires`.
//!
//! Waiting sleeps on the database's change signal (this process's commits, and other
//! processes' through the file watch), re-reading the record on each change and at least
//! every `poll_interval`: no busy polling.
//!
//! Chords: each header part is recorded and counted in one write transaction (the
//! `chords` and `chord_parts` tables), so among any number of processes exactly one
//! completes a chord and fires its body.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use celeriac_core::backend::{decode_saved_group, group_record};
use celeriac_core::error::BackendError;
use celeriac_core::{ChordEnd, ChordJoin, ChordPart, ResultBackend, State, TaskMeta};

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

    async fn chord_start(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        let gid = group_id.to_string();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.db
            .call(true, move |c| {
                let t = now();
                c.execute(
                    "DELETE FROM chord_parts WHERE group_id IN (SELECT group_id FROM chords WHERE expires_at <= ?1)",
                    params![t],
                )?;
                c.execute("DELETE FROM chords WHERE expires_at <= ?1", params![t])?;
                // Re-applying a chord with the same group id is a new run (as Celery's
                // `set_chord_size`, parts already recorded stay: one may have come first).
                c.prepare_cached(
                    "INSERT INTO chords (group_id, size, claim, done_at, expires_at) VALUES (?1, ?2, NULL, NULL, ?3)
                     ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, claim = NULL, done_at = NULL,
                         expires_at = excluded.expires_at",
                )?
                .execute(params![gid, size, t + CHORD_EXPIRES])
                .map(drop)
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "chord start"))
    }

    async fn chord_part(&self, part: &ChordPart) -> Result<ChordJoin, BackendError> {
        let part = part.clone();
        self.db
            .call(true, move |c| chord_part_tx(c, &part))
            .await
            .map_err(|e| e.backend(&self.db.name, "chord part"))
    }

    async fn chord_finish(
        &self,
        group_id: &str,
        claim: &str,
        end: ChordEnd,
    ) -> Result<(), BackendError> {
        let (gid, claim) = (group_id.to_string(), claim.to_string());
        self.db
            .call(true, move |c| match end {
                ChordEnd::Fired => {
                    let t = now();
                    let mine = c.execute(
                        "UPDATE chords SET size = NULL, claim = NULL, done_at = ?3, expires_at = ?4
                         WHERE group_id = ?1 AND claim = ?2",
                        params![gid, claim, t, t + CHORD_DONE_TTL],
                    )?;
                    if mine > 0 {
                        c.execute("DELETE FROM chord_parts WHERE group_id = ?1", params![gid])?;
                    }
                    Ok(())
                }
                ChordEnd::Failed => c
                    .execute(
                        "UPDATE chords SET size = NULL WHERE group_id = ?1",
                        params![gid],
                    )
                    .map(drop),
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "chord finish"))
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BackendError> {
        let gid = group_id.to_string();
        let record =
            serde_json::to_vec(&group_record::encode(group_id, task_ids)).unwrap_or_default();
        self.db
            .call(true, move |c| {
                c.execute(
                    "INSERT INTO groups (group_id, record, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (group_id) DO UPDATE SET record = excluded.record, expires_at = excluded.expires_at",
                    params![gid, record, now() + CHORD_EXPIRES],
                )
                .map(drop)
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "save group"))
    }

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let gid = group_id.to_string();
        let raw: Option<Vec<u8>> = self
            .db
            .call(false, move |c| {
                c.query_row(
                    "SELECT record FROM groups WHERE group_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    params![gid, now()],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "restore group"))?;
        raw.map(|r| decode_saved_group(group_id, &r)).transpose()
    }

    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        let gid = group_id.to_string();
        self.db
            .call(true, move |c| {
                c.execute("DELETE FROM groups WHERE group_id = ?1", params![gid])
                    .map(drop)
            })
            .await
            .map_err(|e| e.backend(&self.db.name, "forget group"))
    }
}

/// How long a chord's join state is kept (Celery's `result_chord_expires` default).
const CHORD_EXPIRES: f64 = 86_400.0;
/// How long a fired chord is remembered, to ignore late duplicate parts (Celery: 300 s).
const CHORD_DONE_TTL: f64 = 300.0;
/// `ord` of a part without a group index: after every indexed part.
const NO_INDEX: i64 = i64::MAX;

fn chord_part_tx(c: &rusqlite::Connection, part: &ChordPart) -> rusqlite::Result<ChordJoin> {
    let t = now();
    let gid = &part.group_id;
    let row: Option<(Option<i64>, Option<String>, Option<f64>)> = c
        .prepare_cached(
            "SELECT size, claim, done_at FROM chords WHERE group_id = ?1 AND expires_at > ?2",
        )?
        .query_row(params![gid, t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    if let Some((_, _, Some(done))) = row {
        if t < done + CHORD_DONE_TTL {
            return Ok(ChordJoin::Done);
        }
    }
    if row.is_none() {
        // A part can arrive before its chord was started (Celery's clients start it after
        // sending the first part): remember it, size unknown.
        c.prepare_cached(
            "INSERT INTO chords (group_id, size, claim, done_at, expires_at) VALUES (?1, NULL, NULL, NULL, ?2)
             ON CONFLICT (group_id) DO UPDATE SET size = NULL, claim = NULL, done_at = NULL, expires_at = excluded.expires_at",
        )?
        .execute(params![gid, t + CHORD_EXPIRES])?;
    }
    let ord = part
        .group_index
        .map_or(NO_INDEX, |i| i64::try_from(i).unwrap_or(NO_INDEX));
    let result = serde_json::to_vec(&part.result).unwrap_or_default();
    c.prepare_cached(
        "INSERT INTO chord_parts (group_id, ord, task_id, state, result, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, (SELECT COUNT(*) FROM chord_parts WHERE group_id = ?1))
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        gid,
        ord,
        part.task_id,
        part.state.to_string(),
        result
    ])?;
    let (size, claim) = row.map_or((None, None), |(s, c, _)| (s, c));
    let count: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM chord_parts WHERE group_id = ?1")?
        .query_row(params![gid], |r| r.get(0))?;
    match size {
        Some(size) if count >= size && claim.is_none() => {
            let claim = uuid::Uuid::new_v4().simple().to_string();
            c.prepare_cached("UPDATE chords SET claim = ?2 WHERE group_id = ?1")?
                .execute(params![gid, claim])?;
            let mut stmt = c.prepare_cached(
                "SELECT ord, task_id, state, result FROM chord_parts WHERE group_id = ?1 ORDER BY ord, seq",
            )?;
            let parts = stmt
                .query_map(params![gid], |r| {
                    let ord: i64 = r.get(0)?;
                    let state: String = r.get(2)?;
                    let result: Vec<u8> = r.get(3)?;
                    Ok(ChordPart {
                        group_id: gid.clone(),
                        task_id: r.get(1)?,
                        group_index: (ord != NO_INDEX).then_some(ord as u64),
                        state: State::parse(&state),
                        result: serde_json::from_slice(&result).unwrap_or(serde_json::Value::Null),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(ChordJoin::Complete { parts, claim })
        }
        _ => Ok(ChordJoin::Waiting),
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
