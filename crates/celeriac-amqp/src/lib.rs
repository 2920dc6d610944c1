//! RabbitMQ (AMQP 0-9-1) broker for celeriac, byte-compatible with Celery 5.7's py-amqp
//! transport (kombu 5.7), so Python and Rust clients and workers share one RabbitMQ.
//!
//! # Features
//!
//! - **Declarations as Celery makes them**: a task queue `q` is exchange `q` (direct,
//!   durable), queue `q` (durable) and binding `q`; clients declare before publishing.
//!   `max_priority` and `queue_type=quorum` add `x-max-priority` / `x-queue-type`. An
//!   entity that exists with other arguments is used as it is, with a warning naming the
//!   difference.
//! - **Messages as Celery sends them**: the protocol v2 headers as the AMQP header table,
//!   `content_type`, `content_encoding`, `delivery_mode` 2, `priority`, `correlation_id`
//!   (the task id), `reply_to`, `expiration`.
//! - **Publisher confirms** (on by default) and `mandatory` publishes: a publish returns
//!   once RabbitMQ has the message; an unroutable one is refused and handed back.
//! - **Consuming** with `basic.qos` = the worker's prefetch, raised for held ETA tasks
//!   as Celery does; acks on the delivering channel; reject with requeue to the back.
//! - **Recovery**: a lost connection or channel is made again with capped back-off, the
//!   consumer resumes, and RabbitMQ redelivers what was not acknowledged.
//! - **Fanout** exchanges for remote control.
//! - **`rpc://` results** ([`RpcBackend`]): results sent back as messages to the client's
//!   reply queue, as Celery's rpc backend does.
//!
//! Priorities on RabbitMQ are the broker's: higher numbers first, only on queues declared
//! with `x-max-priority` (the `max_priority` option) — the opposite order of Celery's
//! Redis transport.
//!
//! # URL
//!
//! `amqp://[USER[:PASSWORD]@]HOST[:PORT][/VHOST][?OPTIONS]` or `pyamqp://…`; see
//! [`AmqpConfig`] for the defaults and options.

mod backend;
mod broker;
mod config;
mod error;
mod table;

pub use backend::RpcBackend;
pub use broker::AmqpBroker;
pub use config::{AmqpConfig, TlsFiles};
pub use error::Error;
