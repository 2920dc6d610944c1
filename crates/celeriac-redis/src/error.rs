//! Errors of the Redis engine, and how redis-rs errors map onto the core's kinds (a
//! dropped or refused connection is a connection error: retried, reconnected).

use celeriac_core::error::{BackendError, BrokerError};
use celeriac_core::url::UrlError;

/// Why a Redis engine could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is malformed or asks for something not compiled in.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The result backend could not be reached.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

pub(crate) fn is_connection(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

pub(crate) fn broker(url: &str, op: &'static str, e: redis::RedisError) -> BrokerError {
    if is_connection(&e) {
        BrokerError::Connection {
            url: url.to_string(),
            reason: e.to_string(),
        }
    } else {
        BrokerError::Operation {
            op,
            reason: e.to_string(),
        }
    }
}

pub(crate) fn backend(url: &str, op: &'static str, e: redis::RedisError) -> BackendError {
    if is_connection(&e) {
        BackendError::Connection {
            url: url.to_string(),
            reason: e.to_string(),
        }
    } else {
        BackendError::Operation {
            op,
            reason: e.to_string(),
        }
    }
}
