//! Workflows: [`chain`], [`group`], [`chord`] (and `map`/`starmap`/`chunks`), built as
//! Celery's signature dicts and sent exactly as Celery's canvas sends them — so a Python
//! worker runs a celeriac client's chain, and a celeriac worker continues a Python
//! client's.
//!
//! This module builds canvases; `canvas/plan.rs` is the one interpreter that turns one
//! into the task messages to send (used by clients, workers and eager mode alike, through
//! the `producer` module), and `canvas/flow.rs` is what a finished task does for the
//! workflow it belongs to (next chain step, callbacks, the chord join).

pub(crate) mod flow;
pub(crate) mod plan;

use serde_json::Value;

use celeriac_core::Signature;

use crate::app::App;
use crate::error::Error;
use crate::result::GroupResult;

/// A chain of steps: each runs after the previous one succeeded, with its result prepended
/// to the step's arguments (unless the step was made immutable with `si`).
///
/// ```no_run
/// # #[celeriac::task(name = "tasks.add")] async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
/// # #[celeriac::task(name = "tasks.mul")] async fn mul(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x * y) }
/// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
/// let r = celeriac::chain![add::new(1, 1), add::s(3), mul::s(10)].apply_async(&app).await?;
/// assert_eq!(r.get::<i64>(std::time::Duration::from_secs(10)).await?, 50);   // ((1+1)+3)*10
/// # Ok(()) }
/// ```
pub fn chain(steps: impl IntoIterator<Item = Signature>) -> Signature {
    Signature::chain(steps)
}

/// `chain![a, b, c]`: [`chain`] with its steps listed (groups and chords too).
#[macro_export]
macro_rules! chain {
    ($($step:expr),+ $(,)?) => {
        $crate::chain([$($crate::Signature::from($step)),+])
    };
}

/// A chord: `header` runs as a group; when every member has finished, `body` runs with the
/// list of their results, in header order. If a member fails, the body fails with
/// `ChordError` naming it.
///
/// ```no_run
/// # #[celeriac::task(name = "tasks.add")] async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
/// # #[celeriac::task(name = "tasks.xsum")] async fn xsum(xs: Vec<i64>) -> celeriac::TaskResult<i64> { Ok(xs.iter().sum()) }
/// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
/// let r = celeriac::chord(celeriac::group((0..100).map(|i| add::new(i, i))), xsum::s())
///     .apply_async(&app).await?;
/// assert_eq!(r.get::<i64>(std::time::Duration::from_secs(30)).await?, 9900);
/// # Ok(()) }
/// ```
pub fn chord(header: impl Into<Signature>, body: Signature) -> Signature {
    Signature::chord(header.into(), body)
}

/// A group: the members run in parallel; [`Group::apply_async`] returns a [`GroupResult`].
///
/// ```no_run
/// # #[celeriac::task(name = "tasks.add")] async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
/// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
/// let g = celeriac::group((0..10).map(|i| add::new(i, i))).apply_async(&app).await?;
/// let sums: Vec<i64> = g.get(std::time::Duration::from_secs(10)).await?;   // in order
/// # Ok(()) }
/// ```
pub fn group(members: impl IntoIterator<Item = Signature>) -> Group {
    Group {
        sig: Signature::group(members),
    }
}

/// A group of signatures, not sent yet. Use it in a [`chain`] or [`chord`] (it converts
/// into a [`Signature`]) or send it with [`apply_async`](Self::apply_async).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    sig: Signature,
}

impl Group {
    /// Sets an `apply_async` option for every member (`queue`, `priority`, `countdown`, …).
    pub fn set_option(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.sig = self.sig.set_option(name, value);
        self
    }

    /// Sends every member to this queue.
    pub fn queue(self, queue: impl Into<String>) -> Self {
        self.set_option("queue", queue.into())
    }

    /// Uses this group id instead of a new UUID.
    pub fn group_id(self, id: impl Into<String>) -> Self {
        self.set_option("task_id", id.into())
    }

    /// Sends every member (in one batch) and returns the group's result handle.
    pub async fn apply_async(self, app: &App) -> Result<GroupResult, Error> {
        crate::producer::apply_group(app, self.sig).await
    }
}

impl Group {
    /// A group from a group signature (or a chunks one, which is sent as a group).
    #[doc(hidden)]
    pub fn from_signature(sig: Signature) -> Group {
        Group { sig }
    }
}

impl From<Group> for Signature {
    fn from(g: Group) -> Signature {
        g.sig
    }
}
