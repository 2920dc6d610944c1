//! Writes that arrive while one is on its way go out together in the next one: acks
//! (`ZREM` + `HDEL` for the lot) and result records (one script call for the lot).
//!
//! Callers queue an item and, if no writer runs, start one; the writer takes everything
//! queued, writes it, and goes on until nothing waits. So an idle process writes each item
//! at once (no timer, no added latency), and a busy one writes in batches as large as
//! what piled up during the previous write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Items waiting to be written, and whether a writer is running.
pub(crate) struct Coalesce<T> {
    waiting: Mutex<Vec<T>>,
    writing: AtomicBool,
}

impl<T> Default for Coalesce<T> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            writing: AtomicBool::new(false),
        }
    }
}

impl<T> Coalesce<T> {
    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        crate::lock(&self.waiting)
    }

    /// Queues `item`; true if no writer runs and the caller must start one (then loop on
    /// [`next_batch`](Self::next_batch), or call [`not_started`](Self::not_started)).
    pub(crate) fn push(&self, item: T) -> bool {
        self.lock().push(item);
        !self.writing.swap(true, Ordering::SeqCst)
    }

    /// The writer could not be started after all.
    pub(crate) fn not_started(&self) {
        self.writing.store(false, Ordering::SeqCst);
    }

    /// For the writer: everything queued, or `None` when nothing waits and it must stop.
    pub(crate) fn next_batch(&self) -> Option<Vec<T>> {
        loop {
            let batch = std::mem::take(&mut *self.lock());
            if !batch.is_empty() {
                return Some(batch);
            }
            self.writing.store(false, Ordering::SeqCst);
            // An item queued just before the flag dropped: take it on, unless another
            // writer already has.
            if self.lock().is_empty() || self.writing.swap(true, Ordering::SeqCst) {
                return None;
            }
        }
    }
}
