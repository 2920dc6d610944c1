//! The engine-independent core of [celeriac](https://docs.rs/celeriac): Celery protocol v2
//! messages, signatures, task states and result records, routing, the [`Broker`] and
//! [`ResultBackend`] traits, and the `memory://` engine.
//!
//! Applications use the `celeriac` facade crate; engines (Redis, SQLite, RabbitMQ) depend
//! on this crate and implement its two traits.
//!
//! | module | what it holds |
//! |---|---|
//! | [`protocol`] | [`TaskMessage`]: encode/decode of task messages (the only place) and the kombu envelope |
//! | [`message`] | [`Message`]: what brokers move (headers, properties, body bytes) |
//! | [`signature`] | [`Signature`]: a task call that has not run |
//! | [`canvas`] | chains, groups, chords, map/starmap/chunks as Celery's signature dicts |
//! | [`state`] | [`State`], [`TaskMeta`], [`ExceptionInfo`]: result records in Celery's format |
//! | [`routing`] | [`Router`]: task name → queue |
//! | [`broker`] / [`backend`] | the two traits every engine implements |
//! | [`beat`] | what an engine keeps for periodic tasks: the leader lease and each entry's last run |
//! | [`backoff`] | [`Backoff`](backoff::Backoff): the capped exponential back-off every retry loop uses |
//! | [`emulation`] | the consumer loop with prefetch, written once for every non-AMQP engine |
//! | [`memory`] | `memory://` |
//! | [`url`] | URL parsing, credential masking, scheme suggestions |
//! | [`time`] | Python `isoformat` out, permissive ISO-8601 in |

pub mod backend;
pub mod backoff;
pub mod beat;
pub mod broker;
pub mod canvas;
pub mod emulation;
pub mod error;
pub mod memory;
pub mod message;
pub mod protocol;
pub mod routing;
pub mod signature;
pub mod state;
pub mod time;
pub mod url;

pub use backend::{ChordEnd, ChordJoin, ChordPart, ResultBackend};
pub use broker::{
    Broker, Capabilities, ConsumeOptions, Consumer, Delivery, Payload, PublishOptions, Subscription,
};
pub use canvas::{Canvas, CanvasError};
pub use error::{BackendError, BrokerError, PublishError};
pub use message::Message;
pub use protocol::{DecodeError, TaskMessage};
pub use routing::{ExchangeType, QueueSpec, Route, Router};
pub use signature::Signature;
pub use state::{ExceptionInfo, ReplyTo, State, TaskMeta};
