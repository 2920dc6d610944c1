//! Workflows: [`chain`], [`group`], [`chord`] (and `map`/`starmap`/`chunks`), built as
//! Celery's signature dicts and sent exactly as Celery's canvas sends them — so a Python
//! worker runs a celeriac client's chain, and a celeriac worker continues a Python
//! client's.
//!
//! Sending a canvas is one code path for clients and workers (a worker continuing a chain
//! or firing a chord body sends the next part the same way):
//!
//! 1. **Normalise** (Celery's `prepare_steps`): nested chains are flattened, a chord whose
//!    body is a chain is unrolled, and a group followed by another step becomes a chord.
//! 2. **Freeze**: every task gets its id up front (`options.task_id`), a group its group id,
//!    a chord's body its id and the chord's group id — so the caller's result handle exists
//!    before anything runs.
//! 3. **Emit**: a chain sends its first step with the rest, reversed, in `embed.chain`; a
//!    group sends every member with `group`/`group_index`; a chord starts the chord in the
//!    result backend, then sends its header as a group whose members carry the body in
//!    `embed.chord`. All messages of one call are published as one batch.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use celeriac_core::protocol::TaskMessage;
use celeriac_core::{Canvas, Signature, TaskMeta};

use crate::app::App;
use crate::error::Error;
use crate::result::AsyncResult;

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
        if app.config().always_eager {
            return crate::eager::apply_group(app, self.sig).await;
        }
        match send(app, self.sig, Apply::default()).await? {
            Handle::Group(id, members) => Ok(GroupResult::new(app, id, members)),
            Handle::Task(id) => Ok(GroupResult::new(app, id.clone(), vec![Handle::Task(id)])),
        }
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

/// What a sent canvas returns: one task's id, or a group's id and its members'.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Handle {
    Task(String),
    Group(String, Vec<Handle>),
}

impl Handle {
    /// The id a result handle for this reads: a task's id, or the group's.
    pub(crate) fn id(&self) -> &str {
        match self {
            Handle::Task(id) | Handle::Group(id, _) => id,
        }
    }
}

/// How a canvas is sent: from where, with which parent result, in which group or chord,
/// followed by which chain.
#[derive(Debug, Clone, Default)]
pub(crate) struct Apply {
    /// Prepended to the (first) task's arguments: a parent's result.
    pub args: Vec<Value>,
    /// `(parent_id, root_id)` when sent by a running task.
    pub parent: Option<(String, String)>,
    /// Steps to run after this canvas, reversed (`embed.chain`).
    pub chain: Vec<Signature>,
}

/// Sends `sig` — a task or any canvas — as one batch of messages.
pub(crate) async fn send(app: &App, sig: Signature, how: Apply) -> Result<Handle, Error> {
    let mut out = Vec::new();
    let handle = plan(app, sig, how, &mut out).await?;
    app.publish_batch(out).await?;
    Ok(handle)
}

type PlanFuture<'a> = Pin<Box<dyn Future<Output = Result<Handle, Error>> + Send + 'a>>;

/// Builds the messages for `sig` into `out`, starting chords in the backend on the way.
pub(crate) fn plan<'a>(
    app: &'a App,
    sig: Signature,
    how: Apply,
    out: &'a mut Vec<TaskMessage>,
) -> PlanFuture<'a> {
    Box::pin(async move {
        if let Some(e) = &sig.encode_error {
            return Err(Error::Signature(celeriac_core::protocol::SignatureError {
                task: sig.task.clone(),
                reason: e.clone(),
            }));
        }
        match sig.canvas()? {
            Canvas::Task => {
                let mut sig = sig.with_parent_args(&how.args);
                freeze(&mut sig)?;
                if !how.chain.is_empty() {
                    sig = with_chain(sig, how.chain);
                }
                let (msg, _) = app.prepare(&sig, how.parent)?;
                let id = msg.headers.id.clone();
                out.push(msg);
                Ok(Handle::Task(id))
            }
            Canvas::Chain(_) => {
                let own = sig.options.clone();
                let mut steps = normalize_chain(sig)?;
                if steps.is_empty() {
                    return Err(Error::Input("a chain needs at least one step".into()));
                }
                spread_chain_options(&own, &mut steps);
                let mut handles = Vec::with_capacity(steps.len());
                for s in steps.iter_mut() {
                    handles.push(freeze(s)?);
                }
                let last = handles.pop().unwrap_or(Handle::Task(String::new()));
                let mut rest: Vec<Signature> = steps.drain(1..).rev().collect();
                let first = steps
                    .pop()
                    .ok_or_else(|| Error::Input("empty chain".into()))?;
                // The outer chain (if any) runs after this one: it goes first in the
                // reversed list, Celery's `options['chain'] + tasks`.
                let mut chain = how.chain;
                chain.append(&mut rest);
                plan(
                    app,
                    first,
                    Apply {
                        args: how.args,
                        parent: how.parent,
                        chain,
                    },
                    out,
                )
                .await?;
                Ok(last)
            }
            Canvas::Group(_) => {
                let mut sig = sig;
                let handle = freeze(&mut sig)?;
                let Canvas::Group(members) = sig.canvas()? else {
                    return Err(Error::Input("not a group".into()));
                };
                let chain = how.chain.clone();
                plan_members(app, members, &sig.options, &how, chain, out).await?;
                Ok(handle)
            }
            Canvas::Chord { .. } => {
                // What follows the chord follows its body (before freezing, so the header
                // members carry the body with it).
                let mut sig = if how.chain.is_empty() {
                    sig
                } else {
                    with_chain(sig, how.chain.clone())
                };
                let handle = freeze(&mut sig)?;
                let Canvas::Chord {
                    header,
                    header_options,
                    body,
                } = sig.canvas()?
                else {
                    return Err(Error::Input("not a chord".into()));
                };
                let body = *body;
                if header.is_empty() {
                    // Nothing to wait for: the body runs at once with an empty list.
                    plan(
                        app,
                        body,
                        Apply {
                            args: vec![json!([])],
                            parent: how.parent,
                            chain: Vec::new(),
                        },
                        out,
                    )
                    .await?;
                    return Ok(handle);
                }
                let gid = header_options
                    .get("task_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let backend = app.backend().ok_or(Error::NoResultBackend)?;
                backend.chord_start(&gid, header.len()).await?;
                plan_members(app, header, &sig.options, &how, Vec::new(), out).await?;
                Ok(handle)
            }
            Canvas::Chunks { task, items, size } => {
                let mut g = Signature::chunks_group(&task, &items, size);
                g.options = sig.options.clone();
                plan(app, g, how, out).await
            }
        }
    })
}

/// Plans each member of a group or chord header with the group's shared options, the
/// parent's arguments and `chain` to follow each member.
async fn plan_members(
    app: &App,
    members: Vec<Signature>,
    options: &Map<String, Value>,
    how: &Apply,
    chain: Vec<Signature>,
    out: &mut Vec<TaskMessage>,
) -> Result<(), Error> {
    let shared = member_options(options);
    for m in members {
        let m = with_options(m, &shared);
        let apply = Apply {
            args: how.args.clone(),
            parent: how.parent.clone(),
            chain: chain.clone(),
        };
        plan(app, m, apply, out).await?;
    }
    Ok(())
}

/// Options of a group or chord that apply to each member (routing, timing).
fn member_options(options: &Map<String, Value>) -> Map<String, Value> {
    options
        .iter()
        .filter(|(k, v)| {
            !v.is_null()
                && !matches!(
                    k.as_str(),
                    "task_id"
                        | "group_id"
                        | "group_index"
                        | "chord"
                        | "chain"
                        | "link"
                        | "link_error"
                        | "root_id"
                        | "parent_id"
                        | "reply_to"
                )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `sig` with `shared` options where it sets none of its own.
fn with_options(mut sig: Signature, shared: &Map<String, Value>) -> Signature {
    for (k, v) in shared {
        if sig.option(k).is_none() {
            sig.options.insert(k.clone(), v.clone());
        }
    }
    sig
}

/// A chain's own options: `link_error` goes to every step, `link` to the last, the rest
/// (routing, countdown, …) to the first where it sets none.
fn spread_chain_options(own: &Map<String, Value>, steps: &mut [Signature]) {
    if let Some(Value::Array(errbacks)) = own.get("link_error") {
        for s in steps.iter_mut() {
            for e in errbacks {
                add_to_list(s, "link_error", e.clone());
            }
        }
    }
    if let (Some(Value::Array(links)), Some(last)) = (own.get("link"), steps.last_mut()) {
        for l in links {
            add_to_list(last, "link", l.clone());
        }
    }
    if let Some(first) = steps.first_mut() {
        let shared = member_options(own);
        *first = with_options(std::mem::replace(first, Signature::new("")), &shared);
    }
}

fn add_to_list(sig: &mut Signature, key: &str, item: Value) {
    match sig.options.get_mut(key) {
        Some(Value::Array(items)) => items.push(item),
        _ => {
            sig.options
                .insert(key.to_string(), Value::Array(vec![item]));
        }
    }
}

/// `sig` followed by `chain` (reversed: the last runs next): on a task, `embed.chain`; on
/// a chord, its body's; on a chain, after its last step.
fn with_chain(mut sig: Signature, mut chain: Vec<Signature>) -> Signature {
    match sig.canvas() {
        Ok(Canvas::Chord { .. }) => {
            if let Some(body) = sig.kwargs.get("body").cloned() {
                if let Ok(b) = serde_json::from_value::<Signature>(body) {
                    let b = with_chain(b, chain);
                    sig.kwargs.insert("body".into(), to_value(&b));
                }
            }
            sig
        }
        Ok(Canvas::Chain(mut steps)) => {
            // chain(a, b) then [z, y] (reversed) = chain(a, b, y, z).
            chain.reverse();
            steps.extend(chain);
            let mut s = Signature::chain(steps);
            s.options = sig.options;
            s
        }
        _ => {
            let mut list: Vec<Value> = match sig.options.remove("chain") {
                Some(Value::Array(existing)) => existing,
                _ => Vec::new(),
            };
            // What this task already had to run next comes after the new steps.
            let mut new: Vec<Value> = chain.iter().map(to_value).collect();
            new.append(&mut list);
            sig.options.insert("chain".into(), Value::Array(new));
            sig
        }
    }
}

fn to_value(sig: &Signature) -> Value {
    serde_json::to_value(sig).unwrap_or(Value::Null)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn id_of(sig: &mut Signature) -> String {
    match sig.option("task_id").and_then(Value::as_str) {
        Some(id) => id.to_string(),
        None => {
            let id = new_id();
            sig.options.insert("task_id".into(), json!(id));
            id
        }
    }
}

/// A chain's steps as Celery sends them: nested chains flattened, chord bodies that are
/// chains unrolled, empty groups dropped, and a group followed by a step upgraded to a
/// chord with that step as its body.
pub(crate) fn normalize(sig: Signature) -> Result<Vec<Signature>, Error> {
    normalize_chain(sig)
}

fn normalize_chain(sig: Signature) -> Result<Vec<Signature>, Error> {
    fn flatten(sig: Signature, out: &mut Vec<Signature>) -> Result<(), Error> {
        match sig.canvas()? {
            Canvas::Chain(steps) => {
                for (i, s) in steps.into_iter().enumerate() {
                    // A nested chain's own parent args went to its first step already.
                    let _ = i;
                    flatten(s, out)?;
                }
            }
            Canvas::Chord {
                header,
                header_options,
                body,
            } if matches!(body.canvas()?, Canvas::Chain(_)) => {
                // chord(h, chain(a, b)) is chord(h, a) then b.
                let mut body_steps = Vec::new();
                flatten(*body, &mut body_steps)?;
                let mut rest = body_steps.into_iter();
                if let Some(first) = rest.next() {
                    let mut g = Signature::group(header);
                    g.options = header_options;
                    let mut c = Signature::chord(g, first);
                    c.options = sig.options;
                    out.push(c);
                }
                out.extend(rest);
            }
            _ => out.push(sig),
        }
        Ok(())
    }
    let mut flat = Vec::new();
    flatten(sig, &mut flat)?;
    let n = flat.len();
    let flat: Vec<Signature> = flat
        .into_iter()
        .enumerate()
        .filter(|(i, s)| !(n > 1 && *i + 1 < n && is_empty_group(s)))
        .map(|(_, s)| s)
        .collect();
    let mut rev: Vec<Signature> = Vec::with_capacity(flat.len());
    for step in flat.into_iter().rev() {
        let is_group = matches!(step.canvas()?, Canvas::Group(_));
        match rev.pop() {
            Some(next) if is_group => {
                let mut c = Signature::chord(step.clone(), next);
                // The group's own options (its id) become the chord's.
                c.options = step.options;
                rev.push(c);
            }
            Some(next) => {
                rev.push(next);
                rev.push(step);
            }
            None => rev.push(step),
        }
    }
    rev.reverse();
    Ok(rev)
}

fn is_empty_group(sig: &Signature) -> bool {
    matches!(sig.canvas(), Ok(Canvas::Group(m)) if m.is_empty())
}

/// Assigns every id the canvas needs (in place) and returns its result handle.
pub(crate) fn freeze(sig: &mut Signature) -> Result<Handle, Error> {
    match sig.canvas()? {
        Canvas::Task => Ok(Handle::Task(id_of(sig))),
        Canvas::Chain(_) => {
            let options = sig.options.clone();
            let immutable = sig.immutable;
            let mut steps = normalize_chain(sig.clone())?;
            let mut last = None;
            for s in steps.iter_mut() {
                last = Some(freeze(s)?);
            }
            *sig = Signature::chain(steps);
            sig.options = options;
            sig.immutable = immutable;
            last.ok_or_else(|| Error::Input("a chain needs at least one step".into()))
        }
        Canvas::Group(members) => {
            let gid = id_of(sig);
            let mut frozen = Vec::with_capacity(members.len());
            let mut handles = Vec::with_capacity(members.len());
            for (i, mut m) in members.into_iter().enumerate() {
                if matches!(m.canvas()?, Canvas::Group(_)) {
                    return Err(Error::Input(
                        "a group directly inside a group is not supported; put it in a chain or a chord".into(),
                    ));
                }
                join_group(&mut m, &gid, i as u64, None)?;
                handles.push(freeze(&mut m)?);
                frozen.push(m);
            }
            sig.kwargs.insert(
                "tasks".into(),
                Value::Array(frozen.iter().map(to_value).collect()),
            );
            Ok(Handle::Group(gid, handles))
        }
        Canvas::Chord {
            header,
            mut header_options,
            body,
        } => {
            // The chord's id is its header group's id (Celery freezes them as one).
            let gid = match header_options
                .get("task_id")
                .and_then(Value::as_str)
                .or_else(|| sig.option("task_id").and_then(Value::as_str))
            {
                Some(id) => id.to_string(),
                None => new_id(),
            };
            header_options.insert("task_id".into(), json!(gid));
            let mut body = *body;
            body.options.insert("group_id".into(), json!(gid));
            let handle = freeze(&mut body)?;
            let mut members = Vec::with_capacity(header.len());
            for (i, mut m) in header.into_iter().enumerate() {
                if matches!(m.canvas()?, Canvas::Group(_)) {
                    return Err(Error::Input(
                        "a group inside a chord header is not supported; list its members in the header".into(),
                    ));
                }
                join_group(&mut m, &gid, i as u64, Some(&body))?;
                freeze(&mut m)?;
                members.push(m);
            }
            let mut g = Signature::group(members);
            g.options = header_options;
            sig.kwargs.insert("header".into(), to_value(&g));
            sig.kwargs.insert("body".into(), to_value(&body));
            sig.options.insert("task_id".into(), json!(gid));
            Ok(handle)
        }
        Canvas::Chunks { .. } => {
            // Frozen when it is expanded into its group of starmaps.
            Ok(Handle::Task(id_of(sig)))
        }
    }
}

/// Makes `sig` member `index` of group `gid` (and of chord `body`, if given): a task
/// carries it itself; a chain on its last step, which decides when the member is done; a
/// chord on its body.
fn join_group(
    sig: &mut Signature,
    gid: &str,
    index: u64,
    body: Option<&Signature>,
) -> Result<(), Error> {
    match sig.canvas()? {
        Canvas::Task | Canvas::Chunks { .. } => {
            sig.options.insert("group_id".into(), json!(gid));
            sig.options.insert("group_index".into(), json!(index));
            if let Some(b) = body {
                sig.options.insert("chord".into(), to_value(b));
            }
            Ok(())
        }
        Canvas::Chain(_) => {
            let options = sig.options.clone();
            let mut steps = normalize_chain(sig.clone())?;
            if let Some(last) = steps.last_mut() {
                join_group(last, gid, index, body)?;
            }
            *sig = Signature::chain(steps);
            sig.options = options;
            Ok(())
        }
        Canvas::Chord { .. } => {
            if let Some(Value::Object(_)) = sig.kwargs.get("body") {
                if let Some(b) = sig.kwargs.get("body").cloned() {
                    let mut b: Signature = serde_json::from_value(b)
                        .map_err(|e| Error::Input(format!("chord body: {e}")))?;
                    join_group(&mut b, gid, index, body)?;
                    sig.kwargs.insert("body".into(), to_value(&b));
                }
            }
            Ok(())
        }
        Canvas::Group(_) => Err(Error::Input(
            "a group directly inside a group is not supported; put it in a chain or a chord".into(),
        )),
    }
}

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
    pub(crate) fn new(app: &App, id: String, members: Vec<Handle>) -> Self {
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
            .map(|r| r.and_then(|(i, meta)| crate::result::into_result(meta).map(|v| (i, v))))
    }
}
