//! Redis broker and result backend for celeriac, byte-compatible with Celery 5.7 and
//! kombu 5.7, so Python and Rust clients and workers share one Redis.
//!
//! # Features
//!
//! - **Queues**: kombu's lists (`LPUSH` to publish, popped from the other end: FIFO), its
//!   JSON envelope with a base64 body and a UUID `delivery_tag`, and its priority buckets:
//!   priorities 0–2, 3–5, 6–8 and 9 go to `<q>`, `<q>\x06\x163`, `<q>\x06\x166`,
//!   `<q>\x06\x169`, **lower served first**, every bucket of every queue before the next.
//! - **Bindings**: the `_kombu.binding.<queue>` / `_kombu.binding_permanent.<queue>`
//!   members Python producers look up; messages to a named direct exchange are routed
//!   through them.
//! - **Acknowledgement as kombu does it**: every delivery is recorded in the `unacked` hash
//!   and `unacked_index` sorted set (same keys, value and score format); ack removes it;
//!   `reject(requeue)` and restores push it back with `redelivered` set and the same tag.
//!   Any consuming process (celeriac or Python) sweeps entries older than the visibility
//!   timeout back to their queues under `unacked_mutex`, so a message taken by a worker
//!   that died runs again. celeriac keeps the scores of messages it holds fresh, so a held
//!   ETA task or a long late-ack task is not restored (and run twice) while its holder lives.
//! - **Consuming**: up to the free prefetch in one atomic Lua step (pop + record), else a
//!   blocking `BRPOP` for `polling_interval`. No connection per task in flight.
//! - **Delay**: none native — ETA messages are held by the worker, as Celery does.
//! - **Results**: `celery-task-meta-<id>` records in Celery's JSON, with `SETEX` expiry and
//!   a `PUBLISH` on the key's channel; SUCCESS is never overwritten; waiting is pub/sub,
//!   one connection shared by every waiter.
//! - **Outages**: connections reconnect with capped back-off; consumer errors are reported
//!   once per outage; nothing acknowledged is lost, nothing unacknowledged is forgotten.
//! - **Sentinel**: with `sentinel://`, the primary is the one the Sentinels name; after an
//!   error that says it moved (`READONLY`, `UNBLOCKED`, `MASTERDOWN`, a refused
//!   connection) they are asked again and every connection follows it.
//!
//! # URL
//!
//! `redis://[USER:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]`, `rediss://…` (TLS, feature
//! `tls`), `unix:///path.sock[?db=N]`, `redis+socket:///path.sock[?virtual_host=N]`, and
//! kombu's Sentinel list
//! `sentinel://[USER:PASSWORD@]HOST[:PORT][/DB][;sentinel://HOST2[:PORT2]…]?master_name=NAME`
//! (Sentinel port 26379 by default; the first URL's credentials and DB are the
//! primary's, as kombu reads them; options on any of the URLs).
//!
//! # Options (query string)
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `visibility_timeout` | 3600 | seconds before an unacknowledged message is restored |
//! | `global_keyprefix` | none | prefix of every key and channel (results: `_` added unless it ends in `:_-.`) |
//! | `polling_interval` | 1 | seconds one `BRPOP` blocks |
//! | `unacked_restore_interval` | 60 | seconds between visibility sweeps |
//! | `ssl_cert_reqs` | required | `required`, `optional` or `none` (`rediss://`) |
//! | `ssl_ca_certs` | system roots | PEM file of the CA that signed the server's certificate |
//! | `ssl_certfile`, `ssl_keyfile` | none | client certificate and key (PEM) for mutual TLS |
//! | `master_name` | required for `sentinel://` | the name the Sentinels monitor the primary under |
//! | `sentinel_password`, `sentinel_username` | none | the Sentinels' own credentials (kombu's `sentinel_kwargs`) |
//!
//! # Celery compatibility
//!
//! Verified against Celery 5.7.0 / kombu 5.7.0 by the interop tests: Python clients call
//! celeriac workers, celeriac clients call Python workers, mixed fleets share a queue.
//! Differences, all on the safe side: celeriac records a message in `unacked` atomically
//! with popping it, writes results in one Lua step, retries a result write while Redis is
//! down instead of storing a `ConnectionError`, and refreshes held messages' scores.

mod backend;
mod broker;
mod coalesce;
mod config;
mod error;
pub mod keys;
mod target;

/// Locks a mutex of this crate's. Its sections never unwind half-way, so a poisoned lock
/// still holds consistent data and is taken as it is.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub use backend::RedisBackend;
pub use broker::{bucket_depths, RedisBroker};
pub use config::RedisConfig;
pub use error::Error;
