//! Errors of the Redis engine, and how redis-rs errors map onto the core's kinds: a
//! dropped or refused connection is a connection error, and a server that answers but
//! cannot serve for now (a failover, a restart loading its dataset, out of memory) is
//! `Unavailable`; both are retried, with a new connection.

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

/// Error codes of a server that is there but cannot serve for now; what Sentinel and
/// managed-Redis failovers, restarts and memory pressure answer with:
///
/// - `READONLY`: a write reached a replica (the primary was demoted);
/// - `UNBLOCKED`: a blocked `BRPOP` was cut off because the server turned replica;
/// - `MASTERDOWN`: a replica lost its primary and serves no stale data;
/// - `LOADING`: the server is loading its dataset after a restart;
/// - `BUSY`: a script is running past `busy-reply-threshold`;
/// - `TRYAGAIN`, `CLUSTERDOWN`: cluster resharding or failover;
/// - `MISCONF`: persistence failed and writes are refused until it works again;
/// - `OOM`: `maxmemory` reached;
/// - `NOREPLICAS`: `min-replicas-to-write` is not met.
pub(crate) const UNAVAILABLE: &[&str] = &[
    "READONLY",
    "UNBLOCKED",
    "MASTERDOWN",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MISCONF",
    "OOM",
    "NOREPLICAS",
];

/// The codes of a server that is not (or no longer) the primary: after a Sentinel
/// failover the old primary answers these, so a `sentinel://` engine asks the Sentinels
/// where the primary went (`target`).
pub(crate) const NOT_PRIMARY: &[&str] = &["READONLY", "UNBLOCKED", "MASTERDOWN"];

/// True when the server answered with one of the [`UNAVAILABLE`] codes: for a command,
/// for any command of a pipeline or transaction, or passed on by a Lua script (older
/// servers wrap it: `ERR Error running script ... OOM command not allowed ...`).
pub(crate) fn is_unavailable(e: &redis::RedisError) -> bool {
    has_code(e, UNAVAILABLE)
}

/// True when the server answered with one of `codes`, as [`is_unavailable`] reads them.
pub(crate) fn has_code(e: &redis::RedisError, codes: &[&str]) -> bool {
    match e.clone().into_server_errors() {
        Some(errors) => errors.iter().any(|(_, server)| {
            codes.contains(&server.code())
                || (server.code() == "ERR" && server.details().is_some_and(|d| names(d, codes)))
        }),
        None => false,
    }
}

/// True when `text` (an error a Lua script passed on as data) names one of `codes` as a
/// word.
pub(crate) fn names(text: &str, codes: &[&str]) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| codes.contains(&word))
}

pub(crate) fn broker(url: &str, op: &'static str, e: redis::RedisError) -> BrokerError {
    if is_unavailable(&e) {
        BrokerError::Unavailable {
            url: url.to_string(),
            reason: e.to_string(),
        }
    } else if is_connection(&e) {
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
    if is_unavailable(&e) {
        BackendError::Unavailable {
            url: url.to_string(),
            reason: e.to_string(),
        }
    } else if is_connection(&e) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(text: &str) -> redis::RedisError {
        let mut parser = redis::Parser::new();
        match parser.parse_value(format!("-{text}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn failover_and_pressure_codes_are_unavailable_and_retried() {
        for text in [
            "READONLY You can't write against a read only replica.",
            "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
            "LOADING Redis is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            "BUSY Redis is busy running a script.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "ERR Error running script (call to f_1234): @user_script:12: OOM command not allowed",
        ] {
            let e = broker("redis://x", "consume", server_error(text));
            assert!(
                matches!(e, BrokerError::Unavailable { .. }) && e.is_retryable(),
                "{text}: {e:?}"
            );
            assert!(backend("redis://x", "store", server_error(text)).is_retryable());
        }
        for text in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR unknown command 'FOO'",
        ] {
            let e = broker("redis://x", "consume", server_error(text));
            assert!(matches!(e, BrokerError::Operation { .. }), "{text}: {e:?}");
        }
    }

    #[test]
    fn a_demoted_or_orphaned_primary_is_not_primary() {
        for text in [
            "READONLY You can't write against a read only replica.",
            "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "ERR Error running script (call to f_1234): @user_script:12: READONLY You can't write",
        ] {
            assert!(has_code(&server_error(text), NOT_PRIMARY), "{text}");
        }
        for text in [
            "LOADING Redis is loading the dataset in memory",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "ERR unknown command 'READONLYX'",
        ] {
            assert!(!has_code(&server_error(text), NOT_PRIMARY), "{text}");
        }
        assert!(names(
            "recording 3 message(s): READONLY You can't write",
            NOT_PRIMARY
        ));
        assert!(!names(
            "recording 3 message(s): OOM command not allowed",
            NOT_PRIMARY
        ));
    }
}
