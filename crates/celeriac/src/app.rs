//! [`App`]: the task registry, broker, result backend, routes and configuration that
//! clients send through and workers run from. Cheap to clone (one `Arc`).
//!
//! The app is what every other part is built on, so it depends on none of them: its
//! sending methods (`send_task`, `send_many`, `apply_async` through the `Apply` trait) are
//! defined with the rest of sending in the `producer` module, [`App::worker`] beside the
//! worker builder (`worker/builder.rs`) and [`App::control`] in [`control`](crate::control).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::routing::{QueueSpec, Route, Router};
use celeriac_core::url::mask;
use celeriac_core::{Broker, ResultBackend};

use crate::engines;
use crate::error::Error;
use crate::result::AsyncResult;
use crate::task::Task;

/// Application-wide settings, with Celery's names and defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Queue for tasks no route matches (`task_default_queue`, "celery").
    pub default_queue: String,
    /// Run tasks inline in `apply_async` instead of sending them (`task_always_eager`).
    pub always_eager: bool,
    /// Acknowledge after the task finishes, for tasks that do not say (`task_acks_late`).
    pub acks_late: bool,
    /// Store STARTED when tasks begin, for tasks that do not say (`task_track_started`).
    pub track_started: bool,
    /// How long results are kept (`result_expires`, 1 day); `None` keeps them forever.
    pub result_expires: Option<Duration>,
    /// Store task name, args, kwargs, worker, retries and queue with results (`result_extended`).
    pub result_extended: bool,
    /// Prefetch per unit of concurrency (`worker_prefetch_multiplier`, 4).
    pub prefetch_multiplier: usize,
    /// How long a publish keeps retrying while the broker is unreachable (Celery's
    /// `task_publish_retry`), with back-off; `None` fails at once. Default 15 s, long
    /// enough to ride out a broker restart.
    pub publish_retry: Option<Duration>,
    /// Workers send task events (`worker_send_task_events`, `-E`); also turned on by
    /// `CELERY_WORKER_SEND_TASK_EVENTS=true` (or `CELERIAC_…`). Worker events
    /// (online, heartbeat, offline) are sent regardless.
    pub task_events: bool,
    /// Clients send a `task-sent` event for every task (`task_send_sent_event`); also
    /// turned on by `CELERY_TASK_SEND_SENT_EVENT=true` (or `CELERIAC_…`).
    pub send_sent_event: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_queue: "celery".into(),
            always_eager: false,
            acks_late: false,
            track_started: false,
            result_expires: Some(Duration::from_secs(86_400)),
            result_extended: false,
            prefetch_multiplier: 4,
            publish_retry: Some(Duration::from_secs(15)),
            task_events: env_flag("WORKER_SEND_TASK_EVENTS"),
            send_sent_event: env_flag("TASK_SEND_SENT_EVENT"),
        }
    }
}

/// Whether `CELERIAC_<name>` or `CELERY_<name>` is set to a true value (`1`, `true`,
/// `yes`, `on`), as Celery reads boolean settings from the environment.
fn env_flag(name: &str) -> bool {
    [format!("CELERIAC_{name}"), format!("CELERY_{name}")]
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .any(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
}

/// A celeriac application: where tasks are registered and sent.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), celeriac::Error> {
/// use std::time::Duration;
///
/// #[celeriac::task(name = "tasks.add")]
/// async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
///
/// let app = celeriac::App::builder()
///     .broker_url("memory://app-doc")
///     .task(add)
///     .always_eager(true)          // run inline: handy in unit tests
///     .build()
///     .await?;
/// let r = add::new(2, 3).apply_async(&app).await?;
/// assert_eq!(r.get::<i64>(Duration::from_secs(1)).await?, 5);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<dyn Broker>,
    backend: Option<Arc<dyn ResultBackend>>,
    broker_url: String,
    backend_url: String,
    /// The URLs as resolved, credentials included (handed to prefork children only).
    connect_urls: (String, String),
    tasks: HashMap<String, Arc<dyn Task>>,
    router: Router,
    config: Config,
    origin: String,
    reply_to: String,
    /// Set once the configured queues ([`AppBuilder::queue`]) are declared on the broker,
    /// before the first publish (as Celery's client declares a queue before sending).
    queues_declared: tokio::sync::OnceCell<()>,
    /// The Lamport clock of events and remote control.
    clock: Arc<crate::events::Clock>,
    /// The client's event sender (`task-sent`), made on first use.
    events: std::sync::OnceLock<Arc<crate::events::dispatcher::Dispatcher>>,
    /// Beat entries registered on the builder.
    periodic: Periodic,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("broker", &self.inner.broker_url)
            .field("backend", &self.inner.backend_url)
            .field("tasks", &self.task_names())
            .finish_non_exhaustive()
    }
}

/// Builds an [`App`]. URLs not given here come from `CELERIAC_BROKER_URL` /
/// `CELERIAC_RESULT_BACKEND`, then Celery's `CELERY_BROKER_URL` / `CELERY_RESULT_BACKEND`,
/// then the defaults (broker `sqlite://celeriac.sqlite` with the `sqlite` feature, else
/// `memory://`; backend: the broker's engine when it stores results).
#[derive(Default)]
pub struct AppBuilder {
    broker_url: Option<String>,
    backend_url: Option<String>,
    tasks: Vec<Arc<dyn Task>>,
    routes: Vec<(String, Route)>,
    queues: Vec<QueueSpec>,
    config: Config,
    periodic: Periodic,
}

/// Beat entries registered on the builder, and the errors of those that could not be.
pub(crate) type Periodic = (Vec<crate::beat::Entry>, Vec<String>);

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("broker_url", &self.broker_url.as_deref().map(mask))
            .field("backend_url", &self.backend_url.as_deref().map(mask))
            .field(
                "tasks",
                &self.tasks.iter().map(|t| t.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn env_url(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .find(|v| !v.trim().is_empty())
}

impl AppBuilder {
    /// The broker URL: `sqlite://FILE`, `memory://[NAME]`, `redis://…` (each engine behind
    /// its cargo feature; see [`engines`]).
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker_url = Some(url.into());
        self
    }

    /// The result backend URL; `disabled://` stores no results.
    pub fn result_backend_url(mut self, url: impl Into<String>) -> Self {
        self.backend_url = Some(url.into());
        self
    }

    /// Registers a task.
    pub fn task(mut self, task: impl Task) -> Self {
        self.tasks.push(Arc::new(task));
        self
    }

    /// Registers a periodic task for beat (`myapp beat`, `myapp worker -B`,
    /// [`App::beat`]): `signature` sent on `schedule`, e.g.
    /// `.periodic("add-every-10s", add::new(1, 2), celeriac::beat::every(10))`. A bad
    /// schedule is reported when the beat is built, naming the entry.
    pub fn periodic(
        mut self,
        name: impl Into<String>,
        signature: crate::Signature,
        schedule: impl crate::beat::IntoSchedule,
    ) -> Self {
        match crate::beat::entry_of(name.into(), signature, schedule) {
            Ok(e) => self.periodic.0.push(e),
            Err(e) => self.periodic.1.push(e),
        }
        self
    }

    /// Registers a periodic task built with [`Entry::new`](crate::beat::Entry::new) (to set
    /// `expires` or `catch_up`).
    pub fn periodic_entry(mut self, entry: crate::beat::Entry) -> Self {
        self.periodic.0.push(entry);
        self
    }

    /// Routes tasks matching `pattern` (a name, or a glob like `images.*`) to `queue`.
    pub fn route(mut self, pattern: impl Into<String>, queue: impl Into<String>) -> Self {
        self.routes.push((pattern.into(), Route::queue(queue)));
        self
    }

    /// Declares a queue with its exchange and binding key — an entry of Celery's
    /// `task_queues`, e.g. `QueueSpec::new("images").exchange("media",
    /// ExchangeType::Topic).routing_key("images.#")`. Tasks routed to it go through its
    /// exchange; workers consuming it (`-Q images`) and clients sending to it declare it
    /// so. Queues not declared here get Celery's default shape (a direct exchange and a
    /// binding key of their own name).
    pub fn queue(mut self, spec: QueueSpec) -> Self {
        self.queues.push(spec);
        self
    }

    /// Routes tasks matching `pattern` with a full route (exchange, routing key, priority).
    pub fn route_to(mut self, pattern: impl Into<String>, route: Route) -> Self {
        self.routes.push((pattern.into(), route));
        self
    }

    /// The queue for unrouted tasks (default `celery`).
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.config.default_queue = queue.into();
        self
    }

    /// Runs tasks inline instead of sending them.
    pub fn always_eager(mut self, on: bool) -> Self {
        self.config.always_eager = on;
        self
    }

    /// Acknowledges after tasks finish, for tasks that do not set `acks_late`.
    pub fn acks_late(mut self, on: bool) -> Self {
        self.config.acks_late = on;
        self
    }

    /// Stores STARTED when tasks begin.
    pub fn track_started(mut self, on: bool) -> Self {
        self.config.track_started = on;
        self
    }

    /// How long results are kept; `None` keeps them forever.
    pub fn result_expires(mut self, ttl: Option<Duration>) -> Self {
        self.config.result_expires = ttl;
        self
    }

    /// Stores name, args, kwargs, worker, retries and queue with each result.
    pub fn result_extended(mut self, on: bool) -> Self {
        self.config.result_extended = on;
        self
    }

    /// Prefetch per unit of worker concurrency (default 4).
    pub fn prefetch_multiplier(mut self, n: usize) -> Self {
        self.config.prefetch_multiplier = n;
        self
    }

    /// How long publishes retry while the broker is unreachable; `None` fails at once.
    pub fn publish_retry(mut self, limit: Option<Duration>) -> Self {
        self.config.publish_retry = limit;
        self
    }

    /// Workers of this app send task events (Celery's `-E`, `worker_send_task_events`):
    /// what Flower and `celery events` show of each task.
    pub fn task_events(mut self, on: bool) -> Self {
        self.config.task_events = on;
        self
    }

    /// Send a `task-sent` event for every task sent (Celery's `task_send_sent_event`).
    pub fn send_sent_event(mut self, on: bool) -> Self {
        self.config.send_sent_event = on;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Whether no broker URL was given, in code or the environment (the default is used).
    pub fn broker_is_default(&self) -> bool {
        self.broker_url.is_none()
            && env_url(&["CELERIAC_BROKER_URL", "CELERY_BROKER_URL"]).is_none()
    }

    /// The broker URL this builder will use (explicit, environment, or default).
    pub fn resolved_broker_url(&self) -> String {
        self.broker_url
            .clone()
            .or_else(|| env_url(&["CELERIAC_BROKER_URL", "CELERY_BROKER_URL"]))
            .unwrap_or_else(|| engines::DEFAULT_BROKER_URL.to_string())
    }

    /// The backend URL this builder will use.
    pub fn resolved_backend_url(&self) -> String {
        self.backend_url
            .clone()
            .or_else(|| env_url(&["CELERIAC_RESULT_BACKEND", "CELERY_RESULT_BACKEND"]))
            .unwrap_or_else(|| engines::default_backend_for(&self.resolved_broker_url()))
    }

    /// Connects the broker and backend and builds the app.
    pub async fn build(self) -> Result<App, Error> {
        let broker_url = self.resolved_broker_url();
        let backend_url = self.resolved_backend_url();
        let broker = engines::connect_broker(&broker_url).await?;
        let reply_to = uuid::Uuid::new_v4().to_string();
        let backend = engines::connect_backend(&backend_url, &broker_url, &reply_to).await?;
        let mut tasks = HashMap::new();
        for t in self.tasks {
            if tasks.insert(t.name().to_string(), t.clone()).is_some() {
                return Err(Error::Config(format!(
                    "task `{}` is registered twice",
                    t.name()
                )));
            }
        }
        for t in crate::builtins::all() {
            tasks.entry(t.name().to_string()).or_insert(t);
        }
        let mut router = Router::new(self.config.default_queue.clone());
        for (pattern, route) in self.routes {
            router.add(pattern, route);
        }
        for spec in self.queues {
            router.add_queue(spec);
        }
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        Ok(App {
            inner: Arc::new(Inner {
                broker_url: broker.url(),
                backend_url: backend
                    .as_ref()
                    .map_or_else(|| "disabled://".to_string(), |b| b.url()),
                connect_urls: (broker_url, backend_url),
                broker,
                backend,
                tasks,
                router,
                config: self.config,
                origin: format!("gen{}@{}", std::process::id(), host),
                reply_to,
                queues_declared: tokio::sync::OnceCell::new(),
                clock: Arc::default(),
                events: std::sync::OnceLock::new(),
                periodic: self.periodic,
            }),
        })
    }
}

#[cfg(test)]
impl App {
    /// The same app on another broker, for tests of how the worker meets a broker's
    /// failures.
    pub(crate) fn on_broker(&self, broker: Arc<dyn Broker>) -> App {
        let i = &self.inner;
        App {
            inner: Arc::new(Inner {
                broker,
                backend: i.backend.clone(),
                broker_url: i.broker_url.clone(),
                backend_url: i.backend_url.clone(),
                connect_urls: i.connect_urls.clone(),
                tasks: i.tasks.clone(),
                router: i.router.clone(),
                config: i.config.clone(),
                origin: i.origin.clone(),
                reply_to: i.reply_to.clone(),
                queues_declared: tokio::sync::OnceCell::new(),
                clock: i.clock.clone(),
                events: std::sync::OnceLock::new(),
                periodic: i.periodic.clone(),
            }),
        }
    }
}

impl App {
    /// Starts building an app.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The broker and backend URLs this app was built with, unmasked: what a prefork child
    /// must connect to.
    pub(crate) fn connect_urls(&self) -> &(String, String) {
        &self.inner.connect_urls
    }

    /// Beat entries registered on the builder, and those that could not be.
    pub(crate) fn periodic(&self) -> &Periodic {
        &self.inner.periodic
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The result backend, if results are enabled.
    pub fn backend(&self) -> Option<&Arc<dyn ResultBackend>> {
        self.inner.backend.as_ref()
    }

    /// The broker URL, credentials masked.
    pub fn broker_url(&self) -> &str {
        &self.inner.broker_url
    }

    /// The backend URL, credentials masked.
    pub fn backend_url(&self) -> &str {
        &self.inner.backend_url
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// Declares the configured queues ([`AppBuilder::queue`]) on the broker, once; the
    /// producer calls this before its first publish.
    pub(crate) async fn declare_queues(&self) -> Result<(), Error> {
        self.inner
            .queues_declared
            .get_or_try_init(|| async {
                for spec in self.inner.router.queue_specs() {
                    self.inner.broker.declare(spec).await?;
                }
                Ok::<(), Error>(())
            })
            .await
            .map(|_| ())
    }

    /// A registered task by name.
    pub fn task(&self, name: &str) -> Option<&Arc<dyn Task>> {
        self.inner.tasks.get(name)
    }

    /// Registered task names, sorted.
    pub fn task_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.inner.tasks.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// This process's reply-to id (its "oid"): where replies to it are routed.
    pub fn reply_to(&self) -> &str {
        &self.inner.reply_to
    }

    /// This process's node name for messages it sends (`gen<pid>@<host>`).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The Lamport clock this app stamps on events and remote-control messages.
    pub fn clock(&self) -> &Arc<crate::events::Clock> {
        &self.inner.clock
    }

    /// The client's event sender (for `task-sent`), under the [`origin`](Self::origin)
    /// node name.
    pub(crate) fn client_events(&self) -> &Arc<crate::events::dispatcher::Dispatcher> {
        self.inner.events.get_or_init(|| {
            crate::events::dispatcher::Dispatcher::new(
                self.inner.broker.clone(),
                self.inner.origin.as_str().into(),
                self.inner.clock.clone(),
                false,
            )
        })
    }

    /// A handle to the result of task `id`.
    pub fn async_result(&self, id: impl Into<String>) -> AsyncResult {
        AsyncResult::new(id.into(), self)
    }
}
