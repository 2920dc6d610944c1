//! Planning a canvas: turning a task or any canvas into the task signatures to publish,
//! exactly as Celery's canvas sends them — the one interpreter of chains, groups and
//! chords, used by clients, by workers continuing a workflow, and by eager mode.
//!
//! 1. **Normalise** (Celery's `prepare_steps`): nested chains are flattened, a chord whose
//!    body is a chain is unrolled, and a group followed by another step becomes a chord.
//! 2. **Freeze**: every task gets its id up front (`options.task_id`), a group its group id,
//!    a chord's body its id and the chord's group id — so the caller's result handle exists
//!    before anything runs.
//! 3. **Emit**: a chain emits its first step with the rest, reversed, in its `chain`
//!    option (`embed.chain` on the wire); a group emits every member with
//!    `group_id`/`group_index`; a chord starts the chord in the result backend, then
//!    emits its header as a group whose members carry the body in `chord`.
//!
//! The plan knows nothing of brokers: it yields frozen task signatures, and
//! [`producer`](crate::producer) turns them into messages and publishes them (or runs them
//! inline, in eager mode).

use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Map, Value};

use celeriac_core::{Canvas, ResultBackend, Signature};

use crate::error::Error;

/// What a sent canvas returns: one task's id, or a group's id and its members' — the ids
/// its result handles read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sent {
    Task(String),
    Group(String, Vec<Sent>),
}

impl Sent {
    /// The id a result handle for this reads: a task's id, or the group's.
    pub(crate) fn id(&self) -> &str {
        match self {
            Sent::Task(id) | Sent::Group(id, _) => id,
        }
    }
}

/// How a signature is sent: with which parent result prepended, as the child of which
/// running task, followed by which chain.
#[derive(Debug, Clone, Default)]
pub(crate) struct SendOptions {
    /// Prepended to the (first) task's arguments: a parent's result.
    pub args: Vec<Value>,
    /// `(parent_id, root_id)` when sent by a running task.
    pub parent: Option<(String, String)>,
    /// Steps to run after this canvas, reversed (`embed.chain`).
    pub chain: Vec<Signature>,
}

type PlanFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, Error>> + Send + 'a>>;

/// Plans `sig` — a task or any canvas — into the frozen task signatures to publish
/// (`out`), with `args` prepended to its (first) task's arguments and `chain` to run after
/// it; chords are started in `chords`, the result backend that will join them.
pub(crate) fn plan<'a>(
    chords: Option<&'a dyn ResultBackend>,
    sig: Signature,
    args: Vec<Value>,
    chain: Vec<Signature>,
    out: &'a mut Vec<Signature>,
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
                let mut sig = sig.with_parent_args(&args);
                let sent = freeze(&mut sig)?;
                if !chain.is_empty() {
                    sig = with_chain(sig, chain);
                }
                out.push(sig);
                Ok(sent)
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
                let last = handles.pop().unwrap_or(Sent::Task(String::new()));
                let mut rest: Vec<Signature> = steps.drain(1..).rev().collect();
                let first = steps
                    .pop()
                    .ok_or_else(|| Error::Input("empty chain".into()))?;
                // The outer chain (if any) runs after this one: it goes first in the
                // reversed list, Celery's `options['chain'] + tasks`.
                let mut chain = chain;
                chain.append(&mut rest);
                plan(chords, first, args, chain, out).await?;
                Ok(last)
            }
            Canvas::Group(_) => {
                let mut sig = sig;
                let handle = freeze(&mut sig)?;
                let Canvas::Group(members) = sig.canvas()? else {
                    return Err(Error::Input("not a group".into()));
                };
                plan_members(chords, members, &sig.options, &args, &chain, out).await?;
                Ok(handle)
            }
            Canvas::Chord { .. } => {
                // What follows the chord follows its body (before freezing, so the header
                // members carry the body with it).
                let mut sig = if chain.is_empty() {
                    sig
                } else {
                    with_chain(sig, chain)
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
                    plan(chords, body, vec![json!([])], Vec::new(), out).await?;
                    return Ok(handle);
                }
                let gid = header_options
                    .get("task_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let backend = chords.ok_or(Error::NoResultBackend)?;
                backend.chord_start(&gid, header.len()).await?;
                plan_members(chords, header, &sig.options, &args, &[], out).await?;
                Ok(handle)
            }
            Canvas::Chunks { task, items, size } => {
                let mut g = Signature::chunks_group(&task, &items, size);
                g.options = sig.options.clone();
                plan(chords, g, args, chain, out).await
            }
        }
    })
}

/// Plans each member of a group or chord header with the group's shared options, the
/// parent's arguments and `chain` to follow each member.
async fn plan_members(
    chords: Option<&dyn ResultBackend>,
    members: Vec<Signature>,
    options: &Map<String, Value>,
    args: &[Value],
    chain: &[Signature],
    out: &mut Vec<Signature>,
) -> Result<(), Error> {
    let shared = member_options(options);
    for m in members {
        let m = with_options(m, &shared);
        plan(chords, m, args.to_vec(), chain.to_vec(), out).await?;
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
fn normalize_chain(sig: Signature) -> Result<Vec<Signature>, Error> {
    fn flatten(sig: Signature, out: &mut Vec<Signature>) -> Result<(), Error> {
        match sig.canvas()? {
            Canvas::Chain(steps) => {
                for s in steps {
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
fn freeze(sig: &mut Signature) -> Result<Sent, Error> {
    match sig.canvas()? {
        Canvas::Task => Ok(Sent::Task(id_of(sig))),
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
            Ok(Sent::Group(gid, handles))
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
            Ok(Sent::Task(id_of(sig)))
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
