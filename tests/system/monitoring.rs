//! Monitoring interop with stock Python Celery 5.7 and Flower 2.2.0: Celery's `Inspect`
//! API and remote control read and steer celeriac workers, Celery's event receiver sees
//! their events (and `celery.events.state` judges them as `celery events` and Flower do),
//! Flower lists them, and the `celeriac` command line inspects, steers and watches a
//! Python worker. Redis (a key prefix per test), and one test on RabbitMQ.
//!
//! The Python side is `tests/python/monitor.py` (see its README): `inspect` (a broadcast
//! with replies, or `--via-inspect` for `app.control.inspect().METHOD()`), `events` (one
//! JSON line per event after a `{"monitor": "ready"}` line) and `state`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use celeriac_testing::python::CeleryVenv;
use serde_json::{json, Value};

use crate::interop::Interop;
use crate::interop_amqp::AmqpInterop;
use crate::proc::WorkerProcess;
use crate::support::key;

type Env = Vec<(&'static str, String)>;

/// Runs `monitor.py ARGS` and returns its last stdout line as JSON.
fn monitor(venv: &CeleryVenv, env: &Env, args: &[&str]) -> Value {
    let out = Command::new(venv.python())
        .arg(venv.harness.join("monitor.py"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("monitor.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "monitor.py {args:?} exited {}: {stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("monitor.py {args:?} printed nothing; stderr:\n{stderr}"));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("monitor.py {args:?} printed {line:?} ({e}); stderr:\n{stderr}"))
}

/// Celery's remote control, from Python.
struct Remote<'a> {
    venv: &'a CeleryVenv,
    env: Env,
}

impl Remote<'_> {
    fn run(&self, method: &str, nodes: &[&str], args: Option<Value>, extra: &[&str]) -> Value {
        let args_text = args.map(|a| a.to_string());
        let mut argv = vec!["inspect", method];
        argv.extend_from_slice(extra);
        for n in nodes {
            argv.extend(["-d", n]);
        }
        if let Some(a) = &args_text {
            argv.extend(["-a", a.as_str()]);
        }
        monitor(self.venv, &self.env, &argv)
    }

    /// `app.control.inspect(destination=nodes).METHOD(**args)`: `{node: reply}`, or null
    /// when nobody replied.
    fn inspect(&self, method: &str, nodes: &[&str], args: Option<Value>) -> Value {
        self.run(method, nodes, args, &["--via-inspect", "-t", "5"])
    }

    /// `app.control.broadcast(METHOD, arguments=args, destination=nodes, reply=True)`:
    /// the merged `{node: reply}` (`{}` when nobody replied).
    fn control(&self, method: &str, nodes: &[&str], args: Option<Value>) -> Value {
        self.run(method, nodes, args, &["-t", "5"])
    }

    /// One node's reply to a broadcast.
    fn control1(&self, method: &str, node: &str, args: Value) -> Value {
        let all = self.control(method, &[node], Some(args.clone()));
        all.get(node)
            .cloned()
            .unwrap_or_else(|| panic!("{node} did not answer {method} {args}: {all}"))
    }

    /// One node's reply through the Inspect API.
    fn inspect1(&self, method: &str, node: &str) -> Value {
        let all = self.inspect(method, &[node], None);
        all.get(node)
            .cloned()
            .unwrap_or_else(|| panic!("{node} did not answer inspect {method}: {all}"))
    }
}

/// `monitor.py events` running in the background: its event lines as they come.
struct Events {
    child: Child,
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Events {
    /// Starts the receiver for `seconds` and waits for its `ready` line.
    fn start(venv: &CeleryVenv, env: &Env, seconds: u32) -> Self {
        let mut child = Command::new(venv.python())
            .arg(venv.harness.join("monitor.py"))
            .args(["events", "-s", &seconds.to_string()])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("monitor.py events starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsed": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("monitor.py events printed its ready line");
        assert_eq!(ready, json!({"monitor": "ready"}));
        Self {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// The first event (seen so far or arriving within `timeout`) matching `pred`.
    fn wait(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no event: {what}; seen:\n{}", self.summary()),
            }
        }
    }

    /// The event of `kind` for task `uuid`.
    fn task(&mut self, kind: &str, uuid: &str) -> Value {
        self.wait(&format!("{kind} {uuid}"), Duration::from_secs(20), |e| {
            e["type"] == kind && e["uuid"] == uuid
        })
    }

    /// Everything received so far.
    fn drain(&mut self) -> &[Value] {
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
        &self.seen
    }

    fn summary(&self) -> String {
        self.seen
            .iter()
            .map(|e| format!("  {} {} {}", e["type"], e["hostname"], e["uuid"]))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stock Python Celery worker (threads pool) on `queues`, with `extra` flags.
fn python_worker(
    venv: &CeleryVenv,
    env: &Env,
    name: &str,
    queues: &str,
    concurrency: u32,
    extra: &[&str],
) -> WorkerProcess {
    let mut cmd = Command::new(venv.celery());
    cmd.args(["-A", "celeriac_interop.tasks", "worker", "-Q", queues])
        .args(["--pool", "threads", "-c", &concurrency.to_string()])
        .args(["-n", name, "--without-gossip", "-l", "info"])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    WorkerProcess::spawn_command(cmd, &format!("{name} ready."))
}

/// A client.py `send` request to `queue` (no wait).
fn send_to(name: &str, args: Value, queue: &str) -> Value {
    json!({"op": "send", "name": name, "args": args, "queue": queue})
}

/// The same, waiting for the result.
fn call_on(name: &str, args: Value, queue: &str) -> Value {
    json!({"op": "send", "name": name, "args": args, "queue": queue, "wait": 20})
}

/// Keys (as paths) that `python` has and `celeriac` lacks, descending into objects.
fn missing_keys(python: &Value, celeriac: &Value, path: &str, out: &mut Vec<String>) {
    let Some(p) = python.as_object() else {
        return;
    };
    let Some(r) = celeriac.as_object() else {
        out.push(format!("{path} (not an object: {celeriac})"));
        return;
    };
    for (k, pv) in p {
        let sub = format!("{path}.{k}");
        match r.get(k) {
            None => out.push(sub),
            Some(rv) => missing_keys(pv, rv, &sub, out),
        }
    }
}

/// Keys of `stats` Python has that celeriac lacks: every top-level key, the pool's
/// basics, and everything under `broker` and `rusage`.
fn missing_stats_keys(python: &Value, celeriac: &Value, out: &mut Vec<String>) {
    for k in python.as_object().expect("python stats").keys() {
        if celeriac.get(k).is_none() {
            out.push(format!("stats.{k}"));
        }
    }
    for k in ["implementation", "max-concurrency"] {
        if celeriac["pool"].get(k).is_none() {
            out.push(format!("stats.pool.{k}"));
        }
    }
    for k in ["broker", "rusage"] {
        missing_keys(&python[k], &celeriac[k], &format!("stats.{k}"), out);
    }
}

fn as_list(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
}

/// The item of `list` whose `id` (or `request.id`) is `id`.
fn item<'a>(list: &'a Value, id: &str) -> &'a Value {
    as_list(list)
        .iter()
        .find(|i| i["id"] == id || i["request"]["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

/// Waits up to `within` for `cond`, polling every 200 ms; the last value on timeout.
fn poll<T>(what: &str, within: Duration, mut probe: impl FnMut() -> (bool, T)) -> T
where
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + within;
    loop {
        let (done, v) = probe();
        if done {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn id_of(r: &Value) -> String {
    r["id"].as_str().expect("a task id").to_string()
}

/// 1. Every inspect command through Celery's own `Inspect` API, asked of a celeriac worker
/// and a Python worker side by side: the celeriac replies carry every key Python's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_inspect_reads_a_celeriac_worker() {
    let Some(it) = Interop::new("python_inspect_reads_a_celeriac_worker") else {
        return;
    };
    let k = key();
    let (rs, py) = (format!("rs-{k}@test"), format!("py-{k}@test"));
    let (rq, pq) = (format!("rq-{k}"), format!("pq-{k}"));
    let rust = it.rust_worker(&["-Q", &rq, "-n", &rs, "-E", "-c", "2"]);
    let _python = python_worker(
        &it.venv,
        &it.env(),
        &py,
        &pq,
        1,
        &["--without-heartbeat", "--without-mingle"],
    );
    let r = Remote {
        venv: &it.venv,
        env: it.env(),
    };
    let (rs, py) = (rs.as_str(), py.as_str());
    let both = [rs, py];
    let mut problems = Vec::new();

    assert_eq!(
        r.inspect("ping", &both, None),
        json!({rs: {"ok": "pong"}, py: {"ok": "pong"}})
    );

    let registered = r.inspect1("registered", rs);
    let names: Vec<&str> = as_list(&registered)
        .iter()
        .map(|n| n.as_str().expect("a task name"))
        .collect();
    for want in ["tasks.add", "tasks.sleep", "tasks.record", "tasks.whoami"] {
        assert!(names.contains(&want), "{want} not registered: {names:?}");
    }
    assert!(
        names.windows(2).all(|w| w[0] <= w[1]),
        "not sorted: {names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("celery.")), "{names:?}");

    // Two sleeps run on the celeriac worker (-c 2) and an add waits for a slot; one sleep
    // runs on the Python worker (-c 1) and an add waits; each holds a countdown task.
    let sent = it
        .python_client(vec![
            send_to("tasks.sleep", json!([15]), &rq),
            send_to("tasks.sleep", json!([15]), &rq),
            send_to("tasks.add", json!([1, 2]), &rq),
            json!({"op": "send", "name": "tasks.add", "args": [5, 5], "queue": rq, "countdown": 60}),
            send_to("tasks.sleep", json!([15]), &pq),
            send_to("tasks.add", json!([1, 2]), &pq),
            json!({"op": "send", "name": "tasks.add", "args": [5, 5], "queue": pq, "countdown": 60}),
        ])
        .await;
    let ids: Vec<String> = sent.iter().map(id_of).collect();

    let active = poll(
        "both workers run their sleeps",
        Duration::from_secs(20),
        || {
            let a = r.inspect("active", &both, None);
            let n = |node: &str| a[node].as_array().map_or(0, Vec::len);
            (n(rs) == 2 && n(py) == 1, a)
        },
    );
    for id in &ids[..2] {
        let i = item(&active[rs], id);
        assert_eq!(
            (
                &i["name"],
                &i["type"],
                &i["args"],
                &i["hostname"],
                &i["acknowledged"]
            ),
            (
                &json!("tasks.sleep"),
                &json!("tasks.sleep"),
                &json!([15]),
                &json!(rs),
                &json!(true)
            ),
            "{i}"
        );
        assert!(i["time_start"].is_f64(), "{i}");
        assert_eq!(i["delivery_info"]["routing_key"], json!(rq), "{i}");
        assert_eq!(i["worker_pid"], json!(rust.pid()), "{i}");
        missing_keys(&active[py][0], i, "active[]", &mut problems);
    }

    let reserved = r.inspect("reserved", &both, None);
    let i = item(&reserved[rs], &ids[2]);
    assert_eq!(
        (&i["name"], &i["args"], &i["acknowledged"], &i["time_start"]),
        (
            &json!("tasks.add"),
            &json!([1, 2]),
            &json!(false),
            &Value::Null
        ),
        "{i}"
    );
    missing_keys(item(&reserved[py], &ids[5]), i, "reserved[]", &mut problems);

    let scheduled = r.inspect("scheduled", &both, None);
    let s = item(&scheduled[rs], &ids[3]);
    assert!(s["eta"].is_string(), "{s}");
    assert_eq!(s["request"]["args"], json!([5, 5]), "{s}");
    missing_keys(
        item(&scheduled[py], &ids[6]),
        s,
        "scheduled[]",
        &mut problems,
    );

    // Celery's Inspect.query_task(*ids) takes positional ids, so monitor.py sends the same
    // wire command (`query_task`, arguments {"ids": [...]}) as a plain broadcast.
    let q = r.control1(
        "query_task",
        rs,
        json!({"ids": [ids[0], ids[2], ids[3], "nope"]}),
    );
    assert_eq!(q[&ids[0]][0], json!("active"), "{q}");
    assert_eq!(q[&ids[0]][1]["id"], json!(ids[0]), "{q}");
    assert_eq!(q[&ids[2]][0], json!("reserved"), "{q}");
    assert_eq!(q[&ids[3]][0], json!("scheduled"), "{q}");
    assert_eq!(q[&ids[3]][1]["id"], json!(ids[3]), "{q}");
    assert!(q.get("nope").is_none(), "{q}");
    assert_eq!(q.as_object().map(|o| o.len()), Some(3), "{q}");

    let stats = r.inspect("stats", &both, None);
    let st = &stats[rs];
    assert_eq!(st["pool"]["max-concurrency"], json!(2), "{st}");
    assert_eq!(st["pid"], json!(rust.pid()), "{st}");
    assert!(st["clock"].is_string() && st["uptime"].is_u64(), "{st}");
    assert_eq!(st["broker"]["transport"], json!("redis"), "{st}");
    missing_stats_keys(&stats[py], st, &mut problems);
    // Celery counts a task in `total` when it starts (`task_accepted`): the Python worker's
    // running sleep is in its total already; so must the celeriac worker's two be.
    assert_eq!(
        stats[py]["total"],
        json!({"tasks.sleep": 1}),
        "{}",
        stats[py]
    );
    if st["total"] != json!({"tasks.sleep": 2}) {
        problems.push(format!(
            "stats.total with two tasks.sleep running is {} (Celery counts started tasks: \
             the Python worker's, with one running, is {})",
            st["total"], stats[py]["total"]
        ));
    }

    let queues = r.inspect("active_queues", &both, None);
    let names: Vec<&Value> = as_list(&queues[rs]).iter().map(|q| &q["name"]).collect();
    assert_eq!(names, [&json!(rq)], "{}", queues[rs]);
    missing_keys(
        &queues[py][0],
        &queues[rs][0],
        "active_queues[]",
        &mut problems,
    );

    // The countdown tasks are revoked, so nothing is left to run.
    it.python_client(vec![
        json!({"op": "revoke", "id": ids[3]}),
        json!({"op": "revoke", "id": ids[6]}),
    ])
    .await;
    let revoked = poll(
        "the revoke reached the celeriac worker",
        Duration::from_secs(10),
        || {
            let v = r.inspect1("revoked", rs);
            (as_list(&v).contains(&json!(ids[3])), v)
        },
    );
    // A revoke is a broadcast: every worker keeps the ids, as Celery's do.
    assert!(as_list(&revoked).contains(&json!(ids[6])), "{revoked}");

    let conf = r.inspect1("conf", rs);
    assert!(conf["broker_url"].is_string(), "{conf}");
    assert_eq!(conf["task_acks_late"], json!(false), "{conf}");
    let report = r.inspect1("report", rs);
    assert!(
        report["ok"]
            .as_str()
            .is_some_and(|t| t.contains("software ->")),
        "{report}"
    );
    let clock = r.inspect1("clock", rs);
    assert!(clock["clock"].as_u64().is_some_and(|c| c > 0), "{clock}");

    assert!(
        problems.is_empty(),
        "where celeriac's replies fall short of Celery's: {problems:#?}\nceleriac stats: {st}\npython stats: {}",
        stats[py]
    );
}

/// 2. Celery's remote control steers a celeriac worker: rate and time limits, consumers,
/// pool size, events, heartbeat and shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_control_steers_a_celeriac_worker() {
    let Some(it) = Interop::new("python_control_steers_a_celeriac_worker") else {
        return;
    };
    let k = key();
    let node = format!("rs-{k}@test");
    let (queue, extra) = (format!("rq-{k}"), format!("extra-{k}"));
    let mut events = Events::start(&it.venv, &it.env(), 60);
    let mut rust = it.rust_worker(&["-Q", &queue, "-n", &node, "-E", "-c", "2"]);
    let r = Remote {
        venv: &it.venv,
        env: it.env(),
    };
    let node = node.as_str();

    // rate_limit: 1/s on tasks.add spreads three starts over at least ~2 s.
    assert_eq!(
        r.control1(
            "rate_limit",
            node,
            json!({"task_name": "tasks.add", "rate_limit": "1/s"})
        ),
        json!({"ok": "new rate limit set successfully"})
    );
    let registered = r.inspect1("registered", node);
    assert!(
        as_list(&registered).contains(&json!("tasks.add [rate_limit=1/s]")),
        "{registered}"
    );
    let sent = it
        .python_client(
            (0..3)
                .map(|i| call_on("tasks.add", json!([i, i]), &queue))
                .collect(),
        )
        .await;
    let starts: Vec<f64> = sent
        .iter()
        .map(|s| {
            assert_eq!(s["state"], json!("SUCCESS"), "{s}");
            events.task("task-started", &id_of(s))["timestamp"]
                .as_f64()
                .expect("a timestamp")
        })
        .collect();
    let spread = starts.iter().cloned().fold(f64::MIN, f64::max)
        - starts.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread >= 1.5,
        "1/s let 3 tasks start within {spread:.3} s: {starts:?}"
    );
    let bad = r.control1(
        "rate_limit",
        node,
        json!({"task_name": "tasks.add", "rate_limit": "abc"}),
    );
    assert!(bad["error"].is_string(), "{bad}");
    assert_eq!(
        r.control1(
            "rate_limit",
            node,
            json!({"task_name": "tasks.nope", "rate_limit": "10/m"})
        ),
        json!({"error": "unknown task"})
    );

    // time_limit: hard=1 on tasks.sleep kills a sleep(5).
    assert_eq!(
        r.control1(
            "time_limit",
            node,
            json!({"task_name": "tasks.sleep", "soft": null, "hard": 1})
        ),
        json!({"ok": "time limits set successfully"})
    );
    assert_eq!(
        r.control1(
            "time_limit",
            node,
            json!({"task_name": "tasks.nope", "soft": 60, "hard": 120})
        ),
        json!({"error": "unknown task"})
    );
    let killed = it
        .python_client(vec![call_on("tasks.sleep", json!([5]), &queue)])
        .await;
    assert_eq!(
        (&killed[0]["state"], &killed[0]["exc_type"]),
        (&json!("FAILURE"), &json!("TimeLimitExceeded")),
        "{}",
        killed[0]
    );
    let failed = events.task("task-failed", &id_of(&killed[0]));
    assert!(
        failed["exception"]
            .as_str()
            .is_some_and(|e| e.starts_with("TimeLimitExceeded(")),
        "{failed}"
    );

    // add_consumer: a task sent to the new queue runs here; cancel_consumer: gone again.
    assert_eq!(
        r.control1("add_consumer", node, json!({"queue": extra})),
        json!({"ok": format!("add consumer {extra}")})
    );
    let who = it
        .python_client(vec![call_on("tasks.whoami", json!([]), &extra)])
        .await;
    assert_eq!(
        who[0]["result"],
        json!({"lang": "rust", "hostname": node}),
        "{}",
        who[0]
    );
    let queues = r.inspect1("active_queues", node);
    let names = |qs: &Value| -> Vec<String> {
        as_list(qs)
            .iter()
            .map(|q| q["name"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let mut got = names(&queues);
    got.sort();
    let mut want = vec![queue.clone(), extra.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        r.control1("cancel_consumer", node, json!({"queue": extra})),
        json!({"ok": format!("no longer consuming from {extra}")})
    );
    assert_eq!(
        names(&r.inspect1("active_queues", node)),
        std::slice::from_ref(&queue)
    );

    // pool_grow / pool_shrink move stats' max-concurrency.
    assert_eq!(
        r.control1("pool_grow", node, json!({"n": 1})),
        json!({"ok": "pool will grow"})
    );
    let st = r.inspect1("stats", node);
    assert_eq!(st["pool"]["max-concurrency"], json!(3), "{}", st["pool"]);
    assert_eq!(
        r.control1("pool_shrink", node, json!({"n": 2})),
        json!({"ok": "pool will shrink"})
    );
    let st = r.inspect1("stats", node);
    assert_eq!(st["pool"]["max-concurrency"], json!(1), "{}", st["pool"]);

    // Events: on with -E; off and on again.
    for (method, want) in [
        ("enable_events", "task events already enabled"),
        ("disable_events", "task events disabled"),
        ("disable_events", "task events already disabled"),
        ("enable_events", "task events enabled"),
    ] {
        assert_eq!(
            r.control1(method, node, json!({})),
            json!({ "ok": want }),
            "{method}"
        );
    }

    // heartbeat: a null reply, and a worker-heartbeat with Celery's freq 5 follows.
    assert_eq!(r.control("heartbeat", &[node], None), json!({ node: null }));
    events.wait("the requested heartbeat", Duration::from_secs(10), |e| {
        e["type"] == "worker-heartbeat" && e["hostname"] == node && e["freq"] == json!(5.0)
    });

    // shutdown: no reply, the process exits 0, worker-offline is sent.
    let reply = r.run("shutdown", &[node], None, &["-t", "2"]);
    assert_eq!(reply, json!({}), "shutdown got a reply");
    let status = rust
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the worker did not exit on shutdown:\n{}", rust.log()));
    assert!(status.success(), "exit {status}:\n{}", rust.log());
    let offline = events.wait("worker-offline", Duration::from_secs(10), |e| {
        e["type"] == "worker-offline" && e["hostname"] == node
    });
    for f in [
        "freq",
        "active",
        "processed",
        "sw_ident",
        "sw_ver",
        "sw_sys",
        "loadavg",
        "pid",
        "clock",
        "timestamp",
        "utcoffset",
    ] {
        assert!(
            offline.get(f).is_some(),
            "worker-offline lacks {f}: {offline}"
        );
    }
}

/// The keys a Celery 5.7 worker puts in each event (tests/python/reference).
fn celery_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "task-received" => &[
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "uuid",
            "name",
            "args",
            "kwargs",
            "root_id",
            "parent_id",
            "retries",
            "eta",
            "expires",
            "timestamp",
            "type",
        ],
        "task-started" => &[
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "uuid",
            "timestamp",
            "type",
        ],
        "task-succeeded" => &[
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "uuid",
            "result",
            "runtime",
            "timestamp",
            "type",
        ],
        "task-failed" | "task-retried" => &[
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "uuid",
            "exception",
            "traceback",
            "timestamp",
            "type",
        ],
        "task-revoked" => &[
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "uuid",
            "terminated",
            "signum",
            "expired",
            "timestamp",
            "type",
        ],
        _ => &[
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "freq",
            "active",
            "processed",
            "loadavg",
            "sw_ident",
            "sw_ver",
            "sw_sys",
            "timestamp",
            "type",
        ],
    }
}

fn check_fields(e: &Value, problems: &mut Vec<String>) {
    let kind = e["type"].as_str().unwrap_or("?");
    for f in celery_fields(kind) {
        if e.get(*f).is_none() {
            problems.push(format!("{kind} lacks {f}: {e}"));
        }
    }
}

/// 3. Celery's event receiver sees a celeriac worker's events with Celery's fields; a
/// worker without -E sends heartbeats but no task events until `enable_events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_event_receiver_sees_celeriac_events() {
    let Some(it) = Interop::new("celery_event_receiver_sees_celeriac_events") else {
        return;
    };
    let k = key();
    let (node, quiet) = (format!("ev-{k}@test"), format!("quiet-{k}@test"));
    let (q, q2) = (format!("evq-{k}"), format!("quietq-{k}"));
    let mut events = Events::start(&it.venv, &it.env(), 60);
    let rust = it.rust_worker(&["-Q", &q, "-n", &node, "-E", "-c", "2"]);
    let mut problems = Vec::new();
    let (n, qn) = (node.as_str(), quiet.as_str());

    let online = events.wait("worker-online", Duration::from_secs(10), |e| {
        e["type"] == "worker-online" && e["hostname"] == n
    });
    check_fields(&online, &mut problems);
    assert_eq!(online["sw_ident"], json!("celeriac"), "{online}");
    assert_eq!(online["pid"], json!(rust.pid()), "{online}");
    let beat = events.wait("worker-heartbeat", Duration::from_secs(10), |e| {
        e["type"] == "worker-heartbeat" && e["hostname"] == n
    });
    check_fields(&beat, &mut problems);
    assert_eq!(beat["freq"], json!(2.0), "{beat}");

    let r = it
        .python_client(vec![
            call_on("tasks.add", json!([2, 3]), &q),
            call_on("tasks.fail", json!(["boom"]), &q),
            call_on("tasks.retry_once", json!(["k"]), &q),
        ])
        .await;
    let (ok, bad, retried) = (id_of(&r[0]), id_of(&r[1]), id_of(&r[2]));

    let received = events.task("task-received", &ok);
    assert_eq!(
        (
            &received["name"],
            &received["args"],
            &received["kwargs"],
            &received["retries"]
        ),
        (
            &json!("tasks.add"),
            &json!("[2, 3]"),
            &json!("{}"),
            &json!(0)
        ),
        "{received}"
    );
    assert_eq!(
        (
            &received["root_id"],
            &received["parent_id"],
            &received["eta"],
            &received["expires"]
        ),
        (&json!(ok), &Value::Null, &Value::Null, &Value::Null),
        "{received}"
    );
    let started = events.task("task-started", &ok);
    let succeeded = events.task("task-succeeded", &ok);
    assert_eq!(succeeded["result"], json!("5"), "{succeeded}");
    assert!(
        succeeded["runtime"].as_f64().is_some_and(|t| t >= 0.0),
        "{succeeded}"
    );
    for e in [&received, &started, &succeeded] {
        check_fields(e, &mut problems);
        assert_eq!(e["hostname"], json!(n), "{e}");
    }
    let clocks: Vec<u64> = [&received, &started, &succeeded]
        .iter()
        .map(|e| e["clock"].as_u64().expect("an integer clock"))
        .collect();
    assert!(
        clocks.windows(2).all(|w| w[0] < w[1]),
        "clock not rising: {clocks:?}"
    );

    let failed = events.task("task-failed", &bad);
    check_fields(&failed, &mut problems);
    assert_eq!(failed["exception"], json!("ValueError('boom')"), "{failed}");
    assert!(
        failed["traceback"]
            .as_str()
            .is_some_and(|t| t.contains("boom")),
        "{failed}"
    );

    let retry = events.task("task-retried", &retried);
    check_fields(&retry, &mut problems);
    assert!(
        retry["exception"]
            .as_str()
            .is_some_and(|e| e.starts_with("Retry(")),
        "{retry}"
    );
    let again = events.wait("the retry's task-received", Duration::from_secs(10), |e| {
        e["type"] == "task-received" && e["uuid"] == retried.as_str() && e["retries"] == 1
    });
    assert!(again["eta"].is_string(), "{again}");
    let last = events.task("task-succeeded", &retried);
    assert_eq!(last["result"], json!("'ok'"), "{last}");

    // A countdown task revoked while held: task-revoked, not expired.
    let held = it
        .python_client(vec![
            json!({"op": "send", "name": "tasks.add", "args": [1, 1], "queue": q, "countdown": 3}),
        ])
        .await;
    let held = id_of(&held[0]);
    events.task("task-received", &held);
    it.python_client(vec![json!({"op": "revoke", "id": held})])
        .await;
    let revoked = events.task("task-revoked", &held);
    check_fields(&revoked, &mut problems);
    assert_eq!(
        (
            &revoked["terminated"],
            &revoked["signum"],
            &revoked["expired"]
        ),
        (&json!(false), &Value::Null, &json!(false)),
        "{revoked}"
    );

    // Without -E: heartbeats, no task events — until enable_events. The marker is the
    // second task's events: sent after the first task's would have been.
    let _quiet = it.rust_worker(&["-Q", &q2, "-n", qn, "-c", "1"]);
    events.wait(
        "the quiet worker's heartbeat",
        Duration::from_secs(10),
        |e| e["type"] == "worker-heartbeat" && e["hostname"] == qn,
    );
    let silent = it
        .python_client(vec![call_on("tasks.add", json!([1, 2]), &q2)])
        .await;
    assert_eq!(silent[0]["result"], json!(3));
    let silent = id_of(&silent[0]);
    let remote = Remote {
        venv: &it.venv,
        env: it.env(),
    };
    assert_eq!(
        remote.control1("enable_events", qn, json!({})),
        json!({"ok": "task events enabled"})
    );
    assert_eq!(
        remote.control1("enable_events", qn, json!({})),
        json!({"ok": "task events already enabled"})
    );
    let marker = it
        .python_client(vec![call_on("tasks.add", json!([3, 4]), &q2)])
        .await;
    let marker = id_of(&marker[0]);
    let done = events.task("task-succeeded", &marker);
    assert_eq!(done["hostname"], json!(qn), "{done}");
    let leaked: Vec<&Value> = events
        .drain()
        .iter()
        .filter(|e| e["uuid"] == silent.as_str())
        .collect();
    assert!(
        leaked.is_empty(),
        "a worker without -E sent task events: {leaked:?}"
    );

    assert!(
        problems.is_empty(),
        "events lack Celery's fields: {problems:#?}"
    );
}

/// Runs `celeriac -b <broker> ARGS`: (exit code, stdout, stderr).
fn celeriac_cli(broker: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(crate::proc::celeriac_bin())
        .args(["-b", broker])
        .args(args)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERY_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERY_RESULT_BACKEND")
        .env_remove("RUST_LOG")
        .output()
        .expect("celeriac runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 4. The `celeriac` command line inspects, steers and watches a stock Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_cli_inspects_and_controls_a_python_worker() {
    let Some(it) = Interop::new("celeriac_cli_inspects_and_controls_a_python_worker") else {
        return;
    };
    let k = key();
    let py = format!("py-{k}@test");
    let pq = format!("pq-{k}");
    // Heartbeats on (no --without-heartbeat), for `events --dump`.
    let _python = python_worker(&it.venv, &it.env(), &py, &pq, 2, &["--without-mingle"]);
    let url = it.scope.url("");
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        // celeriac's broadcast waits out the whole timeout even when every destination
        // has answered (Celery's stops after one reply per destination): keep it short.
        all.extend(["-d", py.as_str(), "-t", "3"]);
        let (code, out, err) = celeriac_cli(&url, &all);
        assert_eq!(code, 0, "celeriac {args:?} exited {code}:\n{out}\n{err}");
        out
    };

    let out = cli(&["inspect", "ping"]);
    assert_eq!(
        out,
        format!("->  {py}: OK\n        pong\n\n1 node online.\n")
    );

    let out = cli(&["inspect", "stats", "--json"]);
    let stats: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let st = &stats[&py];
    assert_eq!(
        st["pool"]["implementation"],
        json!("celery.concurrency.thread:TaskPool"),
        "{out}"
    );
    assert_eq!(st["pool"]["max-concurrency"], json!(2), "{out}");
    assert_eq!(st["broker"]["transport"], json!("redis"), "{out}");

    let out = cli(&["inspect", "registered"]);
    assert!(out.starts_with(&format!("->  {py}: OK\n")), "{out}");
    assert!(out.contains("\n    * tasks.add\n"), "{out}");
    assert!(out.contains("\n    * tasks.whoami\n"), "{out}");
    assert!(out.ends_with("\n\n1 node online.\n"), "{out}");

    let out = cli(&["control", "rate_limit", "tasks.add", "10/m"]);
    assert_eq!(
        out,
        format!("->  {py}: OK\n        new rate limit set successfully\n")
    );
    let out = cli(&["inspect", "registered"]);
    assert!(
        out.contains("\n    * tasks.add [rate_limit=10/m]\n"),
        "{out}"
    );
    let out = cli(&["control", "rate_limit", "tasks.nope", "1/s"]);
    assert_eq!(out, format!("->  {py}: ERROR\n        unknown task\n"));

    let out = cli(&["inspect", "active_queues"]);
    assert!(out.starts_with(&format!("->  {py}: OK\n    * ")), "{out}");
    let listed: Vec<Value> = out
        .lines()
        .filter_map(|l| l.strip_prefix("    * "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["name"], json!(pq), "{out}");

    let (code, out, err) = celeriac_cli(&url, &["events", "--dump", "--duration", "5"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let beats: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|e| e["type"] == "worker-heartbeat" && e["hostname"] == py.as_str())
        .collect();
    assert!(
        !beats.is_empty(),
        "no heartbeat from {py} in:\n{out}\n{err}"
    );
    assert_eq!(beats[0]["sw_ident"], json!("py-celery"), "{}", beats[0]);
}

/// A child process killed on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from 127.0.0.1:`port`: (status, body), or `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn http_json(port: u16, path: &str) -> Value {
    let (status, body) = http_get(port, path).unwrap_or_else(|| panic!("GET {path}: no answer"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// 5. Flower 2.2.0 lists a celeriac worker and its tasks, and reports it offline once its
/// heartbeats stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_lists_celeriac_workers_and_tasks() {
    let Some(it) = Interop::new("flower_lists_celeriac_workers_and_tasks") else {
        return;
    };
    let k = key();
    let node = format!("fl-{k}@test");
    let q = format!("flq-{k}");
    let port = celeriac_testing::services::free_port();
    let mut cmd = Command::new(it.venv.celery());
    cmd.args(["-A", "celeriac_interop.tasks", "flower"])
        .arg(format!("--port={port}"))
        .arg("--address=127.0.0.1")
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .envs(it.env().iter().map(|(k, v)| (*k, v.clone())));
    let log = std::env::temp_dir().join(format!("flower-{k}.log"));
    let file = std::fs::File::create(&log).expect("flower log");
    cmd.stdout(Stdio::null()).stderr(file);
    let flower = Reaped(cmd.spawn().expect("flower starts"));
    poll("Flower's healthcheck", Duration::from_secs(30), || {
        let r = http_get(port, "/healthcheck");
        (r.as_ref().is_some_and(|(s, b)| *s == 200 && b == "OK"), r)
    });
    let mut rust = it.rust_worker(&["-Q", &q, "-n", &node, "-E", "-c", "2"]);
    let r = it
        .python_client(vec![
            call_on("tasks.add", json!([2, 3]), &q),
            call_on("tasks.fail", json!(["boom"]), &q),
        ])
        .await;
    let (ok, bad) = (id_of(&r[0]), id_of(&r[1]));

    let tasks = poll(
        "Flower lists both tasks done",
        Duration::from_secs(15),
        || {
            let t = http_json(port, "/api/tasks");
            let done = t[&ok]["state"] == "SUCCESS" && t[&bad]["state"] == "FAILURE";
            (done, t)
        },
    );
    let t = &tasks[&ok];
    assert_eq!(
        (&t["name"], &t["result"], &t["worker"], &t["args"]),
        (
            &json!("tasks.add"),
            &json!("5"),
            &json!(node),
            &json!("[2, 3]")
        ),
        "{t}"
    );
    let f = &tasks[&bad];
    assert_eq!(
        (&f["name"], &f["exception"]),
        (&json!("tasks.fail"), &json!("ValueError('boom')")),
        "{f}"
    );
    let info = http_json(port, &format!("/api/task/info/{ok}"));
    assert_eq!(
        (&info["uuid"], &info["state"], &info["result"]),
        (&json!(ok), &json!("SUCCESS"), &json!("5")),
        "{info}"
    );
    let (status, _) = http_get(port, "/api/task/info/no-such-task").expect("an answer");
    assert_eq!(status, 404);

    let workers = http_json(port, "/api/workers?refresh=1");
    let w = &workers[&node];
    assert_eq!(
        w["stats"]["total"],
        json!({"tasks.add": 1, "tasks.fail": 1}),
        "{w}"
    );
    for key in ["active_queues", "registered", "conf", "timestamp"] {
        assert!(w.get(key).is_some(), "/api/workers lacks {key}: {w}");
    }
    assert_eq!(w["active_queues"][0]["name"], json!(q), "{w}");
    assert_eq!(http_json(port, "/api/workers?status=1")[&node], json!(true));
    // The dashboard's events-based view (`/workers?json=1`): counts from the heartbeats'
    // `processed` and from the task events.
    let dashboard = |port| -> Option<Value> {
        let all = http_json(port, "/workers?json=1");
        as_list(&all["data"])
            .iter()
            .find(|w| w["hostname"] == node.as_str())
            .cloned()
    };
    let w = poll(
        "the dashboard counts 2 processed",
        Duration::from_secs(15),
        || {
            let w = dashboard(port);
            (w.as_ref().is_some_and(|w| w["processed"] == 2), w)
        },
    )
    .expect("listed");
    assert_eq!(
        (
            &w["status"],
            &w["task-succeeded"],
            &w["task-failed"],
            &w["sw_ident"]
        ),
        (&json!(true), &json!(1), &json!(1), &json!("celeriac")),
        "{w}"
    );

    // Killed: no worker-offline, so Flower judges by the heartbeats (freq 2 s, expiry
    // after twice that).
    let t0 = Instant::now();
    rust.kill();
    poll(
        "Flower reports the worker offline",
        Duration::from_secs(20),
        || {
            let s = http_json(port, "/api/workers?status=1");
            (s[&node] == json!(false), s)
        },
    );
    let w = dashboard(port).expect("still listed");
    assert_eq!(w["status"], json!(false), "{w}");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "offline before its last heartbeat could expire"
    );
    drop(flower);
    let _ = std::fs::remove_file(&log);
}

/// 6. On RabbitMQ: Celery's Inspect API reads a celeriac worker, and Celery's event
/// receiver sees its heartbeats and task events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_inspect_and_events_on_rabbitmq() {
    let Some(it) = AmqpInterop::new("python_inspect_and_events_on_rabbitmq", 1) else {
        return;
    };
    let node = it.node("rs");
    let q = it.queue(0).to_string();
    let mut events = Events::start(&it.venv, &it.env(), 60);
    let _rust = it.rust_worker(&["-Q", &q, "-n", &node, "-E", "-c", "2"]);
    let r = Remote {
        venv: &it.venv,
        env: it.env(),
    };
    let n = node.as_str();
    assert_eq!(r.inspect("ping", &[n], None), json!({n: {"ok": "pong"}}));
    let st = r.inspect1("stats", n);
    assert_eq!(st["broker"]["transport"], json!("amqp"), "{st}");
    assert_eq!(st["pool"]["max-concurrency"], json!(2), "{st}");
    let queues = r.inspect1("active_queues", n);
    assert_eq!(queues[0]["name"], json!(q), "{queues}");
    assert_eq!(queues[0]["exchange"]["name"], json!(q), "{queues}");

    let beat = events.wait("a heartbeat", Duration::from_secs(10), |e| {
        e["type"] == "worker-heartbeat" && e["hostname"] == n
    });
    assert_eq!(beat["sw_ident"], json!("celeriac"), "{beat}");
    let sent = it
        .python_client(vec![call_on("tasks.add", json!([2, 3]), &q)])
        .await;
    assert_eq!(sent[0]["result"], json!(5));
    let done = events.task("task-succeeded", &id_of(&sent[0]));
    assert_eq!(
        (&done["hostname"], &done["result"]),
        (&json!(n), &json!("5")),
        "{done}"
    );
}

/// Mingle across languages: a Python worker that starts learns the ids a running celeriac
/// worker holds as revoked (Celery's `hello`, answered by celeriac), and a celeriac worker
/// that starts learns those of the running workers, Python's included — so a revoked task
/// runs on no worker, whichever starts later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mingle_shares_revoked_ids_between_python_and_celeriac() {
    let Some(it) = Interop::new("mingle_shares_revoked_ids_between_python_and_celeriac") else {
        return;
    };
    let k = key();
    let (first, py, last) = (
        format!("rs1-{k}@test"),
        format!("py-{k}@test"),
        format!("rs2-{k}@test"),
    );
    let q = format!("q-{k}");
    let r = Remote {
        venv: &it.venv,
        env: it.env(),
    };
    let _first = it.rust_worker(&["-Q", &q, "-n", &first]);
    let (x, y) = (format!("x-{k}"), format!("y-{k}"));
    assert_eq!(
        r.control1("revoke", &first, json!({"task_id": [x]})),
        json!({"ok": format!("tasks {{'{x}'}} flagged as revoked")})
    );
    // The Python worker mingles at start-up (no --without-mingle).
    let _python = python_worker(&it.venv, &it.env(), &py, &q, 1, &[]);
    let learnt = r.control1("revoked", &py, json!({}));
    assert!(
        as_list(&learnt).contains(&json!(x)),
        "Python did not learn {x}: {learnt}"
    );
    // Revoked on the Python worker only; a celeriac worker started now learns both.
    r.control1("revoke", &py, json!({"task_id": [y]}));
    let _last = it.rust_worker(&["-Q", &q, "-n", &last]);
    let learnt = r.control1("revoked", &last, json!({}));
    for id in [&x, &y] {
        assert!(
            as_list(&learnt).contains(&json!(id)),
            "celeriac did not learn {id}: {learnt}"
        );
    }
}
