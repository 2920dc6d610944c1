//! Chords, on Celery 5.7's keys and algorithm (`celery-taskset-meta-<gid>.j/.s/.t/.d/.c`):
//! each finished part is recorded by `PART_SCRIPT` (`lua/chord_part.lua`), which also
//! elects the one worker to fire the body; that worker extends its claim before publishing
//! (`EXTEND_SCRIPT`, `lua/chord_claim_extend.lua`) and, once the body is sent, drops the
//! join data and marks the chord done (`CLEANUP_SCRIPT`, `lua/chord_cleanup.lua`) — so a
//! chord whose parts run on a mix of Celery and celeriac workers fires its body once.

use serde_json::{json, Value};
use tracing::warn;

use celeriac_core::error::BackendError;
use celeriac_core::{ChordEnd, ChordJoin, ChordPart, State};

use super::RedisBackend;

/// Records one part; on the last one, claims the right to fire the body.
pub(super) const PART_SCRIPT: &str = include_str!("../lua/chord_part.lua");
/// Extends the claim to fire the body before publishing it, or takes it back if it lapsed.
pub(super) const EXTEND_SCRIPT: &str = include_str!("../lua/chord_claim_extend.lua");
/// Drops a fired chord's join data and marks it done, if the caller still holds the claim.
pub(super) const CLEANUP_SCRIPT: &str = include_str!("../lua/chord_cleanup.lua");

/// Chord join data expiry (Celery: `result_chord_expires`, default `result_expires`, 1 day).
pub(super) const CHORD_EXPIRES: u64 = 86_400;
/// The first claim on firing a body: Celery's `max(5, 2 × result_chord_join_timeout)`.
const CHORD_CLAIM_TTL: u64 = 6;
/// The claim while publishing the body: Celery's estimate of its publish retry budget
/// with default settings (observed: 21 s).
const CHORD_PUBLISH_TTL: u64 = 21;
/// How long a fired chord stays marked done: Celery's `max(2 × claim TTL, 300)`.
const CHORD_DONE_TTL: u64 = 300;

/// A part as stored in `.j`: `[1, tid, state, result]`.
fn decode_part(group_id: &str, raw: &[u8], score: f64) -> Option<ChordPart> {
    let v = celeriac_core::protocol::json::parse_lenient(raw).ok()?;
    let task_id = v.get(1)?.as_str()?.to_string();
    let state = State::parse(v.get(2)?.as_str()?);
    Some(ChordPart {
        group_id: group_id.to_string(),
        task_id,
        group_index: (score.is_finite() && score >= 0.0).then_some(score as u64),
        state,
        result: v.get(3).cloned().unwrap_or(Value::Null),
    })
}

impl RedisBackend {
    /// `ResultBackend::chord_start`: records the chord's size and clears any old claim.
    pub(super) async fn begin_chord(
        &self,
        group_id: &str,
        size: usize,
    ) -> Result<(), BackendError> {
        let keys = &self.inner.keys;
        redis::pipe()
            .cmd("DEL")
            .arg(keys.group(group_id, ".c"))
            .ignore()
            .cmd("SET")
            .arg(keys.group(group_id, ".s"))
            .arg(size)
            .arg("EX")
            .arg(CHORD_EXPIRES)
            .ignore()
            .exec_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("chord start", e))
    }

    /// `ResultBackend::chord_part`: records a finished part; the worker that records the
    /// last one and holds the claim gets every part, to fire the body.
    pub(super) async fn join_part(&self, part: &ChordPart) -> Result<ChordJoin, BackendError> {
        let inner = &*self.inner;
        let gid = &part.group_id;
        let k = |suffix: &str| inner.keys.group(gid, suffix);
        let score = part
            .group_index
            .map_or_else(|| "+inf".to_string(), |i| i.to_string());
        let encoded = json!([1, part.task_id, part.state.as_str(), part.result]).to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (count, adjust, size, claimed): (i64, Option<i64>, Option<i64>, i64) = inner
            .chord_part
            .key(k(".j"))
            .key(k(".t"))
            .key(k(".s"))
            .key(k(".d"))
            .key(k(""))
            .key(k(".c"))
            .arg(&part.task_id)
            .arg(encoded)
            .arg("1")
            .arg(score)
            .arg(CHORD_EXPIRES)
            .arg(CHORD_EXPIRES)
            .arg(CHORD_CLAIM_TTL)
            .arg(&token)
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| inner.err("chord part", e))?;
        if count == -1 {
            return Ok(ChordJoin::Done);
        }
        let Some(size) = size else {
            return Ok(ChordJoin::Waiting);
        };
        if claimed != 1 || count != size + adjust.unwrap_or(0) {
            return Ok(ChordJoin::Waiting);
        }
        let raw: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(k(".j"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| inner.err("chord join", e))?;
        let mut parts = Vec::with_capacity(raw.len());
        for (value, score) in raw {
            parts.push(
                decode_part(gid, &value, score).ok_or_else(|| BackendError::Corrupt {
                    task_id: gid.clone(),
                    reason: format!(
                        "chord part is not [1, id, state, result]: {}",
                        String::from_utf8_lossy(&value)
                    ),
                })?,
            );
        }
        let held: i64 = inner
            .chord_extend
            .key(k(".c"))
            .key(k(".s"))
            .arg(&token)
            .arg(CHORD_PUBLISH_TTL)
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| inner.err("chord claim", e))?;
        if held != 1 {
            warn!("chord {gid}: the claim to fire its body passed to another worker");
            return Ok(ChordJoin::Waiting);
        }
        Ok(ChordJoin::Complete {
            parts,
            claim: token,
        })
    }

    /// `ResultBackend::chord_finish`: after the body was fired, cleans up under the claim;
    /// after it failed, drops the size so the chord is not fired again.
    pub(super) async fn end_chord(
        &self,
        group_id: &str,
        claim: &str,
        end: ChordEnd,
    ) -> Result<(), BackendError> {
        let inner = &*self.inner;
        let k = |suffix: &str| inner.keys.group(group_id, suffix);
        match end {
            ChordEnd::Fired => {
                let cleaned: i64 = inner
                    .chord_cleanup
                    .key(k(".c"))
                    .key(k(".j"))
                    .key(k(".t"))
                    .key(k(".s"))
                    .key(k(".d"))
                    .arg(claim)
                    .arg(CHORD_DONE_TTL)
                    .invoke_async(&mut inner.conn())
                    .await
                    .map_err(|e| inner.err("chord cleanup", e))?;
                if cleaned != 1 {
                    warn!(
                        "chord {group_id}: claim lost before cleanup; its data is left to expire"
                    );
                }
                Ok(())
            }
            ChordEnd::Failed => redis::cmd("DEL")
                .arg(k(".s"))
                .exec_async(&mut inner.conn())
                .await
                .map_err(|e| inner.err("chord finish", e)),
        }
    }
}
