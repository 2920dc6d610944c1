//! One run of one scenario with one worker kind: send `tasks.record` 0..N at a steady
//! rate, start the fault part-way, wait until every number ran and nothing is left on the
//! broker (or give up), stop the workers warm, and count.
//!
//! The counting is done on a Redis of the run's own that no fault touches (the
//! *recorder*): each execution of `tasks.record(key, n)` appends `n` there, so a task
//! that ran twice shows twice and one that never ran is missing, whatever happened to the
//! broker. The sender is a celeriac client for both kinds (its publishes retry through a
//! fault for up to 15 s); "sent" counts the publishes that reported success.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use celeriac::App;
use serde_json::json;

use crate::fleet::{Fleet, Kind};

/// What a fault reports back.
#[derive(Debug, Default)]
pub(crate) struct FaultReport {
    /// Remarks for the table (what was seen during the fault).
    pub(crate) notes: Vec<String>,
    /// When the fault's last step ended and what it was: the table gives the time from
    /// it to the last task run (for `kill9`: the last restart).
    pub(crate) last: Option<(&'static str, Instant)>,
}

/// What a fault may act on.
pub(crate) struct FaultCtx {
    /// The run's workers.
    pub(crate) fleet: Arc<Mutex<Fleet>>,
    /// The sender's app (to publish from the fault's thread).
    pub(crate) app: App,
    /// The runtime, for `block_on` from the fault's thread.
    pub(crate) rt: tokio::runtime::Handle,
}

/// A fault: runs on a thread of its own while tasks are being sent.
pub(crate) type Fault = Box<dyn FnOnce(&FaultCtx) -> FaultReport + Send>;

/// Where messages left on the broker are counted.
#[derive(Debug, Clone)]
pub(crate) enum Leftovers {
    /// `LLEN celery` (and its priority lists) plus `HLEN unacked` on this URL.
    Redis(String),
    /// Rows left in the SQLite broker's `messages` table.
    Sqlite(PathBuf),
}

impl Leftovers {
    /// Messages still queued or unacknowledged; `None` if the broker does not answer.
    async fn count(&self) -> Option<(u64, u64)> {
        match self {
            Leftovers::Redis(url) => {
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut c = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.get_multiplexed_async_connection(),
                )
                .await
                .ok()?
                .ok()?;
                let mut pipe = redis::pipe();
                for q in [
                    "celery",
                    "celery\x06\x163",
                    "celery\x06\x166",
                    "celery\x06\x169",
                ] {
                    pipe.cmd("LLEN").arg(q);
                }
                pipe.cmd("HLEN").arg("unacked");
                let counts: Vec<u64> =
                    tokio::time::timeout(Duration::from_secs(1), pipe.query_async(&mut c))
                        .await
                        .ok()?
                        .ok()?;
                let unacked = *counts.last()?;
                Some((counts.iter().sum::<u64>() - unacked, unacked))
            }
            Leftovers::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let c = rusqlite::Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .ok()?;
                    c.query_row(
                        "SELECT count(*) FILTER (WHERE claimed_by IS NULL), \
                                count(*) FILTER (WHERE claimed_by IS NOT NULL) \
                         FROM messages WHERE queue = 'celery'",
                        [],
                        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
                    )
                    .ok()
                })
                .await
                .ok()
                .flatten()
            }
        }
    }
}

/// How a run is set up.
pub(crate) struct Setup {
    /// Scenario name.
    pub(crate) scenario: &'static str,
    /// Worker kind.
    pub(crate) kind: Kind,
    /// The broker URL the sender publishes to.
    pub(crate) send_url: String,
    /// The recorder's URL.
    pub(crate) record_url: String,
    /// Where leftovers are counted.
    pub(crate) leftovers: Leftovers,
    /// Tasks to send.
    pub(crate) tasks: usize,
    /// Tasks per second; `None` sends as fast as the broker takes them.
    pub(crate) rate: Option<f64>,
    /// Start the fault once this many tasks are sent.
    pub(crate) trigger: usize,
    /// Seconds each task works (sleeps) before it records its number.
    pub(crate) work: f64,
}

/// Limits of the wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Give up this long after the first send.
    pub(crate) timeout: Duration,
    /// Give up when nothing ran and the broker's leftovers did not change for this long
    /// (after the fault ended): what is left can only come back after kombu's visibility
    /// timeout (an hour) or never.
    pub(crate) stall: Duration,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) worker: String,
    /// `None`: the scenario does not apply to this worker kind (the note says why).
    pub(crate) counts: Option<Counts>,
    pub(crate) notes: Vec<String>,
}

/// The figures of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) sent: usize,
    pub(crate) once: usize,
    /// Ran two or more times.
    pub(crate) twice: usize,
    pub(crate) never: usize,
    /// First send to the last run recorded.
    pub(crate) wall: Duration,
}

impl Row {
    /// A row for a scenario that does not apply or could not start.
    pub(crate) fn not_run(scenario: &str, kind: Kind, why: impl Into<String>) -> Self {
        Self {
            scenario: scenario.to_string(),
            worker: kind.label().to_string(),
            counts: None,
            notes: vec![why.into()],
        }
    }

    /// As JSON (the diskfull child process hands its row to the parent this way).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "scenario": self.scenario,
            "worker": self.worker,
            "counts": self.counts.map(|c| json!({
                "sent": c.sent, "once": c.once, "twice": c.twice, "never": c.never,
                "wall": c.wall.as_secs_f64(),
            })),
            "notes": self.notes,
        })
    }

    /// From [`to_json`](Self::to_json)'s output.
    pub(crate) fn from_json(v: &serde_json::Value) -> Option<Self> {
        let n = |c: &serde_json::Value, k: &str| c.get(k)?.as_u64().map(|x| x as usize);
        let counts = match v.get("counts")? {
            serde_json::Value::Null => None,
            c => Some(Counts {
                sent: n(c, "sent")?,
                once: n(c, "once")?,
                twice: n(c, "twice")?,
                never: n(c, "never")?,
                wall: Duration::try_from_secs_f64(c.get("wall")?.as_f64()?).ok()?,
            }),
        };
        Some(Self {
            scenario: v.get("scenario")?.as_str()?.to_string(),
            worker: v.get("worker")?.as_str()?.to_string(),
            counts,
            notes: v
                .get("notes")?
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        })
    }
}

/// The recorder's list for `key`, as `tasks.record` names it.
fn record_list(key: &str) -> String {
    format!("celeriac-interop:record:{key}")
}

async fn recorder(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("the recorder's URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the recorder (a redis-server of the run's own)")
}

/// Every number recorded so far, with how often it ran; `None` if the recorder failed.
async fn runs(rec: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<HashMap<i64, u32>> {
    let values: Vec<i64> = redis::cmd("LRANGE")
        .arg(record_list(key))
        .arg(0)
        .arg(-1)
        .query_async(rec)
        .await
        .ok()?;
    let mut runs = HashMap::new();
    for v in values {
        *runs.entry(v).or_insert(0) += 1;
    }
    Some(runs)
}

/// Runs one scenario: sends, faults, waits, stops the fleet, counts.
pub(crate) async fn run(setup: Setup, limits: Limits, fleet: Fleet, fault: Fault) -> Row {
    let fleet = Arc::new(Mutex::new(fleet));
    let app = App::builder()
        .broker_url(setup.send_url.as_str())
        .result_backend_url("disabled://")
        .build()
        .await
        .expect("the sender connects to the run's broker");
    let mut rec = recorder(&setup.record_url).await;
    let key = format!("chaos-{}", setup.scenario);
    let list = record_list(&key);
    let mut notes = Vec::new();

    // Send, paced by the clock; the fault starts on a thread at the trigger.
    let mut sent = vec![false; setup.tasks];
    let mut first_error = None;
    let mut fault = Some(fault);
    let mut faulting: Option<JoinHandle<FaultReport>> = None;
    let t0 = Instant::now();
    for (i, ok) in sent.iter_mut().enumerate() {
        if i == setup.trigger {
            if let Some(f) = fault.take() {
                let cx = FaultCtx {
                    fleet: fleet.clone(),
                    app: app.clone(),
                    rt: tokio::runtime::Handle::current(),
                };
                faulting = Some(std::thread::spawn(move || f(&cx)));
            }
        }
        // A broker that stays away makes every send wait out its retries (15 s each).
        if t0.elapsed() > limits.timeout {
            notes.push(format!(
                "sending stopped at the {} s timeout",
                limits.timeout.as_secs()
            ));
            break;
        }
        if let Some(rate) = setup.rate {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        match app
            .send_task("tasks.record", json!([key, i, setup.work]), json!({}))
            .await
        {
            Ok(_) => *ok = true,
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let sent_count = sent.iter().filter(|ok| **ok).count();
    if let Some(e) = first_error {
        notes.push(format!(
            "{} tasks not sent (first error: {e})",
            setup.tasks - sent_count
        ));
    }

    // Wait: done when the fault is over, every sent number ran, and nothing is left
    // queued or unacknowledged (a message left there could still run a second time).
    let mut last_len = -1_i64;
    let mut last_left = None;
    let mut last_change = Instant::now();
    let mut last_run = t0;
    let mut fault_ended = None;
    loop {
        let now = Instant::now();
        let len: i64 = redis::cmd("LLEN")
            .arg(&list)
            .query_async(&mut rec)
            .await
            .unwrap_or(last_len);
        if len != last_len {
            last_len = len;
            last_change = now;
            last_run = now;
        }
        let left = setup.leftovers.count().await;
        if left != last_left {
            last_left = left;
            last_change = now;
        }
        if fault_ended.is_none() && faulting.as_ref().is_none_or(|f| f.is_finished()) {
            fault_ended = Some(now);
            last_change = last_change.max(now);
        }
        if fault_ended.is_some() && left == Some((0, 0)) && len as usize >= sent_count {
            let ran = runs(&mut rec, &key).await.unwrap_or_default();
            if (0..setup.tasks).all(|i| !sent[i] || ran.contains_key(&(i as i64))) {
                break;
            }
        }
        if now.duration_since(t0) > limits.timeout {
            notes.push(format!(
                "stopped waiting: {} s after the first send",
                limits.timeout.as_secs()
            ));
            break;
        }
        if fault_ended.is_some() && now.duration_since(last_change) > limits.stall {
            notes.push(format!(
                "stopped waiting: {} s without a task run or a change on the broker",
                limits.stall.as_secs()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if let Some(f) = faulting {
        match f.join() {
            Ok(report) => {
                notes.extend(report.notes);
                if let Some((what, at)) = report.last {
                    notes.push(format!(
                        "last task ran {:.1} s after {what}",
                        last_run.saturating_duration_since(at).as_secs_f64()
                    ));
                }
            }
            Err(_) => notes.push("the fault's thread panicked".into()),
        }
    }

    // Stop warm; a run after the wait (a late duplicate) still counts.
    let stop = {
        let fleet = fleet.clone();
        tokio::task::spawn_blocking(move || {
            let mut fleet = fleet.lock().unwrap_or_else(|p| p.into_inner());
            let mut notes = fleet.unasked_exits();
            notes.extend(fleet.stop_all(Duration::from_secs(30)));
            notes
        })
    };
    notes.extend(
        stop.await
            .unwrap_or_else(|_| vec!["stopping the workers panicked".into()]),
    );
    match setup.leftovers.count().await {
        Some((0, 0)) => {}
        Some((queued, unacked)) => notes.push(format!(
            "left on the broker: {queued} queued, {unacked} unacknowledged"
        )),
        None => notes.push("the broker did not answer at the end".into()),
    }

    let ran = runs(&mut rec, &key).await.expect("the recorder answers");
    let mut counts = Counts {
        sent: sent_count,
        once: 0,
        twice: 0,
        never: 0,
        wall: last_run.duration_since(t0),
    };
    let mut thrice = 0;
    for (i, ok) in sent.iter().enumerate() {
        let r = ran.get(&(i as i64)).copied().unwrap_or(0);
        match (ok, r) {
            (true, 0) => counts.never += 1,
            (true, 1) => counts.once += 1,
            (true, r) => {
                counts.twice += 1;
                if r > 2 {
                    thrice += 1;
                }
            }
            (false, 0) => {}
            (false, _) => notes.push(format!("task {i} ran though its send failed")),
        }
    }
    if thrice > 0 {
        notes.push(format!(
            "{thrice} of the repeated tasks ran 3 times or more"
        ));
    }
    let strangers = ran
        .keys()
        .filter(|n| !(0..setup.tasks as i64).contains(n))
        .count();
    if strangers > 0 {
        notes.push(format!("{strangers} numbers recorded that were never sent"));
    }
    Row {
        scenario: setup.scenario.to_string(),
        worker: setup.kind.label().to_string(),
        counts: Some(counts),
        notes,
    }
}
