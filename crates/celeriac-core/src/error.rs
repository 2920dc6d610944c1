//! Errors of brokers and result backends, classified by methods (`is_connection`,
//! `is_retryable`) so reconnect and retry logic asks the error rather than matching text.

use crate::message::Message;

/// What went wrong talking to a broker.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker could not be reached or the connection dropped.
    #[error("cannot reach broker {url}: {reason}")]
    Connection {
        /// The broker URL, credentials masked.
        url: String,
        /// What the connection attempt or the connection reported.
        reason: String,
    },
    /// The broker is reachable but cannot serve for now: a replica during a failover
    /// (`READONLY`, `UNBLOCKED`, `MASTERDOWN`), a server loading its dataset (`LOADING`),
    /// out of memory (`OOM`), busy (`BUSY`, `TRYAGAIN`), unable to persist (`MISCONF`), a
    /// database that is locked, full or failing on disk. Retried with back-off, and the
    /// connection is made again (a failover may have moved the primary).
    #[error("broker {url} is unavailable: {reason}")]
    Unavailable {
        /// The broker URL, credentials masked.
        url: String,
        /// What the broker reported.
        reason: String,
    },
    /// The broker refused or failed an operation.
    #[error("broker operation `{op}` failed: {reason}")]
    Operation {
        /// The operation (`publish`, `ack`, ...).
        op: &'static str,
        /// What the broker reported.
        reason: String,
    },
    /// The broker does not implement this operation.
    #[error("this broker does not support {0}")]
    Unsupported(&'static str),
    /// The broker or consumer was closed.
    #[error("broker connection closed")]
    Closed,
    /// A message at rest could not be read (stored bytes are not an envelope).
    #[error("undecodable message in queue `{queue}`: {reason}")]
    Undecodable {
        /// The queue it was taken from.
        queue: String,
        /// Why it could not be read.
        reason: String,
    },
}

impl BrokerError {
    /// True for connection failures (reconnect and retry).
    pub fn is_connection(&self) -> bool {
        matches!(self, BrokerError::Connection { .. } | BrokerError::Closed)
    }

    /// True when trying again later may succeed: the connection failed, or the broker
    /// is temporarily unavailable ([`BrokerError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        self.is_connection() || matches!(self, BrokerError::Unavailable { .. })
    }
}

/// A publish that failed; the message is handed back so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish to `{routing_key}`: {source}")]
pub struct PublishError {
    /// The message that was not published.
    pub message: Box<Message>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Why.
    #[source]
    pub source: BrokerError,
}

impl PublishError {
    /// Wraps a broker error, keeping the message.
    pub fn new(message: Message, source: BrokerError) -> Self {
        Self {
            routing_key: message.routing_key().to_string(),
            message: Box::new(message),
            source,
        }
    }
}

/// What went wrong talking to a result backend.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not be reached or the connection dropped.
    #[error("cannot reach result backend {url}: {reason}")]
    Connection {
        /// The backend URL, credentials masked.
        url: String,
        /// What was reported.
        reason: String,
    },
    /// The backend is reachable but cannot serve for now (failover, loading, out of
    /// memory, a full or failing disk); see [`BrokerError::Unavailable`].
    #[error("result backend {url} is unavailable: {reason}")]
    Unavailable {
        /// The backend URL, credentials masked.
        url: String,
        /// What the backend reported.
        reason: String,
    },
    /// A stored record is not a task meta record.
    #[error("result record for task {task_id} is corrupt: {reason}")]
    Corrupt {
        /// The task id.
        task_id: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The backend refused or failed an operation.
    #[error("result backend operation `{op}` failed: {reason}")]
    Operation {
        /// The operation.
        op: &'static str,
        /// What the backend reported.
        reason: String,
    },
    /// The backend does not implement this operation.
    #[error("this result backend does not support {0}")]
    Unsupported(&'static str),
}

impl BackendError {
    /// True for connection failures.
    pub fn is_connection(&self) -> bool {
        matches!(self, BackendError::Connection { .. })
    }

    /// True when trying again later may succeed: the connection failed, or the backend
    /// is temporarily unavailable ([`BackendError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        self.is_connection() || matches!(self, BackendError::Unavailable { .. })
    }
}
