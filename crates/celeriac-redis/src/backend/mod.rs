//! `RedisBackend`: Celery's Redis result backend — `celery-task-meta-<id>` records with
//! an expiry, published on the channel of the same name — so Python's
//! `AsyncResult.get()` sees celeriac's results and the other way round.
//!
//! Writes never overwrite SUCCESS and are `SETEX` + `PUBLISH`, in one Lua call; records
//! stored while a call is on its way are written together by the next call, so a busy
//! worker costs Redis one script call per batch instead of one per task. Waiting is push-based:
//! one pub/sub connection per backend, shared by every waiter, subscribing to a task's
//! channel while somebody waits for it. After subscribing, a waiter reads the key once
//! (the record may already be there); after a lost pub/sub connection, the subscriber
//! reconnects with back-off, subscribes again and re-reads every awaited key, as Celery's
//! client does, so no result published during the outage is missed.
//!
//! Chords use Celery 5.7's keys and algorithm (`celery-taskset-meta-<gid>.j/.s/.t/.d/.c`,
//! one atomic script per part that also elects the worker firing the body, a claim
//! extended before publishing and released by a cleanup script), so a chord whose parts
//! run on a mix of Celery and celeriac workers fires its body exactly once.
//!
//! One file per job, each beside the Lua scripts it runs (`src/lua/<file>.lua`):
//!
//! | file | what it does | scripts |
//! |---|---|---|
//! | `store` | task records: the batched writer, forget | `store_result.lua` |
//! | `wait` | reading a record, waiting for it: the shared pub/sub subscriber | |
//! | `chord` | Celery 5.7's chord join: parts, the claim to fire the body, cleanup | `chord_part.lua`, `chord_claim_extend.lua`, `chord_cleanup.lua` |
//! | `group` | saved groups: save, restore, forget | |

mod chord;
mod group;
mod store;
mod wait;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, PubSubSink};
use redis::Script;
use tokio::sync::{watch, Notify};

use celeriac_core::error::BackendError;
use celeriac_core::url::EngineUrl;
use celeriac_core::{ChordEnd, ChordJoin, ChordPart, ResultBackend, TaskMeta};

use crate::coalesce::Coalesce;
use crate::config::RedisConfig;
use crate::error::{self, Error};
use crate::keys::ResultKeys;
use crate::target::Target;

use store::PendingStore;
use wait::Slot;

/// The Redis result backend. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    me: Weak<Inner>,
    cfg: RedisConfig,
    /// The server (for `sentinel://`, the current primary) every connection goes to.
    target: Target,
    keys: ResultKeys,
    store: Script,
    chord_part: Script,
    chord_extend: Script,
    chord_cleanup: Script,
    /// Records waiting to be written together.
    stores: Coalesce<PendingStore>,
    /// Waiters by task id.
    waiters: Mutex<HashMap<String, Arc<Slot>>>,
    /// The live pub/sub sink; `None` while (re)connecting.
    sink: watch::Sender<Option<PubSubSink>>,
    subscriber_started: AtomicBool,
    shutdown: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.notify_one();
    }
}

impl RedisBackend {
    /// Connects to the backend at `url`.
    pub async fn connect(url: &EngineUrl) -> Result<Self, Error> {
        let cfg = RedisConfig::from_url(url)?;
        let target = Target::connect(&cfg, |url, reason| {
            BackendError::Connection { url, reason }.into()
        })
        .await?;
        let (sink, _) = watch::channel(None);
        Ok(Self {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                keys: ResultKeys::new(&cfg.keyprefix),
                cfg,
                target,
                store: Script::new(store::SCRIPT),
                chord_part: Script::new(chord::PART_SCRIPT),
                chord_extend: Script::new(chord::EXTEND_SCRIPT),
                chord_cleanup: Script::new(chord::CLEANUP_SCRIPT),
                stores: Coalesce::default(),
                waiters: Mutex::new(HashMap::new()),
                sink,
                subscriber_started: AtomicBool::new(false),
                shutdown: Arc::new(Notify::new()),
            }),
        })
    }

    /// The key a task's record is stored under (and published on).
    pub fn key_for(&self, task_id: &str) -> String {
        self.inner.keys.task_meta(task_id)
    }
}

impl Inner {
    fn err(&self, op: &'static str, e: redis::RedisError) -> BackendError {
        self.target.check(&e);
        error::backend(&self.cfg.masked, op, e)
    }

    fn conn(&self) -> ConnectionManager {
        self.target.conn()
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    fn url(&self) -> String {
        self.inner.cfg.masked.clone()
    }

    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        self.store_meta(meta, expires).await
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.inner.get(task_id).await
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.forget_meta(task_id).await
    }

    async fn wait_ready(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        self.wait_until_ready(task_id, timeout).await
    }

    async fn chord_start(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        self.begin_chord(group_id, size).await
    }

    async fn chord_part(&self, part: &ChordPart) -> Result<ChordJoin, BackendError> {
        self.join_part(part).await
    }

    async fn chord_finish(
        &self,
        group_id: &str,
        claim: &str,
        end: ChordEnd,
    ) -> Result<(), BackendError> {
        self.end_chord(group_id, claim, end).await
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BackendError> {
        self.group_save(group_id, task_ids).await
    }

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        self.group_restore(group_id).await
    }

    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        self.group_forget(group_id).await
    }
}
