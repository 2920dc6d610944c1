//! The ids of revoked tasks this worker remembers, so that a message whose task was
//! revoked is settled as REVOKED instead of run (`revoke`, `inspect revoked`).

/// Ids of revoked tasks (Celery keeps them in memory, bounded, as here).
#[derive(Default)]
pub(super) struct Revoked {
    inner: std::sync::Mutex<(
        std::collections::HashSet<String>,
        std::collections::VecDeque<String>,
    )>,
    /// Whether any id was ever revoked: until then a lookup takes no lock (it happens for
    /// every task, twice).
    any: std::sync::atomic::AtomicBool,
}

impl Revoked {
    /// Most ids remembered (Celery's `REVOKES_MAX`).
    const MAX: usize = 50_000;

    /// Remembers `ids`, forgetting the oldest past [`MAX`](Self::MAX).
    pub(super) fn insert(&self, ids: &[String]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.any.store(true, std::sync::atomic::Ordering::Release);
        for id in ids {
            if g.0.insert(id.clone()) {
                g.1.push_back(id.clone());
            }
        }
        while g.1.len() > Self::MAX {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
    }

    /// Whether `id` was revoked. `#[inline]`: every task asks, twice, and this lived beside
    /// the job code that asks.
    #[inline]
    pub(super) fn contains(&self, id: &str) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .contains(id)
    }

    /// The remembered ids, oldest first.
    pub(super) fn list(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .iter()
            .cloned()
            .collect()
    }
}
