//! Errors of the SQLite engine, and how SQLite's result codes map onto the core's kinds.
//!
//! - **Unavailable** (retried with back-off, see [`BrokerError::Unavailable`]): the file is
//!   there but cannot serve for now, and an operator or time can fix it without losing
//!   anything: a lock held by another process beyond `busy_timeout` (`SQLITE_BUSY`,
//!   `SQLITE_LOCKED`), a full disk or `max_size` (`SQLITE_FULL`), a failing disk or file
//!   system (`SQLITE_IOERR_*`), a file or its `-wal`/`-shm` that cannot be opened or
//!   written any more (`SQLITE_CANTOPEN`, `SQLITE_READONLY`, `SQLITE_PERM`), memory
//!   pressure (`SQLITE_NOMEM`) and WAL lock races (`SQLITE_PROTOCOL`). A worker waits
//!   these out instead of failing its tasks.
//! - **Connection**: this process's database thread has stopped, or the operation was
//!   rolled back only because another one in its batch failed.
//! - **Operation** (not retried): everything else, in particular a corrupt file
//!   (`SQLITE_CORRUPT`, `SQLITE_NOTADB`), which retrying cannot mend, and rusqlite's own
//!   errors (a value of an unexpected type).
//!
//! Opening a file is different: what is wrong with it then is an [`OpenError`], one line
//! naming the path.

use std::path::PathBuf;

use celeriac_core::error::{BackendError, BrokerError};
use celeriac_core::url::UrlError;
use rusqlite::ErrorCode;

/// A database file that cannot be used, and why — one line naming the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot use SQLite database {}: it {}", path.display(), reason.split_whitespace().collect::<Vec<_>>().join(" "))]
pub struct OpenError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// Why an SQLite engine could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The file is not usable.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// An error from the database thread, cloneable so one failed commit can fail every
/// operation of its batch.
#[derive(Debug, Clone)]
pub(crate) struct DbError {
    /// SQLite's result code; `None` for rusqlite's own errors and for [`Self::interrupted`].
    pub(crate) code: Option<ErrorCode>,
    pub(crate) message: String,
    /// Nothing was wrong with the operation itself: the database thread stopped, or the
    /// batch it ran in was rolled back.
    interrupted: bool,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self {
            code: e.sqlite_error_code(),
            message: e.to_string(),
            interrupted: false,
        }
    }
}

/// How the core sees a [`DbError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Connection,
    Unavailable,
    Operation,
}

impl DbError {
    pub(crate) fn closed() -> Self {
        Self {
            code: None,
            message: "the database thread has stopped".into(),
            interrupted: true,
        }
    }

    /// The batch's transaction was rolled back, not by this operation's fault.
    pub(crate) fn rolled_back() -> Self {
        Self {
            code: None,
            message: "the transaction was rolled back".into(),
            interrupted: true,
        }
    }

    fn class(&self) -> Class {
        use ErrorCode as C;
        match self.code {
            None if self.interrupted => Class::Connection,
            None => Class::Operation,
            Some(
                C::DatabaseBusy
                | C::DatabaseLocked
                | C::DiskFull
                | C::SystemIoFailure
                | C::CannotOpen
                | C::ReadOnly
                | C::PermissionDenied
                | C::OutOfMemory
                | C::FileLockingProtocolFailed,
            ) => Class::Unavailable,
            Some(_) => Class::Operation,
        }
    }

    /// What went wrong; the caller adds the file's name where the error has no `url`.
    fn reason(&self) -> String {
        match self.code {
            Some(ErrorCode::DiskFull) => "database or disk is full; nothing was written".into(),
            Some(ErrorCode::ReadOnly) => format!("the file cannot be written ({})", self.message),
            Some(ErrorCode::DatabaseCorrupt) => format!("the file is corrupt: {}", self.message),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                "it stayed locked by another process beyond busy_timeout".into()
            }
            _ => self.message.clone(),
        }
    }

    pub(crate) fn broker(&self, db: &str, op: &'static str) -> BrokerError {
        let (url, reason) = (db.to_string(), self.reason());
        match self.class() {
            Class::Connection => BrokerError::Connection { url, reason },
            Class::Unavailable => BrokerError::Unavailable { url, reason },
            Class::Operation => BrokerError::Operation {
                op,
                reason: format!("{reason} ({db})"),
            },
        }
    }

    pub(crate) fn backend(&self, db: &str, op: &'static str) -> BackendError {
        let (url, reason) = (db.to_string(), self.reason());
        match self.class() {
            Class::Connection => BackendError::Connection { url, reason },
            Class::Unavailable => BackendError::Unavailable { url, reason },
            Class::Operation => BackendError::Operation {
                op,
                reason: format!("{reason} ({db})"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    const DB: &str = "sqlite:///srv/q.sqlite";

    fn sqlite(code: i32) -> DbError {
        DbError::from(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None))
    }

    #[test]
    fn transient_sqlite_errors_are_unavailable_and_retried() {
        for (name, code) in [
            ("BUSY", ffi::SQLITE_BUSY),
            ("BUSY_SNAPSHOT", ffi::SQLITE_BUSY_SNAPSHOT),
            ("LOCKED", ffi::SQLITE_LOCKED),
            ("FULL", ffi::SQLITE_FULL),
            ("IOERR", ffi::SQLITE_IOERR),
            ("IOERR_WRITE", ffi::SQLITE_IOERR_WRITE),
            ("IOERR_FSYNC", ffi::SQLITE_IOERR_FSYNC),
            ("IOERR_SHMMAP", ffi::SQLITE_IOERR_SHMMAP),
            ("CANTOPEN", ffi::SQLITE_CANTOPEN),
            ("READONLY", ffi::SQLITE_READONLY),
            ("READONLY_DBMOVED", ffi::SQLITE_READONLY_DBMOVED),
            ("PERM", ffi::SQLITE_PERM),
            ("NOMEM", ffi::SQLITE_NOMEM),
            ("PROTOCOL", ffi::SQLITE_PROTOCOL),
        ] {
            let e = sqlite(code).broker(DB, "publish");
            assert!(
                matches!(&e, BrokerError::Unavailable { url, .. } if url == DB) && e.is_retryable(),
                "{name}: {e:?}"
            );
            let e = sqlite(code).backend(DB, "store");
            assert!(
                matches!(&e, BackendError::Unavailable { url, .. } if url == DB)
                    && e.is_retryable(),
                "{name}: {e:?}"
            );
        }
        assert_eq!(
            sqlite(ffi::SQLITE_FULL).broker(DB, "publish").to_string(),
            "broker sqlite:///srv/q.sqlite is unavailable: database or disk is full; nothing was written"
        );
    }

    #[test]
    fn corruption_and_misuse_are_operation_errors_not_retried() {
        for (name, e) in [
            ("CORRUPT", sqlite(ffi::SQLITE_CORRUPT)),
            ("CORRUPT_INDEX", sqlite(ffi::SQLITE_CORRUPT_INDEX)),
            ("NOTADB", sqlite(ffi::SQLITE_NOTADB)),
            ("CONSTRAINT", sqlite(ffi::SQLITE_CONSTRAINT_UNIQUE)),
            ("TOOBIG", sqlite(ffi::SQLITE_TOOBIG)),
            (
                "a value of the wrong type",
                DbError::from(rusqlite::Error::InvalidColumnType(
                    0,
                    "n".into(),
                    rusqlite::types::Type::Text,
                )),
            ),
        ] {
            let b = e.broker(DB, "consume");
            assert!(
                matches!(&b, BrokerError::Operation { op: "consume", reason } if reason.contains(DB))
                    && !b.is_retryable(),
                "{name}: {b:?}"
            );
            let r = e.backend(DB, "get");
            assert!(
                matches!(r, BackendError::Operation { op: "get", .. }) && !r.is_retryable(),
                "{name}: {r:?}"
            );
        }
    }

    #[test]
    fn a_stopped_database_thread_is_a_connection_error() {
        for e in [DbError::closed(), DbError::rolled_back()] {
            assert!(matches!(
                e.broker(DB, "ack"),
                BrokerError::Connection { .. }
            ));
            assert!(e.backend(DB, "get").is_connection());
        }
    }
}
