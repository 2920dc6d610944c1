//! Celery task message protocol v2: the one place task messages are encoded and decoded.
//!
//! A [`TaskMessage`] is the typed view of a task: the 19 protocol v2 headers, the body
//! `[args, kwargs, embed]`, and the properties. [`TaskMessage::encode`] turns it into the
//! transport [`Message`] every broker moves, in the exact shape Python Celery 5.7 sends
//! (header order included); [`TaskMessage::decode`] reads any message a Celery client may
//! send (including protocol v1 and messages with only `task` and `id`) and returns a
//! [`DecodeError`] — never a panic — for everything else: other content types (pickle is
//! refused, never executed), bodies that are not JSON or not `[args, kwargs, embed]`,
//! missing `task`/`id`, headers of the wrong type, unparseable `eta`/`expires`.
//!
//! Headers are decoded by hand rather than with a derived `Deserialize`: each wrong field
//! gets an error that names it, unknown headers are kept in order, and loosely typed
//! values Python tolerates (`retries: 1.0`) are accepted.
//!
//! | file | what it holds |
//! |---|---|
//! | `types` | [`TaskMessage`], [`TaskHeaders`], [`Embed`] |
//! | `error` | [`DecodeError`] / [`DecodeErrorKind`], [`SignatureError`] |
//! | `build` | signature → message: [`TaskMessage::from_signature`], [`SendContext`] |
//! | `encode` | message → wire: [`TaskMessage::encode`], [`TaskMessage::encode_body`] |
//! | `decode` | wire → message: [`TaskMessage::decode`], the header decoding, protocol v1 |
//! | [`envelope`] | kombu's JSON envelope for key-value engines |
//! | [`json`] | Python-compatible JSON reading and `repr()` text |
//!
//! [`Message`]: crate::message::Message

mod build;
mod decode;
mod encode;
pub mod envelope;
mod error;
pub mod json;
mod types;

pub use build::SendContext;
pub use decode::{CONTENT_TYPE_PICKLE, KNOWN_HEADERS};
pub use error::{DecodeError, DecodeErrorKind, SignatureError};
pub use types::{Embed, TaskHeaders, TaskMessage};

#[cfg(test)]
mod tests;
