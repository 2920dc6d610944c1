//! Canvas signatures — chain, group, chord, map, starmap, chunks — as the signature dicts
//! Celery sends.
//!
//! Celery represents every workflow as a [`Signature`] whose `subtask_type` says what it
//! is and whose `kwargs` hold its parts: a chain is `celery.chain` with `kwargs.tasks`, a
//! group `celery.group` with `kwargs.tasks`, a chord `celery.chord` with `kwargs.header` (a
//! group) and `kwargs.body`. Those dicts travel inside messages (`embed.chain` may hold a
//! chord a Python client built), so celeriac keeps the same representation: the
//! constructors here build them, and [`Signature::canvas`] reads any of them back —
//! including the looser shapes Python accepts (a chord header given as a plain list).
//!
//! Sending a canvas (assigning ids, setting group and chord fields, the chain in the
//! message) is the `celeriac` crate's job; this module only knows the shapes.

use serde_json::{json, Map, Value};

use crate::signature::Signature;

/// What a signature is, read from its `subtask_type` and `kwargs`.
#[derive(Debug, Clone, PartialEq)]
pub enum Canvas {
    /// A single task call (also `celery.map`, `celery.starmap`: sent as task messages).
    Task,
    /// Steps run one after another, each receiving the previous result.
    Chain(Vec<Signature>),
    /// Members run in parallel.
    Group(Vec<Signature>),
    /// A group whose results, in order, are passed to `body` once all finished.
    Chord {
        /// The header group's members.
        header: Vec<Signature>,
        /// The header group's own options (its `task_id` is the group id).
        header_options: Map<String, Value>,
        /// Run with the list of header results.
        body: Box<Signature>,
    },
    /// `task` applied to `items` in chunks of `size`: sent as a group of `celery.starmap`.
    Chunks {
        /// The task each item is applied to.
        task: Box<Signature>,
        /// Argument tuples.
        items: Vec<Value>,
        /// Items per message.
        size: usize,
    },
}

/// Why a signature dict is not a canvas celeriac can apply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{kind}` signature: {reason}")]
pub struct CanvasError {
    /// The `subtask_type`.
    pub kind: String,
    /// What is wrong.
    pub reason: String,
}

/// Task names of Celery's built-in canvas tasks.
pub mod names {
    /// A chain (never sent as a message).
    pub const CHAIN: &str = "celery.chain";
    /// A group (never sent as a message).
    pub const GROUP: &str = "celery.group";
    /// A chord (never sent as a message).
    pub const CHORD: &str = "celery.chord";
    /// `task.map(items)`: one message; the worker calls the task once per item.
    pub const MAP: &str = "celery.map";
    /// `task.starmap(items)`: one message; the worker calls the task once per argument tuple.
    pub const STARMAP: &str = "celery.starmap";
    /// `task.chunks(items, n)` (a client sends it as a group of `celery.starmap`).
    pub const CHUNKS: &str = "celery.chunks";
}

fn sig_value(sig: &Signature) -> Value {
    serde_json::to_value(sig).unwrap_or(Value::Null)
}

fn canvas_sig(task: &str, subtask_type: &str, kwargs: Map<String, Value>) -> Signature {
    let mut sig = Signature::new(task).kwargs(kwargs);
    sig.subtask_type = Some(subtask_type.to_string());
    sig
}

/// Flattens the encode errors of parts into the whole, so sending reports them.
fn inherit_errors<'a>(sig: &mut Signature, parts: impl IntoIterator<Item = &'a Signature>) {
    if sig.encode_error.is_none() {
        sig.encode_error = parts.into_iter().find_map(|p| p.encode_error.clone());
    }
}

impl Signature {
    /// A chain: each step runs after the previous one succeeded, with its result
    /// prepended to the step's arguments (unless the step is immutable).
    pub fn chain(steps: impl IntoIterator<Item = Signature>) -> Signature {
        let steps: Vec<Signature> = steps.into_iter().collect();
        let mut kwargs = Map::new();
        kwargs.insert("tasks".into(), steps.iter().map(sig_value).collect());
        let mut sig = canvas_sig(names::CHAIN, "chain", kwargs);
        inherit_errors(&mut sig, &steps);
        sig
    }

    /// A group: the members run in parallel.
    pub fn group(members: impl IntoIterator<Item = Signature>) -> Signature {
        let members: Vec<Signature> = members.into_iter().collect();
        let mut kwargs = Map::new();
        kwargs.insert("tasks".into(), members.iter().map(sig_value).collect());
        let mut sig = canvas_sig(names::GROUP, "group", kwargs);
        inherit_errors(&mut sig, &members);
        sig
    }

    /// A chord: `header` runs as a group; when every member has finished, `body` runs with
    /// the list of their results, in header order. `header` may be a group signature or
    /// any other signature (which becomes a group of one).
    pub fn chord(header: Signature, body: Signature) -> Signature {
        let header = match header.canvas() {
            Ok(Canvas::Group(_)) => header,
            Ok(Canvas::Chunks { task, items, size }) => {
                Signature::chunks_group(&task, &items, size)
            }
            _ => Signature::group([header]),
        };
        let mut kwargs = Map::new();
        kwargs.insert("header".into(), sig_value(&header));
        kwargs.insert("body".into(), sig_value(&body));
        kwargs.insert("kwargs".into(), Value::Object(Map::new()));
        let mut sig = canvas_sig(names::CHORD, "chord", kwargs);
        inherit_errors(&mut sig, [&header, &body]);
        sig
    }

    /// `celery.map`: one message; the worker calls `task` once per item (each item is the
    /// task's single argument) and stores the list of results.
    pub fn xmap(task: Signature, items: impl IntoIterator<Item = Value>) -> Signature {
        Self::basemap(names::MAP, "xmap", task, items)
    }

    /// `celery.starmap`: one message; the worker calls `task` once per item, each item an
    /// array of arguments, and stores the list of results.
    pub fn xstarmap(task: Signature, items: impl IntoIterator<Item = Value>) -> Signature {
        Self::basemap(names::STARMAP, "xstarmap", task, items)
    }

    fn basemap(
        name: &str,
        kind: &str,
        task: Signature,
        items: impl IntoIterator<Item = Value>,
    ) -> Signature {
        let mut kwargs = Map::new();
        kwargs.insert("task".into(), sig_value(&task));
        kwargs.insert("it".into(), Value::Array(items.into_iter().collect()));
        let mut sig = canvas_sig(name, kind, kwargs);
        // Routed like the task it maps (Celery's `route_name`).
        if let Some(q) = task.option("queue") {
            sig.options.insert("queue".into(), q.clone());
        }
        inherit_errors(&mut sig, [&task]);
        sig
    }

    /// `celery.chunks`: `items` (argument arrays) split into messages of `size` calls each;
    /// sent as a group of [`xstarmap`](Self::xstarmap) messages.
    pub fn chunks(
        task: Signature,
        items: impl IntoIterator<Item = Value>,
        size: usize,
    ) -> Signature {
        let mut kwargs = Map::new();
        kwargs.insert("task".into(), sig_value(&task));
        kwargs.insert("it".into(), Value::Array(items.into_iter().collect()));
        kwargs.insert("n".into(), json!(size.max(1)));
        let mut sig = canvas_sig(names::CHUNKS, "chunks", kwargs);
        inherit_errors(&mut sig, [&task]);
        sig
    }

    /// The group of [`xstarmap`](Self::xstarmap) messages a chunks signature is sent as.
    pub fn chunks_group(task: &Signature, items: &[Value], size: usize) -> Signature {
        Signature::group(
            items
                .chunks(size.max(1))
                .map(|c| Signature::xstarmap(task.clone(), c.to_vec())),
        )
    }

    /// What this signature is: a task, or a canvas with its parts.
    pub fn canvas(&self) -> Result<Canvas, CanvasError> {
        let kind = self.subtask_type.as_deref().unwrap_or("");
        let fail = |reason: String| CanvasError {
            kind: kind.to_string(),
            reason,
        };
        let list = |v: Option<&Value>, what: &str| -> Result<Vec<Signature>, CanvasError> {
            match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        serde_json::from_value(i.clone())
                            .map_err(|e| fail(format!("`{what}` holds an invalid signature: {e}")))
                    })
                    .collect(),
                Some(other) => Err(fail(format!("`{what}` must be a list, got {other}"))),
            }
        };
        match kind {
            "chain" => Ok(Canvas::Chain(list(self.kwargs.get("tasks"), "tasks")?)),
            "group" => Ok(Canvas::Group(list(self.kwargs.get("tasks"), "tasks")?)),
            "chord" => {
                let (header, header_options) = match self.kwargs.get("header") {
                    Some(Value::Array(_)) => {
                        (list(self.kwargs.get("header"), "header")?, Map::new())
                    }
                    Some(v @ Value::Object(_)) => {
                        let g: Signature = serde_json::from_value(v.clone())
                            .map_err(|e| fail(format!("`header` is not a signature: {e}")))?;
                        match g.canvas()? {
                            Canvas::Group(members) => (members, g.options),
                            // A chord header that is one task or a chain: a group of one.
                            _ => (vec![g], Map::new()),
                        }
                    }
                    _ => return Err(fail("no `header`".into())),
                };
                let body: Signature = match self.kwargs.get("body") {
                    Some(v @ Value::Object(_)) => serde_json::from_value(v.clone())
                        .map_err(|e| fail(format!("`body` is not a signature: {e}")))?,
                    _ => return Err(fail("no `body`".into())),
                };
                Ok(Canvas::Chord {
                    header,
                    header_options,
                    body: Box::new(body),
                })
            }
            "chunks" => {
                let task: Signature = match self.kwargs.get("task") {
                    Some(v @ Value::Object(_)) => serde_json::from_value(v.clone())
                        .map_err(|e| fail(format!("`task` is not a signature: {e}")))?,
                    _ => return Err(fail("no `task`".into())),
                };
                let items = match self.kwargs.get("it") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => return Err(fail("`it` must be a list".into())),
                };
                let size = self
                    .kwargs
                    .get("n")
                    .and_then(Value::as_u64)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| fail("`n` must be a positive integer".into()))?;
                Ok(Canvas::Chunks {
                    task: Box::new(task),
                    items,
                    size: size as usize,
                })
            }
            _ => Ok(Canvas::Task),
        }
    }

    /// This signature with `args` prepended (a parent's result), unless it is immutable —
    /// Celery's `Signature.clone(args)` rule. Canvases pass the arguments on: a chain to
    /// its first step, a group or chord header to every member.
    pub fn with_parent_args(mut self, args: &[Value]) -> Signature {
        if args.is_empty() || self.immutable {
            return self;
        }
        match self.subtask_type.as_deref() {
            Some("chain") | Some("group") => {
                if let Some(Value::Array(tasks)) = self.kwargs.get_mut("tasks") {
                    let targets: Box<dyn Iterator<Item = &mut Value>> =
                        if self.subtask_type.as_deref() == Some("chain") {
                            Box::new(tasks.iter_mut().take(1))
                        } else {
                            Box::new(tasks.iter_mut())
                        };
                    for t in targets {
                        if let Ok(s) = serde_json::from_value::<Signature>(t.clone()) {
                            *t = sig_value(&s.with_parent_args(args));
                        }
                    }
                }
                self
            }
            Some("chord") => {
                if let Some(h) = self.kwargs.get_mut("header") {
                    let header: Option<Signature> = match &*h {
                        Value::Array(items) => {
                            let members: Vec<Signature> = items
                                .iter()
                                .filter_map(|i| serde_json::from_value(i.clone()).ok())
                                .collect();
                            Some(Signature::group(members))
                        }
                        other => serde_json::from_value(other.clone()).ok(),
                    };
                    if let Some(header) = header {
                        *h = sig_value(&header.with_parent_args(args));
                    }
                }
                self
            }
            _ => {
                let mut all = args.to_vec();
                all.append(&mut self.args);
                self.args = all;
                self
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_chord_a_python_client_puts_in_a_chain() {
        // From celery-wire.md §1.4: chain(add.s(1,1), group(add.s(1), add.s(2)), xsum.s()).
        let text = r#"{"task": "celery.chord", "args": [], "kwargs": {"kwargs": {}, "header": {"task": "celery.group", "args": [], "kwargs": {"tasks": [{"task": "tasks.add", "args": [1], "kwargs": {}, "options": {"task_id": "8f62", "reply_to": "664c", "group_index": 0}, "subtask_type": null, "immutable": false}, {"task": "tasks.add", "args": [2], "kwargs": {}, "options": {"task_id": "b3e9", "reply_to": "664c", "group_index": 1}, "subtask_type": null, "immutable": false}]}, "options": {"task_id": "59e0", "root_id": null, "parent_id": null}, "subtask_type": "group", "immutable": false}, "body": {"task": "tasks.xsum", "args": [], "kwargs": {}, "options": {"task_id": "662c", "reply_to": "664c"}, "subtask_type": null, "immutable": false}}, "options": {"task_id": "59e0"}, "subtask_type": "chord", "immutable": false}"#;
        let sig: Signature = serde_json::from_str(text).unwrap();
        let Canvas::Chord {
            header,
            header_options,
            body,
        } = sig.canvas().unwrap()
        else {
            panic!("not a chord");
        };
        assert_eq!(header.len(), 2);
        assert_eq!(header[1].option("task_id"), Some(&json!("b3e9")));
        assert_eq!(header_options["task_id"], json!("59e0"));
        assert_eq!(body.task, "tasks.xsum");

        // The parent's result goes to every header member.
        let with = sig.with_parent_args(&[json!(2)]);
        let Canvas::Chord { header, body, .. } = with.canvas().unwrap() else {
            panic!("not a chord");
        };
        assert_eq!(header[0].args, vec![json!(2), json!(1)]);
        assert_eq!(header[1].args, vec![json!(2), json!(2)]);
        assert!(body.args.is_empty());
    }

    #[test]
    fn builds_celerys_dicts() {
        let add = |a: i64| Signature::new("tasks.add").args(vec![json!(a)]);
        let chain = Signature::chain([add(1), add(2)]);
        let v = serde_json::to_value(&chain).unwrap();
        assert_eq!(v["task"], "celery.chain");
        assert_eq!(v["subtask_type"], "chain");
        assert_eq!(v["kwargs"]["tasks"][1]["args"], json!([2]));
        assert_eq!(chain.canvas().unwrap(), Canvas::Chain(vec![add(1), add(2)]));

        let chord = Signature::chord(
            Signature::group([add(1), add(2)]),
            Signature::new("tasks.xsum"),
        );
        let v = serde_json::to_value(&chord).unwrap();
        assert_eq!(v["kwargs"]["header"]["subtask_type"], "group");
        assert_eq!(v["kwargs"]["body"]["task"], "tasks.xsum");

        // A chord header given as one task is a group of one.
        let one = Signature::chord(add(1), Signature::new("tasks.xsum"));
        let Canvas::Chord { header, .. } = one.canvas().unwrap() else {
            panic!()
        };
        assert_eq!(header, vec![add(1)]);

        let chunks = Signature::chunks(Signature::new("tasks.add"), vec![json!([1, 1]); 5], 2);
        assert_eq!(
            chunks.canvas().unwrap(),
            Canvas::Chunks {
                task: Box::new(Signature::new("tasks.add")),
                items: vec![json!([1, 1]); 5],
                size: 2
            }
        );
        let map = Signature::xmap(Signature::new("tasks.sq"), [json!(1), json!(2)]);
        assert_eq!(map.task, "celery.map");
        assert_eq!(map.canvas().unwrap(), Canvas::Task);
    }

    #[test]
    fn parent_args_follow_celerys_clone_rule() {
        let s = Signature::new("tasks.add").args(vec![json!(3)]);
        assert_eq!(
            s.clone().with_parent_args(&[json!(2)]).args,
            vec![json!(2), json!(3)]
        );
        let si = s.clone().set_immutable(true);
        assert_eq!(si.with_parent_args(&[json!(2)]).args, vec![json!(3)]);
        // A chain: only the first step; a group: every member.
        let chain = Signature::chain([s.clone(), s.clone()]).with_parent_args(&[json!(1)]);
        let Canvas::Chain(steps) = chain.canvas().unwrap() else {
            panic!()
        };
        assert_eq!((steps[0].args.len(), steps[1].args.len()), (2, 1));
        let group = Signature::group([s.clone(), s]).with_parent_args(&[json!(1)]);
        let Canvas::Group(members) = group.canvas().unwrap() else {
            panic!()
        };
        assert!(members.iter().all(|m| m.args.len() == 2));
    }

    #[test]
    fn malformed_canvases_are_errors() {
        let mut bad = Signature::new("celery.chord");
        bad.subtask_type = Some("chord".into());
        assert!(bad
            .canvas()
            .unwrap_err()
            .to_string()
            .contains("no `header`"));
        let mut bad = Signature::new("celery.group");
        bad.subtask_type = Some("group".into());
        bad.kwargs.insert("tasks".into(), json!("nope"));
        assert!(bad.canvas().is_err());
    }
}
