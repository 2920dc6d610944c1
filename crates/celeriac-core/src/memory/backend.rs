//! The in-process result store: records in a map with expiry times, and one `Notify`
//! per task id that somebody is waiting on, so a waiter wakes exactly when its task's
//! record changes. Chords are counted under the same lock, so exactly one part completes
//! each chord.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{ChordEnd, ChordJoin, ChordPart, ResultBackend};
use crate::error::BackendError;
use crate::state::{State, TaskMeta};
use crate::url::EngineUrl;

/// The `memory://` result backend. Cheap to clone; clones share the records.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    state: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    records: HashMap<String, (TaskMeta, Option<Instant>)>,
    waiters: HashMap<String, (Arc<Notify>, usize)>,
    stores_since_sweep: usize,
    chords: HashMap<String, Chord>,
    groups: HashMap<String, Vec<String>>,
}

/// One chord's join state, as Celery's Redis backend keeps it in `.s`/`.j`/`.d`/`.c`.
#[derive(Default)]
struct Chord {
    /// Expected parts (`None` until `chord_start`, or after a failure).
    size: Option<usize>,
    /// Parts recorded, deduplicated by `(task id, group index)`.
    parts: Vec<ChordPart>,
    /// Who fires the body.
    claim: Option<String>,
    /// When the chord was fired (late duplicates are ignored for a while after).
    done_at: Option<Instant>,
}

/// How long a fired chord is remembered, to ignore late duplicate parts (Celery: 300 s).
const CHORD_DONE_TTL: Duration = Duration::from_secs(300);

static INSTANCES: OnceLock<Mutex<HashMap<String, Arc<Inner>>>> = OnceLock::new();

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A new store, not shared with any URL.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                name: String::new(),
                state: Mutex::new(Records::default()),
            }),
        }
    }

    /// The process-wide instance for `memory://[NAME]`.
    pub fn from_url(url: &EngineUrl) -> Self {
        let name = url.host().to_string();
        let inner = super::registry(&INSTANCES, &name, || Inner {
            name: name.clone(),
            state: Mutex::new(Records::default()),
        });
        Self { inner }
    }

    /// How many records are stored (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether no records are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // Every section leaves the maps consistent; a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self, task_id: &str) -> Option<TaskMeta> {
        let mut st = self.lock();
        match st.records.get(task_id) {
            Some((_, Some(exp))) if *exp <= Instant::now() => {
                st.records.remove(task_id);
                None
            }
            Some((meta, _)) => Some(meta.clone()),
            None => None,
        }
    }
}

#[async_trait]
impl ResultBackend for MemoryBackend {
    fn url(&self) -> String {
        format!("memory://{}", self.inner.name)
    }

    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        let now = Instant::now();
        let notify = {
            let mut st = self.lock();
            if let Some((old, exp)) = st.records.get(&meta.task_id) {
                let live = exp.is_none_or(|e| e > now);
                if live && old.status == State::Success {
                    return Ok(());
                }
            }
            st.records.insert(
                meta.task_id.clone(),
                (meta.clone(), expires.map(|d| now + d)),
            );
            // Sweep expired records now and then so a long-lived process does not grow —
            // after as many stores as there are records (at least 4,096), so sweeping
            // costs O(1) per store however many records are kept.
            st.stores_since_sweep += 1;
            if st.stores_since_sweep >= st.records.len().max(4096) {
                st.stores_since_sweep = 0;
                st.records.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
            }
            st.waiters.get(&meta.task_id).map(|(n, _)| n.clone())
        };
        if let Some(n) = notify {
            n.notify_waiters();
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        Ok(self.current(task_id))
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.lock().records.remove(task_id);
        Ok(())
    }

    async fn wait_ready(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let deadline = Instant::now() + timeout;
        let notify = {
            let mut st = self.lock();
            let slot = st
                .waiters
                .entry(task_id.to_string())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            slot.1 += 1;
            slot.0.clone()
        };
        // Unregisters the waiter even if this future is dropped mid-wait.
        let _guard = WaiterGuard {
            backend: self,
            task_id,
        };
        let result = loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let meta = self.current(task_id);
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                break meta;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => break self.current(task_id),
            }
        };
        Ok(result)
    }

    async fn chord_start(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        let mut st = self.lock();
        let now = Instant::now();
        st.chords
            .retain(|_, c| c.done_at.is_none_or(|t| now < t + CHORD_DONE_TTL));
        st.chords.insert(
            group_id.to_string(),
            Chord {
                size: Some(size),
                ..Chord::default()
            },
        );
        Ok(())
    }

    async fn chord_part(&self, part: &ChordPart) -> Result<ChordJoin, BackendError> {
        Ok(self.chord_join(part))
    }

    async fn chord_finish(
        &self,
        group_id: &str,
        claim: &str,
        end: ChordEnd,
    ) -> Result<(), BackendError> {
        let mut st = self.lock();
        if let Some(chord) = st.chords.get_mut(group_id) {
            match end {
                ChordEnd::Fired if chord.claim.as_deref() == Some(claim) => {
                    *chord = Chord {
                        done_at: Some(Instant::now()),
                        ..Chord::default()
                    };
                }
                ChordEnd::Fired => {}
                ChordEnd::Failed => chord.size = None,
            }
        }
        Ok(())
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BackendError> {
        self.lock()
            .groups
            .insert(group_id.to_string(), task_ids.to_vec());
        Ok(())
    }

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        Ok(self.lock().groups.get(group_id).cloned())
    }

    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        self.lock().groups.remove(group_id);
        Ok(())
    }
}

impl MemoryBackend {
    fn chord_join(&self, part: &ChordPart) -> ChordJoin {
        let mut st = self.lock();
        let now = Instant::now();
        let chord = st.chords.entry(part.group_id.clone()).or_default();
        if chord.done_at.is_some_and(|t| now < t + CHORD_DONE_TTL) {
            return ChordJoin::Done;
        }
        let seen = chord
            .parts
            .iter()
            .any(|p| p.task_id == part.task_id && p.group_index == part.group_index);
        if !seen {
            chord.parts.push(part.clone());
        }
        match chord.size {
            Some(size) if chord.parts.len() >= size && chord.claim.is_none() => {
                let claim = uuid::Uuid::new_v4().simple().to_string();
                chord.claim = Some(claim.clone());
                let mut parts = chord.parts.clone();
                // Header order; parts without an index last, in arrival order.
                parts.sort_by_key(|p| p.group_index.unwrap_or(u64::MAX));
                ChordJoin::Complete { parts, claim }
            }
            _ => ChordJoin::Waiting,
        }
    }
}

struct WaiterGuard<'a> {
    backend: &'a MemoryBackend,
    task_id: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.backend.lock();
        if let Some(slot) = st.waiters.get_mut(self.task_id) {
            slot.1 -= 1;
            if slot.1 == 0 {
                st.waiters.remove(self.task_id);
            }
        }
    }
}
