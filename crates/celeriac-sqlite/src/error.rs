//! Errors of the SQLite engine, and how SQLite's result codes map onto the core's kinds: a
//! lock held by another process longer than `busy_timeout` is retryable (like a dropped
//! connection); a full disk, a read-only or corrupt file are reported as they are.

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
    pub(crate) code: Option<ErrorCode>,
    pub(crate) message: String,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self {
            code: e.sqlite_error_code(),
            message: e.to_string(),
        }
    }
}

impl DbError {
    pub(crate) fn closed() -> Self {
        Self {
            code: None,
            message: "the database thread has stopped".into(),
        }
    }

    fn busy(&self) -> bool {
        matches!(
            self.code,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    }

    /// What went wrong, in words that name the file.
    fn describe(&self, db: &str) -> String {
        match self.code {
            Some(ErrorCode::DiskFull) => {
                format!("database or disk is full ({db}); nothing was written")
            }
            Some(ErrorCode::ReadOnly) => format!("database {db} is read-only"),
            Some(ErrorCode::DatabaseCorrupt) => {
                format!("database {db} is corrupt: {}", self.message)
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                format!("database {db} stayed locked by another process beyond busy_timeout")
            }
            _ => format!("{} ({db})", self.message),
        }
    }

    pub(crate) fn broker(&self, db: &str, op: &'static str) -> BrokerError {
        if self.busy() || self.code.is_none() {
            BrokerError::Connection {
                url: db.to_string(),
                reason: self.describe(db),
            }
        } else {
            BrokerError::Operation {
                op,
                reason: self.describe(db),
            }
        }
    }

    pub(crate) fn backend(&self, db: &str, op: &'static str) -> BackendError {
        if self.busy() || self.code.is_none() {
            BackendError::Connection {
                url: db.to_string(),
                reason: self.describe(db),
            }
        } else {
            BackendError::Operation {
                op,
                reason: self.describe(db),
            }
        }
    }
}
