//! The scenarios: each sets up a broker of its own, a recorder, the workers and a fault,
//! and hands them to [`run::run`]. `docs/reliability.md` describes each one.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_testing::proxy::TcpProxy;
use celeriac_testing::services::{RedisServer, ScratchDir, ServerOptions};
use serde_json::json;

use crate::fleet::{wait_stopped, Fleet, Kind, Programs, Spec};
use crate::run::{self, Fault, FaultCtx, FaultReport, Leftovers, Limits, Row, Setup};

/// Every scenario, in the order they run.
pub(crate) const ALL: [&str; 7] = [
    "kill9", "restart", "failover", "netcut", "garbage", "warm", "diskfull",
];

/// What every scenario needs.
pub(crate) struct Ctx {
    pub(crate) programs: Arc<Programs>,
    pub(crate) limits: Limits,
    /// `--tasks`: overrides each scenario's own number.
    pub(crate) tasks: Option<usize>,
    /// Tasks per second.
    pub(crate) rate: f64,
    /// Size of `diskfull`'s tmpfs, MiB.
    pub(crate) disk_mib: u64,
}

/// How long a task works before it records its number, unless the scenario says: with 4
/// tasks at once, one worker could run 400 a second, twice the default rate.
const WORK: f64 = 0.01;

/// How long a task works in `kill9` and `warm`: longer than the rate allows (2 workers
/// run 160 a second), so a backlog builds up and every worker holds its full prefetch
/// when it is killed or stopped.
const LONG_WORK: f64 = 0.05;

/// The largest message a celeriac worker accepts in `garbage` (1 MiB); the oversized
/// message is twice that.
const MAX_MESSAGE_SIZE: usize = 1 << 20;

fn redis(what: &str, persistent: bool) -> RedisServer {
    RedisServer::start_with(
        &format!("celeriac-chaos {what}"),
        ServerOptions {
            persistent,
            ..ServerOptions::default()
        },
    )
    .expect("redis-server is installed (the chaos scenarios start their own)")
}

fn sync_conn(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs scenario `name` with workers of `kind`.
pub(crate) async fn run(ctx: &Ctx, name: &'static str, kind: Kind) -> Row {
    let tasks = |default: usize| ctx.tasks.unwrap_or(default);
    let recorder = redis(&format!("{name} recorder"), false);
    let record = format!("{}/0", recorder.url());
    let spec = |broker: &str| Spec {
        broker: broker.to_string(),
        record: record.clone(),
        acks_late: false,
        concurrency: 4,
        max_message_size: None,
    };
    let setup = |send_url: &str, leftovers: Leftovers, n: usize, trigger: usize| Setup {
        scenario: name,
        kind,
        send_url: send_url.to_string(),
        record_url: record.clone(),
        leftovers,
        tasks: n,
        rate: Some(ctx.rate),
        trigger,
        work: WORK,
    };
    let fleet = |spec: Spec, count: usize| {
        Fleet::start(
            ctx.programs.clone(),
            kind,
            spec,
            format!("{name}-{}", kind.label().split(' ').next().unwrap_or("w")),
            count,
        )
    };
    macro_rules! fleet_or_row {
        ($spec:expr, $count:expr) => {
            match fleet($spec, $count) {
                Ok(f) => f,
                Err(e) => return Row::not_run(name, kind, e),
            }
        };
    }

    match name {
        // Two workers with late acks; one is SIGKILLed five times, a second apart, and
        // restarted each time.
        "kill9" => {
            let server = redis(name, false);
            let url = format!("{}/0", server.url());
            let n = tasks(2_000);
            let f = fleet_or_row!(
                Spec {
                    acks_late: true,
                    ..spec(&url)
                },
                2
            );
            let fault: Fault = Box::new(|cx: &FaultCtx| {
                let mut report = FaultReport::default();
                for _ in 0..5 {
                    std::thread::sleep(Duration::from_secs(1));
                    let mut fleet = lock(&cx.fleet);
                    fleet.kill9(0);
                    if let Err(e) = fleet.restart(0) {
                        report.notes.push(e);
                        return report;
                    }
                    report.last = Some(("the last restart", Instant::now()));
                }
                report
            });
            let setup = Setup {
                work: LONG_WORK,
                ..setup(&url, Leftovers::Redis(url.clone()), n, n / 10)
            };
            run::run(setup, ctx.limits, f, fault).await
        }
        // The broker's redis-server stops (SIGTERM: it saves its append-only file), stays
        // down for 2 s, and starts again on the same port and data.
        "restart" => {
            let server = Arc::new(Mutex::new(redis(name, true)));
            let url = format!("{}/0", lock(&server).url());
            let n = tasks(1_000);
            let f = fleet_or_row!(spec(&url), 1);
            let restarting = server.clone();
            let fault: Fault = Box::new(move |_: &FaultCtx| {
                let mut server = lock(&restarting);
                let t = Instant::now();
                server.stop();
                std::thread::sleep(Duration::from_secs(2));
                server.restart();
                FaultReport {
                    notes: vec![format!("Redis was down {:.1} s", t.elapsed().as_secs_f64())],
                    last: Some(("Redis came back", Instant::now())),
                }
            });
            let setup = setup(&url, Leftovers::Redis(url.clone()), n, n / 4);
            run::run(setup, ctx.limits, f, fault).await
        }
        // The broker turns replica of a server that does not exist for 3 s (READONLY
        // writes, UNBLOCKED reads), then primary again: what a failover looks like to
        // clients that stay connected.
        "failover" => {
            let server = redis(name, false);
            let url = format!("{}/0", server.url());
            let n = tasks(1_000);
            let f = fleet_or_row!(spec(&url), 1);
            let fault_url = url.clone();
            let fault: Fault = Box::new(move |_: &FaultCtx| {
                let mut report = FaultReport::default();
                let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .expect("a free port");
                let result = sync_conn(&fault_url).and_then(|mut c| {
                    redis::cmd("REPLICAOF")
                        .arg("127.0.0.1")
                        .arg(nowhere)
                        .exec(&mut c)?;
                    std::thread::sleep(Duration::from_secs(3));
                    redis::cmd("REPLICAOF").arg("NO").arg("ONE").exec(&mut c)
                });
                match result {
                    Ok(()) => report.last = Some(("REPLICAOF NO ONE", Instant::now())),
                    Err(e) => report.notes.push(format!("the failover failed: {e}")),
                }
                report
            });
            let setup = setup(&url, Leftovers::Redis(url.clone()), n, n / 4);
            run::run(setup, ctx.limits, f, fault).await
        }
        // The workers reach Redis through a proxy that cuts every connection and refuses
        // new ones for 2 s; the sender goes straight to Redis, so tasks keep arriving.
        "netcut" => {
            let server = redis(name, false);
            let direct = format!("{}/0", server.url());
            let proxy = Arc::new(
                TcpProxy::start(&format!("127.0.0.1:{}", server.port())).expect("the proxy starts"),
            );
            let url = format!("redis://{}/0", proxy.addr());
            let n = tasks(1_000);
            let f = fleet_or_row!(spec(&url), 1);
            let cutter = proxy.clone();
            let fault: Fault = Box::new(move |_: &FaultCtx| {
                cutter.cut();
                std::thread::sleep(Duration::from_secs(2));
                cutter.restore();
                FaultReport {
                    notes: Vec::new(),
                    last: Some(("the network came back", Instant::now())),
                }
            });
            let setup = setup(&direct, Leftovers::Redis(direct.clone()), n, n / 4);
            run::run(setup, ctx.limits, f, fault).await
        }
        // Messages no worker can run, pushed among the tasks one every 100 ms.
        "garbage" => {
            let server = redis(name, false);
            let url = format!("{}/0", server.url());
            let n = tasks(1_000);
            let f = fleet_or_row!(
                Spec {
                    max_message_size: Some(MAX_MESSAGE_SIZE),
                    ..spec(&url)
                },
                1
            );
            let fault_url = url.clone();
            let fault: Fault = Box::new(move |cx: &FaultCtx| push_garbage(cx, &fault_url));
            let setup = setup(&url, Leftovers::Redis(url.clone()), n, n / 4);
            run::run(setup, ctx.limits, f, fault).await
        }
        // Two workers; one is stopped warm (SIGTERM) while the queue is deep, and a new
        // one started at once. Sent as fast as the broker takes them, so there is a
        // backlog to shut down in the middle of.
        "warm" => {
            let server = redis(name, false);
            let url = format!("{}/0", server.url());
            let n = tasks(1_000);
            let f = fleet_or_row!(spec(&url), 2);
            let fault: Fault = Box::new(|cx: &FaultCtx| {
                let mut fleet = lock(&cx.fleet);
                // Watched for its exit on a thread of its own while the new one starts.
                let t = Instant::now();
                let stopping = fleet.sigterm(0).map(|w| {
                    std::thread::spawn(move || wait_stopped(w, t, Duration::from_secs(60)))
                });
                let mut notes = Vec::new();
                if let Err(e) = fleet.add() {
                    notes.push(e);
                }
                drop(fleet);
                if let Some(h) = stopping {
                    notes.push(
                        h.join()
                            .unwrap_or_else(|_| "waiting for the stop panicked".into()),
                    );
                }
                FaultReport { notes, last: None }
            });
            let setup = Setup {
                rate: None,
                work: LONG_WORK,
                ..setup(&url, Leftovers::Redis(url.clone()), n, n / 4)
            };
            run::run(setup, ctx.limits, f, fault).await
        }
        "diskfull" => match kind {
            Kind::Celery => Row::not_run(name, kind, "n/a: Celery has no SQLite broker"),
            Kind::Celeriac => crate::diskfull::from_parent(ctx, &record).await,
        },
        other => Row::not_run(other, kind, "unknown scenario"),
    }
}

/// Pushes the garbage (`LPUSH`, as kombu publishes) one message every 100 ms.
fn push_garbage(cx: &FaultCtx, url: &str) -> FaultReport {
    let mut report = FaultReport::default();
    let envelope = |tag: &str, content_type: &str, body: &str, headers: serde_json::Value| {
        json!({
            "body": body,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "body_encoding": "base64",
                "delivery_tag": tag,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0,
            },
        })
        .to_string()
        .into_bytes()
    };
    let task_headers = |id: &str| json!({"lang": "py", "task": "tasks.record", "id": id});
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"\xff\xfe this is not JSON \x00".to_vec()),
        ("truncated JSON", br#"{"body": "eyJ"#.to_vec()),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
        ("an empty object", b"{}".to_vec()),
        (
            "a body that is not base64",
            envelope(
                "garbage-5",
                "application/json",
                "%%% not base64 %%%",
                task_headers("garbage-5"),
            ),
        ),
        (
            "a base64 body that is not JSON",
            // base64("not json {")
            envelope(
                "garbage-6",
                "application/json",
                "bm90IGpzb24gew==",
                task_headers("garbage-6"),
            ),
        ),
        (
            "a pickle content type",
            // base64 of pickle bytes: never unpickled by either side
            envelope(
                "garbage-7",
                "application/x-python-serialize",
                "gASVBQAAAAAAAACMAXiULg==",
                task_headers("garbage-7"),
            ),
        ),
        (
            "headers without task or id",
            // base64("[[], {}, {}]")
            envelope(
                "garbage-8",
                "application/json",
                "W1tdLCB7fSwge31d",
                json!({"lang": "py"}),
            ),
        ),
    ];
    let mut conn = match sync_conn(url) {
        Ok(c) => c,
        Err(e) => {
            report.notes.push(format!("could not push garbage: {e}"));
            return report;
        }
    };
    let mut pushed = 0;
    for (what, bytes) in &garbage {
        match redis::cmd("LPUSH").arg("celery").arg(bytes).exec(&mut conn) {
            Ok(()) => pushed += 1,
            Err(e) => report.notes.push(format!("{what} not pushed: {e}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A well-formed `tasks.echo` twice the celeriac worker's --max-message-size.
    let big = "x".repeat(2 * MAX_MESSAGE_SIZE);
    match cx
        .rt
        .block_on(cx.app.send_task("tasks.echo", json!([big]), json!({})))
    {
        Ok(_) => pushed += 1,
        Err(e) => report
            .notes
            .push(format!("the oversized message was not sent: {e}")),
    }
    report
        .notes
        .push(format!("{pushed} garbage messages among the tasks"));
    report
}

/// The SQLite database a diskfull run uses, in `dir`.
pub(crate) fn sqlite_file(dir: &Path) -> std::path::PathBuf {
    dir.join("broker.sqlite")
}

/// Runs the diskfull scenario in this process (already inside its own mount namespace,
/// with a small tmpfs on `disk`).
pub(crate) async fn diskfull_here(ctx: &Ctx, disk: &ScratchDir, record: &str) -> Row {
    let name = "diskfull";
    let kind = Kind::Celeriac;
    let db = sqlite_file(disk.path());
    let url = format!("sqlite://{}", db.display());
    let n = ctx.tasks.unwrap_or(1_000);
    let spec = Spec {
        broker: url.clone(),
        record: record.to_string(),
        acks_late: false,
        concurrency: 4,
        max_message_size: None,
    };
    let fleet = match Fleet::start(
        ctx.programs.clone(),
        kind,
        spec,
        "diskfull-celeriac".into(),
        1,
    ) {
        Ok(f) => f,
        Err(e) => return Row::not_run(name, kind, e),
    };
    let filler = disk.path().join("filler");
    let fault: Fault = Box::new(move |_: &FaultCtx| {
        let mut report = FaultReport::default();
        let filled = celeriac_testing::disk::fill(&filler);
        report.notes.push(format!(
            "disk filled for 3 s ({:.1} MiB of filler)",
            filled as f64 / 1048576.0
        ));
        std::thread::sleep(Duration::from_secs(3));
        let _ = std::fs::remove_file(&filler);
        report.last = Some(("the disk was freed", Instant::now()));
        report
    });
    let setup = Setup {
        scenario: name,
        kind,
        send_url: url,
        record_url: record.to_string(),
        leftovers: Leftovers::Sqlite(db),
        tasks: n,
        rate: Some(ctx.rate),
        trigger: n / 4,
        work: WORK,
    };
    run::run(setup, ctx.limits, fleet, fault).await
}
