//! The ids of revoked tasks this worker remembers, so that a message whose task was
//! revoked is settled as REVOKED instead of run (`revoke`, `inspect revoked`), bounded as
//! Celery's `LimitedSet` is (50,000 ids, each forgotten 3 hours after it was revoked), and
//! kept across restarts in the worker's state file (`--statedb`).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

/// Ids of revoked tasks, with when each was revoked (Unix seconds), and the stamped
/// headers revoked by `revoke_by_stamped_headers`.
#[derive(Default)]
pub(super) struct Revoked {
    inner: Mutex<Inner>,
    /// Whether any id was ever revoked: until then a lookup takes no lock (it happens for
    /// every task, twice).
    any: AtomicBool,
    /// Stamp name → the revoked values (Celery's `revoked_stamps`).
    stamps: Mutex<HashMap<String, Vec<String>>>,
    any_stamps: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Id → when it was revoked.
    at: HashMap<String, f64>,
    /// Ids in the order they were revoked (an id revoked again keeps its first place).
    order: VecDeque<String>,
}

impl Inner {
    /// Forgets the oldest ids past [`Revoked::MAX`] and those older than
    /// [`Revoked::EXPIRES`].
    fn trim(&mut self, now: f64) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .at
                .get(oldest)
                .is_none_or(|t| now - t > Revoked::EXPIRES);
            if self.order.len() <= Revoked::MAX && !expired {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.at.remove(&old);
            }
        }
    }
}

fn now() -> f64 {
    crate::events::unix_now()
}

impl Revoked {
    /// Most ids remembered (Celery's `REVOKES_MAX`).
    const MAX: usize = 50_000;
    /// How long an id is remembered, in seconds (Celery's `REVOKE_EXPIRES`, 3 hours).
    const EXPIRES: f64 = 10_800.0;

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `ids`, revoked now.
    pub(super) fn insert(&self, ids: &[String]) {
        let t = now();
        self.insert_at(ids.iter().map(|id| (id.clone(), t)));
    }

    /// Remembers ids revoked at the given times (from a state file).
    fn insert_at(&self, ids: impl IntoIterator<Item = (String, f64)>) {
        let mut g = self.lock();
        self.any.store(true, Ordering::Release);
        let now = now();
        for (id, t) in ids {
            // Merged ids (a state file, another worker) may be older than the newest ones
            // here: an expired one is not taken at all.
            if now - t <= Self::EXPIRES && !g.at.contains_key(&id) {
                g.at.insert(id.clone(), t);
                g.order.push_back(id);
            }
        }
        g.trim(now);
    }

    /// Whether `id` was revoked. `#[inline]`: every task asks, twice.
    #[inline]
    pub(super) fn contains(&self, id: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.lock()
            .at
            .get(id)
            .is_some_and(|t| now() - t <= Self::EXPIRES)
    }

    /// Revokes every task stamped with one of these values (a stamp's values replace
    /// what was revoked for it before, as Celery's `revoked_stamps.update`).
    pub(super) fn insert_stamps(&self, stamps: HashMap<String, Vec<String>>) {
        let mut g = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        g.extend(stamps);
        self.any_stamps.store(!g.is_empty(), Ordering::Release);
    }

    /// Whether a message with these stamps (its `stamps` header) was revoked by stamp.
    #[inline]
    pub(super) fn stamped(&self, stamps: &serde_json::Map<String, Value>) -> bool {
        if stamps.is_empty() || !self.any_stamps.load(Ordering::Acquire) {
            return false;
        }
        let g = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        stamps.iter().any(|(name, value)| {
            let Some(revoked) = g.get(name) else {
                return false;
            };
            let hit = |v: &Value| v.as_str().is_some_and(|v| revoked.iter().any(|r| r == v));
            match value {
                Value::Array(items) => items.iter().any(hit),
                one => hit(one),
            }
        })
    }

    /// The remembered ids, oldest first.
    pub(super) fn list(&self) -> Vec<String> {
        let mut g = self.lock();
        g.trim(now());
        g.order.iter().cloned().collect()
    }

    /// Reads a state file written by [`save`](Self::save); a missing file is an empty
    /// state. Returns how many ids it held (still remembered).
    pub(super) fn load(&self, path: &Path) -> Result<usize, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a celeriac state file: {e}", path.display()))?;
        let entries = v
            .get("revoked")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{} has no `revoked` list", path.display()))?;
        let ids: Vec<(String, f64)> = entries
            .iter()
            .filter_map(|e| Some((e.get(0)?.as_str()?.to_string(), e.get(1)?.as_f64()?)))
            .collect();
        self.insert_at(ids);
        Ok(self.list().len())
    }

    /// Writes the remembered ids to `path` (through a temporary file, so a crash leaves
    /// the old state whole).
    pub(super) fn save(&self, path: &Path) -> Result<(), String> {
        let entries: Vec<Value> = {
            let mut g = self.lock();
            g.trim(now());
            g.order
                .iter()
                .filter_map(|id| g.at.get(id).map(|t| json!([id, t])))
                .collect()
        };
        let body = json!({"revoked": entries}).to_string();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_ids_until_they_expire() {
        let r = Revoked::default();
        assert!(!r.contains("a"));
        r.insert(&["a".into(), "b".into(), "a".into()]);
        assert!(r.contains("a") && r.contains("b"));
        assert_eq!(r.list(), ["a", "b"]);
        r.insert_at([("old".to_string(), now() - Revoked::EXPIRES - 1.0)]);
        assert!(!r.contains("old"));
        assert_eq!(r.list(), ["a", "b"]);
    }

    #[test]
    fn stamps_revoke_the_tasks_that_carry_them() {
        let r = Revoked::default();
        let stamped = |v: Value| v.as_object().cloned().unwrap();
        assert!(!r.stamped(&stamped(json!({"mon": "a"}))));
        r.insert_stamps(HashMap::from([(
            "mon".to_string(),
            vec!["a".to_string(), "b".to_string()],
        )]));
        assert!(r.stamped(&stamped(json!({"mon": "a"}))));
        assert!(r.stamped(&stamped(json!({"mon": ["z", "b"]}))));
        assert!(!r.stamped(&stamped(json!({"mon": "c"}))));
        assert!(!r.stamped(&stamped(json!({"other": "a"}))));
    }

    #[test]
    fn a_state_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("celeriac-statedb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.state");
        let r = Revoked::default();
        assert_eq!(r.load(&path), Ok(0), "a missing file is an empty state");
        r.insert(&["x".into(), "y".into()]);
        r.save(&path).unwrap();
        let again = Revoked::default();
        assert_eq!(again.load(&path), Ok(2));
        assert!(again.contains("x") && again.contains("y"));
        std::fs::write(&path, "not json").unwrap();
        assert!(Revoked::default()
            .load(&path)
            .unwrap_err()
            .contains("not a celeriac state file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
