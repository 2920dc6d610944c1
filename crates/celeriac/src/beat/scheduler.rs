//! The beat process: it holds the schedule's leader lease in the engine, and while it
//! leads, sleeps until the next due run, sends it and records it in one atomic step
//! ([`Broker::beat_send`]). Any number of beat processes may run the same schedule; the
//! ones that do not lead try for the lease every `lease / 5` and take over within one lease
//! period of the leader's death.
//!
//! Due times come from the schedule alone and the last recorded run, so a new leader
//! sends the run after the old leader's last one, never one it sent; a paused leader that
//! wakes after losing its lease finds its token stale and sends nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::beat::{BeatRun, BeatSent};
use celeriac_core::error::BrokerError;
use celeriac_core::{Broker, Signature};

use super::file::Entry;
use super::schedule::{coming, due_runs, next_due, CatchUp, Schedule, ScheduleError};
use crate::app::App;
use crate::error::Error;

/// The lease period by default: a dead leader is replaced within it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// The schedule name by default: beat processes of one app share it.
pub const DEFAULT_SCHEDULE: &str = "default";

/// The header Celery's beat sets on every message it sends (`celery_beat_task: true`).
pub const BEAT_TASK_HEADER: &str = "celery_beat_task";
/// celeriac's header naming the entry a run belongs to.
pub const ENTRY_HEADER: &str = "beat_entry";
/// celeriac's header with the run's due time (RFC 3339): the run's identity.
pub const DUE_HEADER: &str = "beat_due";

/// The first pause after a failed send, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A run counts as missed (for [`CatchUp::Skip`]) when due this long before it is sent.
const GRACE: Duration = Duration::from_secs(1);

/// The time source: the wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

impl Entry {
    /// An entry from code: `signature` sent on `schedule`, expiring after one period,
    /// missed runs caught up once.
    pub fn new(name: impl Into<String>, signature: Signature, schedule: Schedule) -> Self {
        Self {
            name: name.into(),
            schedule,
            signature,
            expires: None,
            catch_up: CatchUp::default(),
        }
    }

    /// How long a sent run stays valid (default: one period).
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = Some(after);
        self
    }

    /// What becomes of runs missed while no beat ran (default: sent once).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }
}

/// A schedule as `entry` takes it: a [`Schedule`], or the `Result` of [`every`],
/// [`cron`], [`cron_in`](Schedule::cron_in) (an error is reported by `build`, naming the
/// entry).
pub trait IntoSchedule {
    /// The schedule, or why it cannot be one.
    fn into_schedule(self) -> Result<Schedule, ScheduleError>;
}

/// An entry from code, or the one-line error naming it: what `AppBuilder::periodic` and
/// `BeatBuilder::entry` take.
pub(crate) fn entry_of(
    name: String,
    signature: Signature,
    schedule: impl IntoSchedule,
) -> Result<Entry, String> {
    schedule
        .into_schedule()
        .map(|s| Entry::new(name.as_str(), signature, s))
        .map_err(|e| format!("beat entry `{name}`: {e}"))
}

impl IntoSchedule for Schedule {
    fn into_schedule(self) -> Result<Schedule, ScheduleError> {
        Ok(self)
    }
}

impl IntoSchedule for Result<Schedule, ScheduleError> {
    fn into_schedule(self) -> Result<Schedule, ScheduleError> {
        self
    }
}

/// Every `secs` seconds (fractions allowed).
pub fn every(secs: impl Into<f64>) -> Result<Schedule, ScheduleError> {
    Schedule::every(secs.into())
}

/// A five-field crontab in UTC (`"*/15 * * * *"`); [`Schedule::cron_in`] for a timezone.
pub fn cron(expr: &str) -> Result<Schedule, ScheduleError> {
    Schedule::cron(expr)
}

/// Builds a [`Beat`]: `app.beat().entry("add-every-10s", add::new(1, 2), every(10))`.
#[must_use]
pub struct BeatBuilder {
    app: App,
    entries: Vec<Entry>,
    errors: Vec<String>,
    schedule: String,
    holder: Option<String>,
    lease: Duration,
    store: Option<Arc<dyn Broker>>,
    clock: Option<Clock>,
}

impl std::fmt::Debug for BeatBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeatBuilder")
            .field("entries", &self.entries)
            .field("schedule", &self.schedule)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl App {
    /// A beat for this app, with the entries registered on its builder
    /// ([`AppBuilder::periodic`](crate::AppBuilder::periodic)).
    pub fn beat(&self) -> BeatBuilder {
        let (entries, errors) = self.periodic().clone();
        BeatBuilder {
            app: self.clone(),
            entries,
            errors,
            schedule: DEFAULT_SCHEDULE.into(),
            holder: None,
            lease: DEFAULT_LEASE,
            store: None,
            clock: None,
        }
    }
}

impl BeatBuilder {
    /// Adds an entry: `signature` sent on `schedule`.
    pub fn entry(
        mut self,
        name: impl Into<String>,
        signature: Signature,
        schedule: impl IntoSchedule,
    ) -> Self {
        match entry_of(name.into(), signature, schedule) {
            Ok(e) => self.entries.push(e),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// Adds entries as they are (from a schedule file, or built with [`Entry::new`]).
    pub fn entries(mut self, entries: impl IntoIterator<Item = Entry>) -> Self {
        self.entries.extend(entries);
        self
    }

    /// The schedule's name (default `default`): beat processes with the same name on the
    /// same engine take turns; different names are independent schedules.
    pub fn schedule_name(mut self, name: impl Into<String>) -> Self {
        self.schedule = name.into();
        self
    }

    /// This process's name in the lease (default `beat-gen<pid>@<host>-<random>`).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// The lease period (default 5 s): a dead leader is replaced within it; the leader
    /// renews every third of it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Where the lease and the runs are kept, when not on the app's broker (a RabbitMQ
    /// broker cannot hold them: by default its result backend's engine is used).
    pub fn store(mut self, store: Arc<dyn Broker>) -> Self {
        self.store = Some(store);
        self
    }

    /// The clock due times are read from (default: the system clock); for tests.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the entries (names unique, schedules valid) and builds the beat.
    pub fn build(self) -> Result<Beat, Error> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(Error::Config(e));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            if !seen.insert(e.name.as_str()) {
                return Err(Error::Config(format!(
                    "beat entry `{}` is given twice",
                    e.name
                )));
            }
            if let Some(err) = &e.signature.encode_error {
                return Err(Error::Config(format!("beat entry `{}`: {err}", e.name)));
            }
        }
        if self.entries.is_empty() {
            return Err(Error::Config(
                "beat has no entries: register some with AppBuilder::periodic, BeatBuilder::entry or a schedule file".into(),
            ));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "beat lease {:?} is too short (at least 0.1 s)",
                self.lease
            )));
        }
        let holder = self.holder.unwrap_or_else(|| {
            format!(
                "beat-{}-{}",
                self.app.origin(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        Ok(Beat {
            app: self.app,
            entries: self.entries,
            schedule: self.schedule,
            holder,
            lease: self.lease,
            store: self.store,
            clock: self.clock.unwrap_or_else(|| Arc::new(Utc::now)),
        })
    }
}

/// A beat process's schedule, ready to run. See the module docs.
pub struct Beat {
    app: App,
    entries: Vec<Entry>,
    schedule: String,
    holder: String,
    lease: Duration,
    store: Option<Arc<dyn Broker>>,
    clock: Clock,
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beat")
            .field("schedule", &self.schedule)
            .field("holder", &self.holder)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// One entry's last and next run, for `--dry-run` and the start-up log.
#[derive(Debug, Clone, PartialEq)]
pub struct Upcoming {
    /// The entry's name.
    pub name: String,
    /// Its task.
    pub task: String,
    /// Its schedule, as text.
    pub schedule: String,
    /// The last run recorded in the engine.
    pub last: Option<DateTime<Utc>>,
    /// The next due times (up to the number asked for).
    pub next: Vec<DateTime<Utc>>,
}

/// The record of where a never-sent entry's schedule counts from: the time the first
/// leader saw it, kept beside the runs so a restart (a deploy, say) does not push an
/// interval's first run back again — Celery keeps it in its schedule file.
fn anchor_key(entry: &str) -> String {
    format!("{entry} (anchor)")
}

/// A time as the log and `--dry-run` show it: UTC, to the millisecond.
pub(crate) fn show(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `t` kept to the microsecond, as engines store it (so every process agrees on it).
fn micro(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

impl Beat {
    /// The entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// This process's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The store the lease and runs are kept in: the one given, else the broker if it can
    /// hold them, else the result backend's engine (RabbitMQ deployments).
    async fn store(&self) -> Result<(Arc<dyn Broker>, bool), Error> {
        if let Some(s) = &self.store {
            return Ok((s.clone(), Arc::ptr_eq(s, self.app.broker())));
        }
        let broker = self.app.broker().clone();
        match broker.beat_last_runs(&self.schedule).await {
            Err(BrokerError::Unsupported(_)) => {}
            _ => return Ok((broker, true)),
        }
        let backend = self.app.connect_urls().1.clone();
        let store = crate::engines::connect_broker(&backend).await.map_err(|e| {
            Error::Config(format!(
                "beat cannot keep its lease on {} (a RabbitMQ broker holds no state), nor on the result backend ({e}); give it a Redis or SQLite store",
                self.app.broker_url()
            ))
        })?;
        match store.beat_last_runs(&self.schedule).await {
            Err(BrokerError::Unsupported(what)) => Err(Error::Config(format!(
                "beat cannot keep its lease on {} nor on the result backend {} ({what} unsupported); give it a Redis or SQLite store",
                self.app.broker_url(),
                self.app.backend_url()
            ))),
            _ => Ok((store, false)),
        }
    }

    /// Each entry's last recorded run and next `count` due times (from now), read from
    /// the engine: what `celeriac beat --dry-run` prints.
    pub async fn upcoming(&self, count: usize) -> Result<Vec<Upcoming>, Error> {
        let (store, _) = self.store().await?;
        let lasts: HashMap<String, DateTime<Utc>> = store
            .beat_last_runs(&self.schedule)
            .await
            .map_err(Error::Broker)?
            .into_iter()
            .collect();
        let now = (self.clock)();
        Ok(self
            .entries
            .iter()
            .map(|e| {
                let last = lasts.get(&e.name).copied();
                let anchor = lasts.get(&anchor_key(&e.name)).copied().unwrap_or(now);
                let mut next = Vec::new();
                let (overdue, mut t) = coming(&e.schedule, last, anchor, now);
                // Missed runs are caught up at once, or (skip) passed over.
                if overdue && e.catch_up != CatchUp::Skip {
                    next.push(now);
                }
                while let Some(due) = t.filter(|_| next.len() < count) {
                    next.push(due);
                    t = e.schedule.next_after(due, due);
                }
                Upcoming {
                    name: e.name.clone(),
                    task: e.signature.task.clone(),
                    schedule: e.schedule.to_string(),
                    last,
                    next,
                }
            })
            .collect())
    }

    /// Runs until `shutdown` completes: leads when it can, sends each due run once. On
    /// shutdown a leader gives its lease up, so another beat takes over at once. Fails
    /// only when the schedule cannot be kept anywhere; an unreachable engine is retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (store, atomic) = self.store().await?;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut state = Leading {
            token: None,
            lasts: HashMap::new(),
            anchor: micro((self.clock)()),
            retry_at: HashMap::new(),
        };
        info!(
            schedule = %self.schedule,
            holder = %self.holder,
            "beat: {} entries, lease {:?}, store {}",
            self.entries.len(),
            self.lease,
            store.url()
        );
        let mut next_lease = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(200), self.lease / 2);
        loop {
            if Instant::now() >= next_lease {
                next_lease = Instant::now() + self.renew(&store, &mut state, &mut backoff).await;
            }
            let mut wake = next_lease;
            if state.token.is_some() {
                self.send_due(&store, atomic, &mut state).await;
                if state.token.is_none() {
                    next_lease = Instant::now();
                }
                if let Some(at) = self.next_wake(&state) {
                    wake = wake.min(at);
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = &mut shutdown => break,
            }
        }
        if state.token.is_some() {
            match store.beat_release(&self.schedule, &self.holder).await {
                Ok(()) => info!(schedule = %self.schedule, "beat: stopped; lease released"),
                Err(e) => {
                    warn!(schedule = %self.schedule, "beat: stopped; the lease could not be released ({e}): another beat takes over when it runs out")
                }
            }
        }
        Ok(())
    }

    /// Takes or renews the lease; how long until the next try.
    async fn renew(
        &self,
        store: &Arc<dyn Broker>,
        state: &mut Leading,
        backoff: &mut Backoff,
    ) -> Duration {
        // The record lives 4/5 of the lease period and the others look every 1/5: a dead
        // leader is replaced within one period. The leader renews every 1/3, so a renewal
        // may be late by almost half a period before the lease is lost.
        match store
            .beat_lease(&self.schedule, &self.holder, self.lease * 4 / 5)
            .await
        {
            Ok(Some(token)) => {
                backoff.reset();
                if state.token != Some(token) {
                    // New leadership: what the others sent is in the engine.
                    match store.beat_last_runs(&self.schedule).await {
                        Ok(lasts) => {
                            state.lasts = lasts.into_iter().collect();
                            state.token = Some(token);
                            info!(schedule = %self.schedule, token, "beat: leading (this process sends the schedule)");
                            self.record_anchors(store, token, state).await;
                            self.log_upcoming(state);
                        }
                        Err(e) => {
                            warn!(schedule = %self.schedule, "beat: cannot read the last runs ({e}); retrying");
                            state.token = None;
                            return backoff.next_pause();
                        }
                    }
                }
                self.lease / 3
            }
            Ok(None) => {
                if state.token.take().is_some() {
                    warn!(schedule = %self.schedule, "beat: lost the lease; another beat process sends the schedule now");
                } else {
                    debug!(schedule = %self.schedule, "beat: another process leads");
                }
                backoff.reset();
                self.lease / 5
            }
            Err(e) => {
                if state.token.take().is_some() {
                    warn!(schedule = %self.schedule, "beat: cannot renew the lease ({e}); sending stops until it is renewed");
                } else {
                    warn!(schedule = %self.schedule, "beat: cannot reach the store ({e}); retrying");
                }
                backoff.next_pause().min(self.lease / 5)
            }
        }
    }

    /// Records where each entry never sent and never anchored counts from: now. If the
    /// record fails, this process's start is used (and recorded by the next leader).
    async fn record_anchors(&self, store: &Arc<dyn Broker>, token: u64, state: &mut Leading) {
        for e in &self.entries {
            let key = anchor_key(&e.name);
            if state.lasts.contains_key(&e.name) || state.lasts.contains_key(&key) {
                continue;
            }
            let run = BeatRun {
                schedule: self.schedule.clone(),
                token,
                entry: key.clone(),
                due: state.anchor,
            };
            match store.beat_send(&run, None).await {
                Ok(_) => {
                    state.lasts.insert(key, state.anchor);
                }
                Err(err) => debug!(entry = %e.name, "beat: anchor not recorded ({err})"),
            }
        }
    }

    fn log_upcoming(&self, state: &Leading) {
        for e in &self.entries {
            let last = state.lasts.get(&e.name).copied();
            let next = next_due(&e.schedule, last, state.anchor_of(&e.name));
            info!(
                entry = %e.name,
                task = %e.signature.task,
                "beat: {} — last run {}, next {}",
                e.schedule,
                last.map_or("never".into(), show),
                next.map_or("none".into(), show)
            );
        }
    }

    /// When the next entry comes due (on the tokio clock), if any.
    fn next_wake(&self, state: &Leading) -> Option<Instant> {
        let now = (self.clock)();
        let at = Instant::now();
        self.entries
            .iter()
            .filter_map(|e| {
                if let Some((r, _)) = state.retry_at.get(&e.name) {
                    return Some(*r);
                }
                // Overdue yet not sent means passed over (`skip`): sends are done by
                // now, so the next one to come.
                let last = state.lasts.get(&e.name).copied();
                let (_, due) = coming(&e.schedule, last, state.anchor_of(&e.name), now);
                Some(at + (due? - now).to_std().unwrap_or_default())
            })
            .min()
    }

    /// Sends every run that is due, entry by entry.
    async fn send_due(&self, store: &Arc<dyn Broker>, atomic: bool, state: &mut Leading) {
        let Some(token) = state.token else { return };
        let now = (self.clock)();
        for e in &self.entries {
            if state
                .retry_at
                .get(&e.name)
                .is_some_and(|(r, _)| *r > Instant::now())
            {
                continue;
            }
            let last = state.lasts.get(&e.name).copied();
            let anchor = state.anchor_of(&e.name);
            for due in due_runs(&e.schedule, last, anchor, now, GRACE, e.catch_up) {
                let due = micro(due);
                if last.is_some_and(|l| l >= due) {
                    continue;
                }
                match self.send(store, atomic, token, e, due).await {
                    Ok(BeatSent::Sent | BeatSent::AlreadySent) => {
                        state.lasts.insert(e.name.clone(), due);
                        state.retry_at.remove(&e.name);
                    }
                    Ok(BeatSent::NotLeader) => {
                        warn!(schedule = %self.schedule, "beat: the lease was lost before a send; nothing sent");
                        state.token = None;
                        return;
                    }
                    Err(err) => {
                        // Doubling from 1 s up to a minute while the send keeps failing.
                        let pause = state
                            .retry_at
                            .get(&e.name)
                            .map_or(RETRY_FIRST, |(_, p)| (*p * 2).min(RETRY_MAX));
                        warn!(entry = %e.name, "beat: {err}; retrying in {pause:?}");
                        state
                            .retry_at
                            .insert(e.name.clone(), (Instant::now() + pause, pause));
                        break;
                    }
                }
            }
        }
    }

    /// Builds and sends one run; with an `atomic` store (the broker itself) the run is
    /// recorded and enqueued in one step, else recorded, then published.
    async fn send(
        &self,
        store: &Arc<dyn Broker>,
        atomic: bool,
        token: u64,
        e: &Entry,
        due: DateTime<Utc>,
    ) -> Result<BeatSent, Error> {
        let app = &self.app;
        app.declare_queues().await?;
        let now = (self.clock)();
        let mut sig = e
            .signature
            .clone()
            .header(BEAT_TASK_HEADER, true)
            .header(ENTRY_HEADER, e.name.as_str())
            .header(
                DUE_HEADER,
                due.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            );
        let valid = e.expires.or_else(|| e.schedule.period_near(due));
        if let Some(d) = valid.and_then(|d| chrono::Duration::from_std(d).ok()) {
            sig = sig.expires_at(now.max(due) + d);
        }
        let msg = crate::producer::prepare_message(app, &sig)?;
        let id = msg.headers.id.clone();
        let run = BeatRun {
            schedule: self.schedule.clone(),
            token,
            entry: e.name.clone(),
            due,
        };
        let sent = if atomic {
            let options = crate::producer::publish_options(app, &msg);
            store
                .beat_send(&run, Some((msg, options)))
                .await
                .map_err(Error::Broker)?
        } else {
            let sent = store.beat_send(&run, None).await.map_err(Error::Broker)?;
            if sent == BeatSent::Sent {
                // Recorded: published with the producer's retries. If those run out the
                // run is lost (logged), never sent twice.
                if let Err(err) = crate::producer::publish(app, msg).await {
                    warn!(entry = %e.name, "beat: run due {due} was recorded but not published: {err}");
                }
            }
            sent
        };
        if sent == BeatSent::Sent {
            let late = ((self.clock)() - due).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            info!(
                entry = %e.name,
                task = %e.signature.task,
                id = %id,
                "Scheduler: Sending due task {} ({}) due {} ({late:.1} ms after); next {}",
                e.name,
                e.signature.task,
                show(due),
                e.schedule.next_after(due, due).map_or("none".into(), show)
            );
        }
        Ok(sent)
    }
}

/// A beat's view of its schedule while it runs.
struct Leading {
    /// The fencing token while this process leads.
    token: Option<u64>,
    /// Each entry's last recorded run.
    lasts: HashMap<String, DateTime<Utc>>,
    /// Where never-sent intervals count from: this process's start.
    anchor: DateTime<Utc>,
    /// Entries whose last send failed: when to try again, and the pause before that.
    retry_at: HashMap<String, (Instant, Duration)>,
}

impl Leading {
    /// Where `entry`'s schedule counts from until its first run: its recorded anchor,
    /// else this process's start.
    fn anchor_of(&self, entry: &str) -> DateTime<Utc> {
        self.lasts
            .get(&anchor_key(entry))
            .copied()
            .unwrap_or(self.anchor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::broker::ConsumeOptions;

    /// A clock that follows tokio's (paused in these tests) from a fixed wall time.
    fn test_clock(start: DateTime<Utc>) -> Clock {
        let origin = Instant::now();
        Arc::new(move || start + chrono::Duration::from_std(origin.elapsed()).unwrap_or_default())
    }

    async fn app(name: &str) -> App {
        App::builder()
            .broker_url(format!("memory://{name}"))
            .result_backend_url("disabled://")
            .build()
            .await
            .unwrap()
    }

    /// The due times (`beat_due` headers) of the messages waiting in `queue`, in order.
    async fn dues(app: &App, queue: &str) -> Vec<String> {
        let depth = app.broker().queue_depth(queue).await.unwrap() as usize;
        let mut consumer = app
            .broker()
            .consume(ConsumeOptions::new(vec![queue.into()], 0))
            .await
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..depth {
            let d = consumer.next().await.unwrap().unwrap();
            let msg = d.task_message().unwrap();
            out.push(msg.headers.extra[DUE_HEADER].as_str().unwrap().to_string());
            d.ack().await.unwrap();
        }
        out
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_and_crontabs_fire_at_their_due_times() {
        let app = app("beat-unit-times").await;
        let start = at("2026-01-01T00:00:00.5Z");
        let beat = app
            .beat()
            .entry("tick", Signature::new("tasks.tick").queue("bt"), every(10))
            .entry(
                "minute",
                Signature::new("tasks.minute").queue("bm"),
                cron("* * * * *"),
            )
            .clock(test_clock(start))
            .build()
            .unwrap();
        let stop = tokio::time::sleep(Duration::from_secs(125));
        beat.run(stop).await.unwrap();
        let ticks = dues(&app, "bt").await;
        assert_eq!(ticks.len(), 12, "{ticks:?}");
        assert_eq!(ticks[0], "2026-01-01T00:00:10.500000Z");
        assert_eq!(ticks[11], "2026-01-01T00:02:00.500000Z");
        assert_eq!(
            dues(&app, "bm").await,
            ["2026-01-01T00:01:00.000000Z", "2026-01-01T00:02:00.000000Z"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn two_beats_send_each_run_once_and_the_second_takes_over() {
        let app = app("beat-unit-two").await;
        let start = at("2026-01-01T00:00:00Z");
        let make = |holder: &str| {
            app.beat()
                .entry("tick", Signature::new("tasks.tick").queue("b2"), every(1))
                .holder(holder)
                .clock(test_clock(start))
                .build()
                .unwrap()
        };
        let (a, b) = (make("a"), make("b"));
        // `a` leads and dies at 10.2 s without giving its lease up (aborted, as a SIGKILL).
        let leader = tokio::spawn(a.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let follower = tokio::spawn(b.run(tokio::time::sleep(Duration::from_secs(30))));
        tokio::time::sleep(Duration::from_millis(10_150)).await;
        leader.abort();
        follower.await.unwrap().unwrap();
        let got = dues(&app, "b2").await;
        // One run per second, none twice; the runs `b` took over after the lease ran out
        // were caught up once (at most one lease period without a send).
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(unique, got, "no run twice");
        assert!(got.len() >= 10, "{got:?}");
        assert_eq!(got[9], "2026-01-01T00:00:10.000000Z");
        assert_eq!(got.last().unwrap(), "2026-01-01T00:00:30.000000Z");
        let seconds: Vec<u32> = got
            .iter()
            .map(|d| at(d).timestamp() as u32 - start.timestamp() as u32)
            .collect();
        let gap = seconds.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(gap <= 6, "a gap of {gap} s: {seconds:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_neither_repeats_nor_forgets_a_run() {
        let app = app("beat-unit-restart").await;
        let start = at("2026-01-01T00:00:00Z");
        let beat = |clock| {
            app.beat()
                .entry("tick", Signature::new("tasks.tick").queue("br"), every(10))
                .clock(clock)
                .build()
                .unwrap()
        };
        beat(test_clock(start))
            .run(tokio::time::sleep(Duration::from_secs(25)))
            .await
            .unwrap();
        // Down from 25 s to 61 s: the runs at 30, 40, 50 and 60 are missed, one is sent
        // (catch_up once, due at 60), then 70 on time.
        let later = start + chrono::Duration::seconds(61);
        beat(test_clock(later))
            .run(tokio::time::sleep(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(
            dues(&app, "br").await,
            [
                "2026-01-01T00:00:10.000000Z",
                "2026-01-01T00:00:20.000000Z",
                "2026-01-01T00:01:00.000000Z",
                "2026-01-01T00:01:10.000000Z"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_before_the_first_run_keeps_the_first_due_time() {
        let app = app("beat-unit-anchor").await;
        let start = at("2026-01-01T00:00:00Z");
        let beat = |clock| {
            app.beat()
                .entry("slow", Signature::new("tasks.slow").queue("ba"), every(10))
                .clock(clock)
                .build()
                .unwrap()
        };
        // Up 6 s, down 2 s, up again: the first run is still due at 10 s, not 18 s.
        beat(test_clock(start))
            .run(tokio::time::sleep(Duration::from_secs(6)))
            .await
            .unwrap();
        beat(test_clock(start + chrono::Duration::seconds(8)))
            .run(tokio::time::sleep(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(dues(&app, "ba").await, ["2026-01-01T00:00:10.000000Z"]);
    }

    #[tokio::test(start_paused = true)]
    async fn skipped_runs_are_passed_over_and_the_next_is_on_time() {
        let app = app("beat-unit-skip").await;
        let start = at("2026-01-01T00:00:00Z");
        let beat = |clock| {
            let every = Schedule::every(10.0).unwrap();
            let entry = Entry::new("tick", Signature::new("tasks.tick").queue("bs"), every)
                .catch_up(CatchUp::Skip);
            app.beat().entries([entry]).clock(clock).build().unwrap()
        };
        beat(test_clock(start))
            .run(tokio::time::sleep(Duration::from_secs(15)))
            .await
            .unwrap();
        // Down from 15 s to 62 s: 20 … 60 are skipped (60 is 2 s late: more than the 1 s
        // grace); 70 is sent on time (and the beat sleeps meanwhile: a loop that spun on
        // the skipped runs would never end here).
        let later = start + chrono::Duration::seconds(62);
        let second = beat(test_clock(later));
        let upcoming = second.upcoming(1).await.unwrap();
        assert_eq!(upcoming[0].next, [at("2026-01-01T00:01:10Z")]);
        second
            .run(tokio::time::sleep(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(
            dues(&app, "bs").await,
            ["2026-01-01T00:00:10.000000Z", "2026-01-01T00:01:10.000000Z"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_entry_is_retried_and_the_others_go_on() {
        let app = app("beat-unit-failing").await;
        let start = at("2026-01-01T00:00:00Z");
        // Routed to an exchange no queue is bound to: every send fails.
        let nowhere = Signature::new("tasks.lost").set_option("exchange", "nowhere");
        let beat = app
            .beat()
            .entry("lost", nowhere, every(1))
            .entry("tick", Signature::new("tasks.tick").queue("bf"), every(1))
            .clock(test_clock(start))
            .build()
            .unwrap();
        beat.run(tokio::time::sleep(Duration::from_millis(5_500)))
            .await
            .unwrap();
        assert_eq!(dues(&app, "bf").await.len(), 5);
        let lasts = app.broker().beat_last_runs(DEFAULT_SCHEDULE).await.unwrap();
        assert!(
            !lasts.iter().any(|(e, _)| e == "lost"),
            "a run that was not sent is not recorded: {lasts:?}"
        );
    }
}
