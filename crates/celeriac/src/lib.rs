//! celeriac: a distributed task queue for Rust that speaks Celery's wire protocol.
//!
//! Define tasks as `async fn` or plain `fn` with serde-typed arguments, send them from a
//! client, run them in a worker, and read their results — in one process (`memory://`),
//! and with the same code across machines on the brokers Celery uses, interoperating with
//! Python Celery clients and workers.
//!
//! ```
//! use std::time::Duration;
//! use celeriac::{App, TaskContext, TaskError, TaskResult};
//!
//! #[celeriac::task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> TaskResult<i64> {
//!     Ok(x + y)
//! }
//!
//! #[celeriac::task(name = "tasks.div")]
//! fn div(ctx: &TaskContext, x: f64, y: f64) -> TaskResult<f64> {   // plain fn: runs on a thread
//!     if y == 0.0 {
//!         return Err(TaskError::value_error(format!("{} cannot divide by zero", ctx.id())));
//!     }
//!     Ok(x / y)
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), celeriac::Error> {
//! let app = App::builder()
//!     .broker_url("memory://lib-doc")
//!     .task(add)
//!     .task(div)
//!     .build()
//!     .await?;
//!
//! let worker = app.worker().concurrency(4).build();
//! let stop = worker.shutdown_handle();
//! let running = tokio::spawn(worker.run());
//!
//! let sum = add::new(2, 3).apply_async(&app).await?;
//! assert_eq!(sum.get::<i64>(Duration::from_secs(5)).await?, 5);
//!
//! let err = div::new(1.0, 0.0).apply_async(&app).await?.get::<f64>(Duration::from_secs(5)).await.unwrap_err();
//! assert_eq!(err.exception().unwrap().exc_type, "ValueError");
//!
//! stop.warm();
//! running.await.unwrap()?;
//! # Ok(()) }
//! ```
//!
//! # The pieces
//!
//! | item | what it is |
//! |---|---|
//! | [`macro@task`] | turns a function into a task: a unit struct with `new(args..) -> Signature` |
//! | [`App`] | registry, broker, result backend, routes, config; sends tasks |
//! | [`Signature`] | a call not yet run, with options (`countdown`, `eta`, `expires`, `queue`, `priority`, ...) |
//! | [`AsyncResult`] | `get`, `wait`, `ready`, `state`, `successful`, `failed`, `forget` |
//! | [`chain!`], [`group`], [`chord`] | workflows, as Celery's canvas; [`GroupResult`] |
//! | [`Worker`] | consumes queues and runs tasks; warm and cold shutdown |
//! | [`TaskContext`] | the running request: id, retries, ETA, parent/root ids, delivery info; `retry` |
//! | [`TaskError`] | failure (with Python exception names), retry, reject, ignore |
//! | [`cli::run`] | a whole command line (`worker`, `call`, `result`, `purge`, `inspect`) for your binary |
//!
//! # Engines
//!
//! | URL | broker | results | for |
//! |---|---|---|---|
//! | `sqlite://FILE` | yes | yes | the default: one machine, several processes, durable, nothing to install (feature `sqlite`) |
//! | `memory://[NAME]` | yes | yes | one process, tests |
//! | `redis://`, `rediss://`, `unix://` | yes | yes | many machines, shared with Python Celery (feature `redis`) |
//!
//! The broker URL comes from [`AppBuilder::broker_url`], else `CELERIAC_BROKER_URL`, else
//! `CELERY_BROKER_URL`, else `sqlite://celeriac.sqlite`; the backend likewise from
//! `CELERIAC_RESULT_BACKEND` / `CELERY_RESULT_BACKEND`, defaulting to the broker's engine.
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `cli` | yes | [`cli::run`] (clap, tracing-subscriber, indicatif) |
//! | `sqlite` | yes | the embedded SQLite broker and result store ([`celeriac_sqlite`](https://docs.rs/celeriac-sqlite)) |
//! | `redis` | no | the Redis broker and result backend ([`celeriac_redis`](https://docs.rs/celeriac-redis)) |
//! | `redis-tls` | no | `rediss://` (system OpenSSL) |

pub mod app;
pub mod beat;
mod builtins;
pub mod canvas;
#[cfg(feature = "cli")]
pub mod cli;
pub mod context;
pub mod control;
pub mod engines;
pub mod error;
pub mod events;
mod execute;
mod map;
pub(crate) mod producer;
pub mod result;
pub mod task;
pub mod worker;

pub use app::{App, AppBuilder, Config};
pub use canvas::{chain, chord, group, Group};
pub use celeriac_core::{
    self as core, ExceptionInfo, ExchangeType, QueueSpec, Route, Signature, State, TaskMeta,
};
pub use celeriac_macros::task;
pub use context::{RequestDeliveryInfo, TaskContext};
pub use error::{Error, Failure, RetryRequest, TaskError, TaskResult};
pub use execute::Pool;
pub use result::{AsyncResult, GroupResult};
pub use task::{Task, TaskConfig, TaskKind, TypedTask};
pub use worker::{ShutdownHandle, Worker, WorkerBuilder, WorkerReport};

pub mod guide {
    //! Long-form documentation: the design notes from `docs/`, with their examples
    //! compiled as doc tests.

    #[doc = include_str!("../../../docs/architecture.md")]
    pub mod architecture {}
    #[doc = include_str!("../../../docs/worker.md")]
    pub mod worker {}
    #[doc = include_str!("../../../docs/pools.md")]
    pub mod pools {}
    #[doc = include_str!("../../../docs/canvas.md")]
    pub mod canvas {}
    #[doc = include_str!("../../../docs/states.md")]
    pub mod states {}
    #[doc = include_str!("../../../docs/retries.md")]
    pub mod retries {}
    #[doc = include_str!("../../../docs/engines.md")]
    pub mod engines {}
    #[doc = include_str!("../../../docs/cli.md")]
    pub mod cli {}
    #[doc = include_str!("../../../docs/monitoring.md")]
    pub mod monitoring {}
    #[doc = include_str!("../../../docs/beat.md")]
    pub mod beat {}
}

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// Support code for `#[celeriac::task]`; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::task::{result_value, Arguments, Invocation, TaskOutput, TaskReturn};
    pub use futures::future::FutureExt;
    pub use serde_json::{Map, Value};

    use serde::Serialize;

    /// Builds the signature for a typed call, remembering an encoding error for `apply_async`.
    pub fn signature(task: &str, args: Vec<Result<Value, serde_json::Error>>) -> crate::Signature {
        let mut sig = crate::Signature::new(task);
        for (i, a) in args.into_iter().enumerate() {
            match a {
                Ok(v) => sig.args.push(v),
                Err(e) => {
                    sig.encode_error = Some(format!("argument {i} cannot be encoded as JSON: {e}"));
                    return sig;
                }
            }
        }
        sig
    }

    /// Encodes one argument.
    pub fn arg<T: Serialize + ?Sized>(value: &T) -> Result<Value, serde_json::Error> {
        serde_json::to_value(value)
    }

    /// An argument tuple as the JSON array a starmap item is.
    pub fn tuple(args: Vec<Result<Value, serde_json::Error>>) -> Result<Value, serde_json::Error> {
        args.into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    }

    /// `celery.map` (`star = false`) or `celery.starmap` over encoded items.
    pub fn map_signature(
        task: &str,
        star: bool,
        items: Vec<Result<Value, serde_json::Error>>,
    ) -> crate::Signature {
        let (items, error) = split(items);
        let inner = crate::Signature::new(task);
        let mut sig = if star {
            crate::Signature::xstarmap(inner, items)
        } else {
            crate::Signature::xmap(inner, items)
        };
        sig.encode_error = error;
        sig
    }

    /// `celery.chunks` over encoded argument tuples, as a group.
    pub fn chunks_group(
        task: &str,
        items: Vec<Result<Value, serde_json::Error>>,
        size: usize,
    ) -> crate::Group {
        let (items, error) = split(items);
        let mut sig = crate::Signature::chunks(crate::Signature::new(task), items, size);
        sig.encode_error = error;
        crate::Group::from_signature(sig)
    }

    fn split(items: Vec<Result<Value, serde_json::Error>>) -> (Vec<Value>, Option<String>) {
        let mut error = None;
        let values = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Ok(v) => Some(v),
                Err(e) => {
                    error.get_or_insert_with(|| format!("item {i} cannot be encoded as JSON: {e}"));
                    None
                }
            })
            .collect();
        (values, error)
    }

    /// `my_crate::tasks` + `add` → `my_crate.tasks.add`, computed once per task.
    pub fn default_name(
        cell: &'static std::sync::OnceLock<String>,
        module: &str,
        func: &str,
    ) -> &'static str {
        cell.get_or_init(|| format!("{}.{func}", module.replace("::", ".")))
    }
}
