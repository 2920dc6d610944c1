//! Errors of the AMQP engine, and how lapin's errors map onto the core's kinds: a dropped,
//! refused or closed connection (or channel), a missed heartbeat and a broker closing the
//! connection on purpose (`CONNECTION_FORCED`, a restart) are connection errors, retried
//! with a new connection; resource alarms and a queue that cannot take more are
//! `Unavailable`; what RabbitMQ refuses (`NOT_FOUND`, `PRECONDITION_FAILED`,
//! `ACCESS_REFUSED`) is an operation error, with RabbitMQ's own words, which name the
//! exchange, queue or argument.

use celeriac_core::error::BrokerError;
use celeriac_core::url::UrlError;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind;

/// Why an AMQP engine could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is malformed or asks for something not supported.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What kind of failure a lapin error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The connection or channel is gone: make a new one and try again.
    Connection,
    /// The broker is there but cannot take it for now.
    Unavailable,
    /// The broker refused this operation; trying again will not help.
    Refused,
}

pub(crate) fn class(e: &lapin::Error) -> Class {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(
                AMQPSoftError::NOTFOUND
                | AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::CONTENTTOOLARGE
                | AMQPSoftError::NOROUTE,
            ) => Class::Refused,
            AMQPErrorKind::Soft(_) => Class::Unavailable,
            AMQPErrorKind::Hard(AMQPHardError::RESOURCEERROR) => Class::Unavailable,
            AMQPErrorKind::Hard(
                AMQPHardError::NOTALLOWED
                | AMQPHardError::INVALIDPATH
                | AMQPHardError::NOTIMPLEMENTED,
            ) => Class::Refused,
            AMQPErrorKind::Hard(_) => Class::Connection,
        },
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => Class::Refused,
        _ => Class::Connection,
    }
}

/// The lapin error `e` met by operation `op`, as a broker error for `url` (masked).
pub(crate) fn broker(url: &str, op: &'static str, e: &lapin::Error) -> BrokerError {
    let reason = describe(e);
    match class(e) {
        Class::Connection => BrokerError::Connection {
            url: url.to_string(),
            reason,
        },
        Class::Unavailable => BrokerError::Unavailable {
            url: url.to_string(),
            reason,
        },
        Class::Refused => BrokerError::Operation { op, reason },
    }
}

/// RabbitMQ's reply text where there is one (`NOT_FOUND - no exchange 'x' in vhost '/'`),
/// else lapin's description.
pub(crate) fn describe(e: &lapin::Error) -> String {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        ErrorKind::IOError(io) => io.to_string(),
        _ => e.to_string(),
    }
}
