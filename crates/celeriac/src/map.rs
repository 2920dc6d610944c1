//! Pool-style calls over the workers — [`App::map`], [`App::starmap`] and
//! [`App::imap_unordered`] — the `Pool.map` of Python's `multiprocessing`, with the pool
//! being every worker on the broker.
//!
//! The calls are sent as one group (a batch publish); with a `chunksize` above 1, each
//! message is a `celery.starmap` over that many calls, so a million tiny calls need not be
//! a million messages. Results come back in call order (`map`, `starmap`) or as their
//! messages finish (`imap_unordered`).

use std::time::Duration;

use futures::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

use celeriac_core::Signature;

use crate::app::App;
use crate::canvas::group;
use crate::error::Error;
use crate::result::into_result;
use crate::result::GroupResult;
use crate::task::TypedTask;

/// How long the pool calls wait: as `Pool.map` does, until the results are there.
const FOREVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// A sent batch of calls.
struct Batch {
    group: GroupResult,
    /// Whether each message carries a list of calls (a `celery.starmap`).
    chunked: bool,
}

impl App {
    /// Calls the one-argument `task` once per item on the workers and returns the results
    /// in item order, waiting as long as that takes — Python's `Pool.map(func, items,
    /// chunksize)`. The first failed call (in item order) is the error.
    ///
    /// `chunksize` calls travel in each message (1 sends a message per call).
    ///
    /// ```no_run
    /// # #[celeriac::task] async fn sq(x: i64) -> celeriac::TaskResult<i64> { Ok(x * x) }
    /// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
    /// let squares = app.map(sq, 1..=1000, 50).await?;   // 20 messages
    /// assert_eq!(squares[9], 100);
    /// # Ok(()) }
    /// ```
    pub async fn map<T, A>(
        &self,
        task: T,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, Error>
    where
        T: TypedTask<Args = (A,)>,
        T::Output: DeserializeOwned,
    {
        let batch = self
            .send_calls(task, items.into_iter().map(|a| (a,)), chunksize)
            .await?;
        batch.in_order().await
    }

    /// [`map`](Self::map) for tasks of several arguments: each item is an argument tuple —
    /// Python's `Pool.starmap`.
    ///
    /// ```no_run
    /// # #[celeriac::task] async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
    /// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
    /// let sums = app.starmap(add, (0..100).map(|i| (i, i)), 10).await?;
    /// assert_eq!(sums[3], 6);
    /// # Ok(()) }
    /// ```
    pub async fn starmap<T>(
        &self,
        task: T,
        items: impl IntoIterator<Item = T::Args>,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, Error>
    where
        T: TypedTask,
        T::Output: DeserializeOwned,
    {
        self.send_calls(task, items, chunksize)
            .await?
            .in_order()
            .await
    }

    /// Sends the calls (argument tuples, as [`starmap`](Self::starmap) takes them) and
    /// returns their results as they finish — Python's `Pool.imap_unordered`. A message
    /// of `chunksize` calls yields its results together, in their order. A failed call is
    /// an `Err` item; the stream goes on with the others.
    ///
    /// ```no_run
    /// # #[celeriac::task] async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
    /// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
    /// use futures::StreamExt;
    /// let mut done = app.imap_unordered(add, (0..100).map(|i| (i, 1)), 1).await?;
    /// while let Some(sum) = done.next().await {
    ///     println!("{}", sum?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn imap_unordered<T>(
        &self,
        task: T,
        items: impl IntoIterator<Item = T::Args>,
        chunksize: usize,
    ) -> Result<impl Stream<Item = Result<T::Output, Error>> + Send + 'static, Error>
    where
        T: TypedTask,
        T::Output: DeserializeOwned,
    {
        let Batch { group, chunked } = self.send_calls(task, items, chunksize).await?;
        Ok(group.iter_completed(FOREVER).flat_map(move |done| {
            let values: Vec<Result<T::Output, Error>> = match done.and_then(|(_, meta)| {
                let id = meta.task_id.clone();
                into_result::<Value>(meta).map(|v| (id, v))
            }) {
                Ok((id, v)) => match unpack(&id, v, chunked) {
                    Ok(values) => values.into_iter().map(|v| decode(&id, v)).collect(),
                    Err(e) => vec![Err(e)],
                },
                Err(e) => vec![Err(e)],
            };
            stream::iter(values)
        }))
    }

    /// Encodes the calls and sends them as one group, `chunksize` calls per message.
    async fn send_calls<T: TypedTask>(
        &self,
        task: T,
        items: impl IntoIterator<Item = T::Args>,
        chunksize: usize,
    ) -> Result<Batch, Error> {
        let name = task.name();
        let calls = items
            .into_iter()
            .map(|args| match serde_json::to_value(&args) {
                Ok(Value::Array(a)) => Ok(Value::Array(a)),
                // `()` (a task without arguments) encodes as null.
                Ok(Value::Null) => Ok(Value::Array(Vec::new())),
                Ok(other) => Ok(Value::Array(vec![other])),
                Err(e) => Err(Error::InvalidArguments {
                    task: name.to_string(),
                    reason: format!("an argument cannot be encoded as JSON: {e}"),
                }),
            })
            .collect::<Result<Vec<Value>, Error>>()?;
        let chunked = chunksize > 1;
        let messages: Vec<Signature> = if chunked {
            calls
                .chunks(chunksize)
                .map(|c| Signature::xstarmap(Signature::new(name), c.iter().cloned()))
                .collect()
        } else {
            calls
                .into_iter()
                .map(|args| match args {
                    Value::Array(a) => Signature::new(name).args(a),
                    other => Signature::new(name).args(vec![other]),
                })
                .collect()
        };
        let group = if messages.is_empty() {
            GroupResult::eager(uuid::Uuid::new_v4().to_string(), Vec::new())
        } else {
            group(messages).apply_async(self).await?
        };
        Ok(Batch { group, chunked })
    }
}

impl Batch {
    /// Every result, in call order.
    async fn in_order<O: DeserializeOwned>(self) -> Result<Vec<O>, Error> {
        let mut out = Vec::new();
        for r in self.group.results() {
            let value: Value = r.get(FOREVER).await?;
            for v in unpack(r.id(), value, self.chunked)? {
                out.push(decode(r.id(), v)?);
            }
        }
        Ok(out)
    }
}

/// One message's results: a chunk's list, or the single result.
fn unpack(task_id: &str, value: Value, chunked: bool) -> Result<Vec<Value>, Error> {
    if !chunked {
        return Ok(vec![value]);
    }
    match value {
        Value::Array(values) => Ok(values),
        other => Err(Error::ResultType {
            task_id: task_id.to_string(),
            expected: "a list of results (celery.starmap)",
            source: <serde_json::Error as serde::de::Error>::custom(format!("got {other}")),
        }),
    }
}

fn decode<O: DeserializeOwned>(task_id: &str, value: Value) -> Result<O, Error> {
    serde_json::from_value(value).map_err(|source| Error::ResultType {
        task_id: task_id.to_string(),
        expected: std::any::type_name::<O>(),
        source,
    })
}
