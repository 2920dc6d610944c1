//! `memory://`: a broker and result backend inside one process, for tests and for
//! applications whose client and workers share a process.
//!
//! # Features
//!
//! - Named queues, FIFO within a priority; priorities 0–9 with **0 served first** (Celery's
//!   Redis semantics), or 9 first with `?priority_order=high_first` (AMQP semantics).
//! - Native delayed delivery: a message published with `deliver_at` stays invisible until
//!   due, on tokio's clock (so `tokio::time::pause` works in tests).
//! - Ack, reject (drop or requeue at the end), restore (back to the front, redelivered);
//!   a delivery dropped unsettled is restored, as on a closed AMQP channel.
//! - Purge, queue depth, queue list. Waiting consumers and result waiters sleep on
//!   notifications: an idle worker uses no CPU.
//!
//! # URL
//!
//! `memory://` is the process-wide default instance; `memory://NAME` is another, separate
//! instance (tests use a unique name each). The broker and the backend of one URL are
//! separate stores, so `memory://x` can serve as both.
//!
//! # Celery compatibility
//!
//! Nothing leaves the process; messages keep the exact protocol v2 shape, so switching the
//! URL to Redis changes nothing else.

mod backend;
mod broker;

pub use backend::MemoryBackend;
pub use broker::{MemoryBroker, PriorityOrder};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Process-wide instances by name, so every `App` built with the same URL shares them.
fn registry<T>(
    cell: &'static OnceLock<Mutex<HashMap<String, Arc<T>>>>,
    name: &str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let map = cell.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(name.to_string())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}
