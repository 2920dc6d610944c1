//! [`GroupResult`]: the results of a group's members, beside [`AsyncResult`] — `get` in
//! order, `iter_completed` as they finish, `save`/`restore` as Celery's saved groups.

use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use serde::de::DeserializeOwned;

use celeriac_core::TaskMeta;

use super::AsyncResult;
use crate::app::App;
use crate::canvas::plan::Sent;
use crate::error::Error;

/// The results of a group's members, in the order they were given.
///
/// `get` returns every result in order (failing on the first failed member, like Celery's
/// `join`); [`iter_completed`](Self::iter_completed) yields them as they finish — the
/// `imap_unordered` of a process pool.
#[derive(Clone)]
pub struct GroupResult {
    id: String,
    results: Vec<AsyncResult>,
    app: Option<App>,
}

impl std::fmt::Debug for GroupResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupResult")
            .field("id", &self.id)
            .field("len", &self.results.len())
            .finish()
    }
}

impl GroupResult {
    pub(crate) fn new(app: &App, id: String, members: Vec<Sent>) -> Self {
        Self {
            id,
            results: members
                .iter()
                .map(|h| AsyncResult::new(h.id().to_string(), app))
                .collect(),
            app: Some(app.clone()),
        }
    }

    pub(crate) fn eager(id: String, results: Vec<AsyncResult>) -> Self {
        Self {
            id,
            results,
            app: None,
        }
    }

    /// A handle to a group saved with [`save`](Self::save), from any process; `None` if
    /// no such group was saved (or it expired).
    pub async fn restore(app: &App, group_id: &str) -> Result<Option<GroupResult>, Error> {
        let backend = app.backend().ok_or(Error::NoResultBackend)?;
        Ok(backend.restore_group(group_id).await?.map(|ids| Self {
            id: group_id.to_string(),
            results: ids
                .into_iter()
                .map(|id| AsyncResult::new(id, app))
                .collect(),
            app: Some(app.clone()),
        }))
    }

    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' result handles, in order.
    pub fn results(&self) -> &[AsyncResult] {
        &self.results
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// Whether the group has no members.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Saves the member ids in the result backend (Celery's `GroupResult.save()`), so
    /// [`restore`](Self::restore) finds the group by id — Python's
    /// `GroupResult.restore(id)` too, on Redis.
    pub async fn save(&self) -> Result<(), Error> {
        let app = self.app.as_ref().ok_or(Error::NoResultBackend)?;
        let backend = app.backend().ok_or(Error::NoResultBackend)?;
        let ids: Vec<String> = self.results.iter().map(|r| r.id().to_string()).collect();
        Ok(backend.save_group(&self.id, &ids).await?)
    }

    /// Deletes the saved group record and every member's result.
    pub async fn forget(&self) -> Result<(), Error> {
        for r in &self.results {
            r.forget().await?;
        }
        if let Some(backend) = self.app.as_ref().and_then(App::backend) {
            match backend.forget_group(&self.id).await {
                Ok(()) | Err(celeriac_core::BackendError::Unsupported(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// How many members have finished (SUCCESS, FAILURE or REVOKED).
    pub async fn completed_count(&self) -> Result<usize, Error> {
        let mut n = 0;
        for r in &self.results {
            if r.ready().await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether every member has finished.
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.completed_count().await? == self.results.len())
    }

    /// Whether every member finished with SUCCESS.
    pub async fn successful(&self) -> Result<bool, Error> {
        for r in &self.results {
            if !r.successful().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether any member finished with FAILURE.
    pub async fn failed(&self) -> Result<bool, Error> {
        for r in &self.results {
            if r.failed().await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Waits for every member and returns their results in order; the first failed
    /// member's error if any failed; [`Error::Timeout`] if `timeout` passes first.
    pub async fn get<T: DeserializeOwned>(&self, timeout: Duration) -> Result<Vec<T>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(self.results.len());
        for r in &self.results {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            out.push(r.get(left).await?);
        }
        Ok(out)
    }

    /// The members' records as they finish, each with its position in the group: the
    /// `imap_unordered` of a process pool. A member still unfinished at `timeout` ends
    /// the stream with [`Error::Timeout`].
    pub fn iter_completed(
        &self,
        timeout: Duration,
    ) -> impl Stream<Item = Result<(usize, TaskMeta), Error>> + Send + 'static {
        let waits: FuturesUnordered<_> = self
            .results
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| async move { r.wait(timeout).await.map(|m| (i, m)) })
            .collect();
        waits
    }

    /// [`iter_completed`](Self::iter_completed), with each result decoded as a `T` (a
    /// failed member is its error).
    pub fn iter_results<T: DeserializeOwned + Send + 'static>(
        &self,
        timeout: Duration,
    ) -> impl Stream<Item = Result<(usize, T), Error>> + Send + 'static {
        self.iter_completed(timeout)
            .map(|r| r.and_then(|(i, meta)| super::into_result(meta).map(|v| (i, v))))
    }
}
