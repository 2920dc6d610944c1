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

/// How an exchange matches a message's routing key to the binding keys of its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExchangeType {
    /// The routing key must equal the binding key (Celery's default).
    #[default]
    Direct,
    /// Dotted words; in a binding key `*` matches one word and `#` zero or more
    /// (`images.*`, `*.jpg`, `#`).
    Topic,
    /// Every bound queue gets a copy, whatever the routing key.
    Fanout,
    /// Matched on the message's headers against the binding's arguments (`x-match`: `all`
    /// or `any`), the routing key ignored. RabbitMQ only: kombu's virtual transports
    /// (Redis) have no headers exchanges, nor do the embedded engines.
    Headers,
}

impl ExchangeType {
    /// The AMQP name: `direct`, `topic`, `fanout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }

    /// Reads an AMQP exchange type name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(ExchangeType::Direct),
            "topic" => Some(ExchangeType::Topic),
            "fanout" => Some(ExchangeType::Fanout),
            "headers" => Some(ExchangeType::Headers),
            _ => None,
        }
    }

    /// Whether a message published with `routing_key` goes to a queue bound with
    /// `binding_key`, by this exchange type's rule (never, for a headers exchange, which
    /// does not look at routing keys).
    ///
    /// ```
    /// use celeriac_core::routing::ExchangeType::*;
    /// assert!(Direct.matches("images", "images"));
    /// assert!(Topic.matches("images.*", "images.resize"));
    /// assert!(!Topic.matches("images.*", "images.resize.big"));
    /// assert!(Topic.matches("images.#", "images.resize.big"));
    /// assert!(Topic.matches("#", "anything.at.all"));
    /// assert!(Fanout.matches("", "whatever"));
    /// ```
    pub fn matches(self, binding_key: &str, routing_key: &str) -> bool {
        match self {
            ExchangeType::Direct => binding_key == routing_key,
            ExchangeType::Fanout => true,
            ExchangeType::Headers => false,
            ExchangeType::Topic => {
                let pattern: Vec<&str> = binding_key.split('.').collect();
                let words: Vec<&str> = if routing_key.is_empty() {
                    Vec::new()
                } else {
                    routing_key.split('.').collect()
                };
                topic_match(&pattern, &words)
            }
        }
    }
}

/// AMQP topic matching, word by word (`*` one word, `#` zero or more).
fn topic_match(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => (0..=words.len()).any(|skip| topic_match(rest, &words[skip..])),
        Some((&p, rest)) => match words.split_first() {
            Some((w, more)) if p == "*" || p == *w => topic_match(rest, more),
            _ => false,
        },
    }
}

/// A queue as Celery's `task_queues` declares it — kombu's
/// `Queue(name, Exchange(exchange, type=…), routing_key=…)`: the queue, the exchange it is
/// bound to, and the binding key.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// The queue name (what workers consume with `-Q`).
    pub name: String,
    /// The exchange the queue is bound to.
    pub exchange: String,
    /// The exchange's type.
    pub exchange_type: ExchangeType,
    /// The binding key (for a topic exchange, a pattern such as `images.#`).
    pub routing_key: String,
    /// The binding's arguments: for a headers exchange, `x-match` (`all` or `any`) and
    /// the header values to match.
    pub binding_arguments: serde_json::Map<String, Value>,
}

impl QueueSpec {
    /// Celery's default for a queue name: a direct exchange and a binding key of the same
    /// name (what `task_create_missing_queues` makes of a `-Q` name).
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            exchange: name.clone(),
            routing_key: name.clone(),
            exchange_type: ExchangeType::Direct,
            binding_arguments: serde_json::Map::new(),
            name,
        }
    }

    /// With binding arguments `args` (for a headers exchange: `{"x-match": "all",
    /// "kind": "image"}`).
    pub fn binding_arguments(mut self, args: serde_json::Map<String, Value>) -> Self {
        self.binding_arguments = args;
        self
    }

    /// Bound to exchange `name` of type `kind` instead.
    pub fn exchange(mut self, name: impl Into<String>, kind: ExchangeType) -> Self {
        self.exchange = name.into();
        self.exchange_type = kind;
        self
    }

    /// With binding key `key` instead.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = key.into();
        self
    }

    /// Whether this is Celery's default shape: a direct exchange and a binding key both
    /// named as the queue.
    pub fn is_default(&self) -> bool {
        self.exchange_type == ExchangeType::Direct
            && self.exchange == self.name
            && self.routing_key == self.name
    }
}

/// Maps task names to routes.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<(String, Route)>,
    /// Queues declared with their exchange (Celery's `task_queues`), by name.
    queues: Vec<QueueSpec>,
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
            queues: Vec::new(),
            default: Route::queue(default_queue),
        }
    }

    /// Sends tasks whose name matches `pattern` (exact, or a glob with `*`) to `queue`.
    pub fn add(&mut self, pattern: impl Into<String>, route: Route) {
        self.rules.push((pattern.into(), route));
    }

    /// Declares a queue with its exchange and binding key (Celery's `task_queues`): tasks
    /// routed to it go through its exchange, and workers consuming it declare it so.
    pub fn add_queue(&mut self, spec: QueueSpec) {
        self.queues.retain(|q| q.name != spec.name);
        self.queues.push(spec);
    }

    /// How queue `name` is declared: as configured, else Celery's default shape.
    pub fn queue_spec(&self, name: &str) -> QueueSpec {
        self.queues
            .iter()
            .find(|q| q.name == name)
            .cloned()
            .unwrap_or_else(|| QueueSpec::new(name))
    }

    /// The queues configured with [`Router::add_queue`].
    pub fn queue_specs(&self) -> &[QueueSpec] {
        &self.queues
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
        // A queue declared with an exchange other than its own direct one is reached
        // through that exchange (Celery's `send_task_message`): its name, and its binding
        // key unless a routing key was given.
        if route.exchange.is_empty() {
            if let Some(spec) = self.queues.iter().find(|q| q.name == route.queue) {
                if !spec.is_default() {
                    let given_key = route.routing_key != route.queue;
                    let r = route.to_mut();
                    r.exchange = spec.exchange.clone();
                    if !given_key {
                        r.routing_key = spec.routing_key.clone();
                    }
                }
            }
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
    fn topic_keys() {
        use ExchangeType::Topic;
        assert!(Topic.matches("*.images", "large.images"));
        assert!(!Topic.matches("*.images", "images"));
        assert!(Topic.matches("#.images", "images"));
        assert!(Topic.matches("a.#.z", "a.b.c.z"));
        assert!(Topic.matches("a.#.z", "a.z"));
        assert!(!Topic.matches("a.#.z", "a.b.c"));
        assert!(Topic.matches("#", ""));
        assert!(!Topic.matches("a", ""));
    }

    #[test]
    fn queues_with_their_own_exchange_are_reached_through_it() {
        let mut r = Router::new("celery");
        r.add_queue(
            QueueSpec::new("images")
                .exchange("media", ExchangeType::Topic)
                .routing_key("images.#"),
        );
        r.add("tasks.resize", Route::queue("images"));
        let route = r.route(&Signature::new("tasks.resize"));
        assert_eq!(
            (route.exchange.as_str(), route.routing_key.as_str()),
            ("media", "images.#")
        );
        let route = r.route(
            &Signature::new("tasks.resize")
                .set_option("routing_key", serde_json::json!("images.png")),
        );
        assert_eq!(
            (route.exchange.as_str(), route.routing_key.as_str()),
            ("media", "images.png")
        );
        // A queue of Celery's default shape keeps the default exchange.
        r.add_queue(QueueSpec::new("plain"));
        let route = r.route(&Signature::new("x").queue("plain"));
        assert_eq!(
            (route.exchange.as_str(), route.routing_key.as_str()),
            ("", "plain")
        );
    }

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
