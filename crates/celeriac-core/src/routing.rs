//! Routing: which queue (exchange, routing key, priority) a task name goes to, as Celery's
//! `task_routes` does, with the signature's own `queue`/`exchange`/`routing_key`/`priority`
//! options taking precedence.
//!
//! Patterns are exact names or globs with `*` (`"images.*"`), tried in the order they were
//! added; the first match wins and anything unmatched goes to the default queue (`celery`).

use std::borrow::Cow;

use serde_json::Value;

use crate::signature::Signature;

/// Where one message goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The queue name.
    pub queue: String,
    /// Exchange; empty means the default exchange, which routes by queue name.
    pub exchange: String,
    /// Routing key; for the default exchange, the queue name.
    pub routing_key: String,
    /// Priority given by the route, if any.
    pub priority: Option<u8>,
}

impl Route {
    /// A route straight to `queue` through the default exchange.
    pub fn queue(queue: impl Into<String>) -> Self {
        let queue = queue.into();
        Self {
            routing_key: queue.clone(),
            queue,
            exchange: String::new(),
            priority: None,
        }
    }
}

/// Maps task names to routes.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<(String, Route)>,
    /// The route to the default queue, made once (routing happens for every message).
    default: Route,
}

impl Default for Router {
    fn default() -> Self {
        Self::new("celery")
    }
}

impl Router {
    /// A router that sends everything to `default_queue` until rules are added.
    pub fn new(default_queue: impl Into<String>) -> Self {
        Self {
            rules: Vec::new(),
            default: Route::queue(default_queue),
        }
    }

    /// Sends tasks whose name matches `pattern` (exact, or a glob with `*`) to `queue`.
    pub fn add(&mut self, pattern: impl Into<String>, route: Route) {
        self.rules.push((pattern.into(), route));
    }

    /// The queue used when nothing else matches.
    pub fn default_queue(&self) -> &str {
        &self.default.queue
    }

    /// The configured route for a task name.
    ///
    /// ```
    /// use celeriac_core::routing::{Route, Router};
    /// let mut r = Router::new("celery");
    /// r.add("images.*", Route::queue("images"));
    /// assert_eq!(r.route_name("images.resize").queue, "images");
    /// assert_eq!(r.route_name("tasks.add").queue, "celery");
    /// ```
    pub fn route_name(&self, task: &str) -> Cow<'_, Route> {
        Cow::Borrowed(
            self.rules
                .iter()
                .find(|(pattern, _)| glob_match(pattern, task))
                .map_or(&self.default, |(_, route)| route),
        )
    }

    /// The route for a signature: its own options first, then the rules.
    ///
    /// Borrowed from the rules when the signature sets none of `queue`, `exchange`,
    /// `routing_key` and `priority` (the common case: no copy per message).
    pub fn route(&self, sig: &Signature) -> Cow<'_, Route> {
        let queue = sig.option("queue").and_then(queue_name);
        let mut route = match queue {
            Some(q) => Cow::Owned(Route::queue(q)),
            None => self.route_name(&sig.task),
        };
        if let Some(Value::String(ex)) = sig.option("exchange") {
            route.to_mut().exchange = ex.clone();
        }
        if let Some(Value::String(rk)) = sig.option("routing_key") {
            route.to_mut().routing_key = rk.clone();
        }
        if let Some(p) = sig.option("priority").and_then(Value::as_f64) {
            route.to_mut().priority = Some(p.clamp(0.0, 255.0) as u8);
        }
        route
    }
}

/// Celery accepts `queue` as a name or a `{"name": ...}` dict (a serialized kombu Queue).
fn queue_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(m) => m.get("name").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `*` matches any run of characters (including dots), as in Celery's glob routes.
fn glob_match(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == name;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("a.*", "a.b"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abde"));
        assert!(!glob_match("a.*", "b.a"));
        assert!(glob_match("*.add", "tasks.add"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn options_override_rules() {
        let mut r = Router::new("celery");
        r.add("tasks.resize", Route::queue("images"));
        let sig = Signature::new("tasks.resize");
        assert_eq!(r.route(&sig).queue, "images");
        let sig = sig.queue("q2").priority(3);
        let route = r.route(&sig);
        assert_eq!(
            (
                route.queue.as_str(),
                route.routing_key.as_str(),
                route.priority
            ),
            ("q2", "q2", Some(3))
        );
    }
}
