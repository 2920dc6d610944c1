//! The embedded SQLite broker and result store for celeriac: durable background jobs for
//! several processes on one machine, with nothing to install. The default engine.
//!
//! # Features
//!
//! - **Queues**: named, FIFO within a priority, priorities 0–9 (**0 served first**, as
//!   Celery on Redis); **native delayed delivery** (`countdown`/`eta` rows stay invisible
//!   until due); ack, reject (drop or requeue at the back), restore (front, redelivered);
//!   purge; queue depths; direct-exchange bindings.
//! - **Several processes, one file**: WAL mode, short `IMMEDIATE` write transactions, a
//!   busy timeout; messages are claimed in one `UPDATE … RETURNING`, so no message is ever
//!   delivered to two consumers at once.
//! - **Dead workers**: consuming processes beat every `heartbeat`; the messages a silent
//!   consumer held (after `dead_after`, default 10 s) go back to their queues and run
//!   elsewhere. A live worker's messages are never taken from it. A worker that was only
//!   stalled that long notices at its next beat, and its late ack or restore of a message
//!   that now belongs to another consumer changes nothing (a `claim lost` warning).
//! - **Throughput**: one database thread per process groups every waiting operation
//!   (publishes, claims, acks, result writes) into one transaction.
//! - **Latency without spinning**: idle consumers and result waiters sleep until this
//!   process commits or the file watch sees another process's commit (inotify on Linux),
//!   re-checking at most every `poll_interval`.
//! - **Results**: Celery's task-meta records, SUCCESS never overwritten, expiry.
//! - **Safety**: a file that is not a celeriac database, not SQLite, corrupt, read-only, or
//!   from a newer schema is refused with one line naming the path; the schema is versioned
//!   and migrated on open; a full disk (or `max_size`) fails the publish with a clear
//!   error and writes nothing.
//! - **Privacy**: a new database file and its `-wal`, `-shm` and `-wake` files are created
//!   0600 whatever the umask; an existing file keeps its mode, and its side files take it.
//! - **Errors**: what time or an operator can mend (a lock held beyond `busy_timeout`, a
//!   full disk, I/O errors, a file that became read-only or cannot be opened) is
//!   `Unavailable`, which workers and producers retry with back-off; a corrupt file is not.
//!
//! # URL
//!
//! `sqlite://FILE` (relative to the working directory) or `sqlite:///ABSOLUTE/FILE`.
//!
//! # Options (query string)
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `busy_timeout` | 5000 | ms a write waits for another process's lock |
//! | `heartbeat` | 2 | s between a consumer's liveness beats |
//! | `dead_after` | 10 | s of silence after which a consumer's messages are restored |
//! | `poll_interval` | 2 | s an idle consumer or waiter sleeps at most between checks |
//! | `synchronous` | `normal` | `full` to survive power loss, not only crashes |
//! | `max_size` | none | bytes the file may grow to |
//!
//! # Celery compatibility
//!
//! Messages are stored as kombu's JSON envelope and results as Celery's records, so
//! they read exactly like their Redis counterparts; Python Celery itself has no SQLite
//! broker.

mod backend;
mod broker;
mod config;
mod db;
mod error;
mod schema;
mod wal;

pub use backend::SqliteBackend;
pub use broker::SqliteBroker;
pub use config::{SqliteConfig, DEFAULT_FILE};
pub use error::{Error, OpenError};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
