//! The `ResultBackend` trait: where task states and results are stored and waited for.
//!
//! Records are [`TaskMeta`] in Celery's format. Every engine keeps Celery's rule that a
//! SUCCESS record is never overwritten (a late duplicate run cannot replace a result a
//! client may already have read). Waiting is the engine's job: engines that can push
//! (Redis pub/sub, the memory engine's notifications) override
//! [`ResultBackend::wait_ready`]; the default polls with back-off.
//!
//! Chords need the backend too: it counts a chord's finished header parts atomically and
//! elects exactly one caller to fire the body ([`ResultBackend::chord_part`]), so a chord
//! completes once however many workers (celeriac's or Celery's) run its parts.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::BackendError;
use crate::state::{State, TaskMeta};

/// One finished chord header task, reported after its own record was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordPart {
    /// The chord's group id (`headers.group`).
    pub group_id: String,
    /// The header task's id.
    pub task_id: String,
    /// Its position in the header (`headers.group_index`); results are ordered by it.
    pub group_index: Option<u64>,
    /// How it ended (SUCCESS, or FAILURE/REVOKED, which fail the chord).
    pub state: State,
    /// Its result as stored: the return value, or the exception dict.
    pub result: Value,
}

/// What [`ResultBackend::chord_part`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ChordJoin {
    /// Parts are still missing, or another caller fires the body.
    Waiting,
    /// This caller completed the chord and holds the right to fire the body: every part,
    /// in header order. Call [`ResultBackend::chord_finish`] with `claim` afterwards.
    Complete {
        /// The header parts, ordered by `group_index`.
        parts: Vec<ChordPart>,
        /// Proof of the claim, for [`ResultBackend::chord_finish`].
        claim: String,
    },
    /// The chord already completed (a late duplicate of a part).
    Done,
}

/// How a claimed chord ended, for [`ResultBackend::chord_finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChordEnd {
    /// The body was sent: drop the chord's data, remember it as done.
    Fired,
    /// A part failed (the body was failed instead): forget the chord's size so a late
    /// duplicate part does not fail it again.
    Failed,
}

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
        let mut polls =
            crate::backoff::Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
        loop {
            let meta = self.get(task_id).await?;
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(meta);
            }
            tokio::time::sleep(polls.next_pause().min(deadline - now)).await;
        }
    }

    /// Makes ready to receive the results of tasks about to be sent: called before every
    /// publish of tasks. The `rpc://` backend declares the client's reply queue here (once),
    /// as Celery's client does on every send, so a result is never sent to a queue that
    /// does not exist yet. Others have nothing to do.
    async fn before_send(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Prepares chord `group_id` for `size` header parts (Celery's `set_chord_size`),
    /// before any part is sent. Re-applying a chord with the same group id starts afresh.
    async fn chord_start(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        let _ = (group_id, size);
        Err(BackendError::Unsupported("chords"))
    }

    /// Records a finished header part, once per `(task_id, group_index)` however often it
    /// is reported, and says whether this caller completed the chord. Exactly one caller
    /// gets [`ChordJoin::Complete`] per chord.
    async fn chord_part(&self, part: &ChordPart) -> Result<ChordJoin, BackendError> {
        let _ = part;
        Err(BackendError::Unsupported("chords"))
    }

    /// Ends a chord this caller claimed with [`ChordJoin::Complete`].
    async fn chord_finish(
        &self,
        group_id: &str,
        claim: &str,
        end: ChordEnd,
    ) -> Result<(), BackendError> {
        let _ = (group_id, claim, end);
        Err(BackendError::Unsupported("chords"))
    }

    /// Saves a group's member ids (Celery's `GroupResult.save()`), so the group can be
    /// restored by id later, from any process.
    async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BackendError> {
        let _ = (group_id, task_ids);
        Err(BackendError::Unsupported("saved groups"))
    }

    /// The member ids of a saved group, or `None`.
    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let _ = group_id;
        Err(BackendError::Unsupported("saved groups"))
    }

    /// Deletes a saved group (not its members' results).
    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        let _ = group_id;
        Err(BackendError::Unsupported("saved groups"))
    }
}

/// The `{"result": [[gid, null], [[[tid, null], null], ...]]}` record Celery's
/// `GroupResult.save()` writes, and back.
pub mod group_record {
    use serde_json::{json, Value};

    /// The record for a group of plain task results.
    pub fn encode(group_id: &str, task_ids: &[String]) -> Value {
        let members: Vec<Value> = task_ids
            .iter()
            .map(|id| json!([[id, null], null]))
            .collect();
        json!({"result": [[group_id, null], members]})
    }

    /// The member ids of a saved record (a nested group is one member: its own id).
    pub fn decode(record: &Value) -> Option<Vec<String>> {
        let members = record.get("result")?.get(1)?.as_array()?;
        members
            .iter()
            .map(|m| {
                // [[id, parent], children] — or, for a nested group, [[gid, parent], [...]].
                m.get(0)?.get(0)?.as_str().map(str::to_string)
            })
            .collect()
    }
}

/// The member ids of a saved group record as an engine read it back
/// (`celery-taskset-meta-<id>`, Celery's `{"result": [[gid, parent], [members]]}`): the one
/// decoder every byte-storing engine's [`ResultBackend::restore_group`] uses, so a record
/// restores the same on all of them.
///
/// The JSON is read leniently (`NaN`, `Infinity`, `-Infinity` taken as `null`), as Celery
/// itself reads it (`json.loads`); strict JSON is tried first, so a well-formed record costs
/// nothing extra. Members are read as [`group_record::decode`] does: each member's id,
/// whatever its parent, nested groups by their own id.
///
/// Anything else is [`BackendError::Corrupt`], naming `group_id`.
pub fn decode_saved_group(group_id: &str, raw: &[u8]) -> Result<Vec<String>, BackendError> {
    crate::protocol::json::parse_lenient(raw)
        .ok()
        .and_then(|v| group_record::decode(&v))
        .ok_or_else(|| BackendError::Corrupt {
            task_id: group_id.to_string(),
            reason: "not a saved group record".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn decodes_what_celery_saves() {
        // Celery 5.7 `GroupResult.save()`: `{"result": group.as_tuple()}`.
        let raw = br#"{"result": [["g", null], [[["a", null], null], [["b", null], null]]]}"#;
        assert_eq!(decode_saved_group("g", raw).unwrap(), ids(&["a", "b"]));
        // A member with a parent, and a nested group (kept as its own id).
        let raw = br#"{"result": [["g", null], [[["c", [["p", null], null]], null], [["g2", null], [[["x", null], null]]]]]}"#;
        assert_eq!(decode_saved_group("g", raw).unwrap(), ids(&["c", "g2"]));
        // An empty group.
        let raw = br#"{"result": [["g", null], []]}"#;
        assert_eq!(decode_saved_group("g", raw).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn round_trips_and_reads_leniently() {
        let members = ids(&["a", "b", "c"]);
        let raw = group_record::encode("g", &members).to_string();
        assert_eq!(decode_saved_group("g", raw.as_bytes()).unwrap(), members);
        // Python's `json.loads` takes non-finite floats; so does this decoder.
        let raw = br#"{"result": [["g", NaN], [[["a", null], null]]], "x": -Infinity}"#;
        assert_eq!(decode_saved_group("g", raw).unwrap(), ids(&["a"]));
    }

    #[test]
    fn refuses_what_is_not_a_group_record() {
        for raw in [
            &b"not json"[..],
            br#"{"result": 1}"#,
            br#"{"status": "SUCCESS"}"#,
            br#"{"result": [["g", null], [[[1, null], null]]]}"#,
        ] {
            match decode_saved_group("g", raw) {
                Err(BackendError::Corrupt { task_id, .. }) => assert_eq!(task_id, "g"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
            }
        }
    }
}
