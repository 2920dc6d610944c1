//! Interop with stock Python Celery 5.7 on RabbitMQ: a Python client calls a celeriac
//! worker, a celeriac client calls a Python worker, a mixed fleet shares one queue,
//! routing picks the right worker, garbage on a queue is rejected once, both publish the
//! same task message, `rpc://` results cross both ways, remote control (`ping`,
//! `revoke`) crosses both ways, and so do canvases (chains, groups, chords: results in
//! Redis). Celery's routing tutorial (`task_queues` with an exchange per queue,
//! `task_routes`, a worker per queue) runs here on both engines, RabbitMQ and Redis.
//!
//! The broker is RabbitMQ (`CELERIAC_TEST_AMQP_URL`); results go to Redis under a key
//! prefix of the test's own, or (one test) travel back over `rpc://`. Every test works on
//! queues of its own (`amqp-interop-<uuid>`; `CELERIAC_INTEROP_QUEUE` makes the first the
//! Python app's default queue, so nothing declares the shared `celery` queue) and deletes
//! them, with the exchanges of the same names, when it ends. Node names carry the test's
//! tag too: RabbitMQ's pidbox queues are named after them, and tests run in parallel.
//!
//! The Python side is `tests/python/` (see its README): `client.py`'s `amqp_publish`,
//! `amqp_get`, `amqp_depth` and `amqp_delete` ops talk py-amqp directly.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use celeriac::{App, Signature};
use celeriac_testing::python::{celery_venv, CeleryVenv};
use celeriac_testing::services::{self, RedisScope};
use serde_json::{json, Value};

use crate::interop;
use crate::proc::WorkerProcess;
use crate::support::*;

/// One test's RabbitMQ queues, Redis prefix and Python venv.
pub(crate) struct AmqpInterop {
    pub(crate) venv: CeleryVenv,
    scope: RedisScope,
    amqp: String,
    /// This test's queues; the first is the Python app's default queue.
    queues: Vec<String>,
    /// Unique per test: goes into node names.
    tag: String,
    /// Where every process stores results: this test's Redis scope, or `rpc://`.
    rpc: bool,
}

impl AmqpInterop {
    /// A scope with `n` queues of its own, or `None` (skipped loudly) without RabbitMQ,
    /// Redis or Python Celery.
    pub(crate) fn new(test: &str, n: usize) -> Option<Self> {
        let amqp = services::require(
            test,
            "RabbitMQ",
            &services::amqp_url(),
            "start rabbitmq-server or set CELERIAC_TEST_AMQP_URL",
        )?;
        let scope = RedisScope::new(test)?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repository root");
        let venv = celery_venv(test, root)?;
        let queues: Vec<String> = (0..n).map(|_| services::unique("amqp-interop")).collect();
        let tag = queues[0]
            .rsplit('-')
            .next()
            .unwrap_or_default()
            .chars()
            .take(10)
            .collect();
        Some(Self {
            venv,
            scope,
            amqp,
            queues,
            tag,
            rpc: false,
        })
    }

    pub(crate) fn queue(&self, i: usize) -> &str {
        &self.queues[i]
    }

    /// A node name unique to this test.
    pub(crate) fn node(&self, who: &str) -> String {
        format!("{who}-{}@test", self.tag)
    }

    /// The Redis database results and `tasks.record` lists live in.
    fn redis(&self) -> String {
        format!("{}/0", self.scope.base)
    }

    /// The result backend URL every process uses.
    fn backend(&self) -> String {
        if self.rpc {
            "rpc://".into()
        } else {
            self.scope.url("")
        }
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let backend = if self.rpc {
            "rpc://".into()
        } else {
            self.redis()
        };
        vec![
            ("CELERIAC_INTEROP_BROKER", self.amqp.clone()),
            ("CELERIAC_INTEROP_BACKEND", backend),
            ("CELERIAC_INTEROP_RECORD", self.redis()),
            ("CELERIAC_INTEROP_KEYPREFIX", self.scope.prefix.clone()),
            ("CELERIAC_INTEROP_QUEUE", self.queues[0].clone()),
            ("PYTHONPATH", self.venv.harness.display().to_string()),
        ]
    }

    /// A celeriac worker process on `broker` (this test's RabbitMQ, maybe spelled
    /// `pyamqp://`) storing results in this test's backend.
    fn rust_worker_on(&self, broker: &str, args: &[&str]) -> WorkerProcess {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let backend = self.backend();
        let mut all = vec!["--backend", backend.as_str()];
        all.extend_from_slice(args);
        WorkerProcess::spawn(broker, &all, &env)
    }

    pub(crate) fn rust_worker(&self, args: &[&str]) -> WorkerProcess {
        self.rust_worker_on(&self.amqp, args)
    }

    /// A stock Python Celery worker consuming `queues` (comma separated).
    fn python_worker(&self, name: &str, queues: &str, concurrency: u32) -> WorkerProcess {
        let mut cmd = Command::new(self.venv.celery());
        cmd.args([
            "-A",
            "celeriac_interop.tasks",
            "worker",
            "-Q",
            queues,
            "--pool",
            "threads",
        ])
        .args(["-c", &concurrency.to_string(), "-n", name])
        .args([
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "info",
        ]);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        WorkerProcess::spawn_command(cmd, &format!("{name} ready."))
    }

    /// A celeriac client app: RabbitMQ broker, this test's results and default queue.
    async fn app(&self) -> App {
        builder_on(&self.amqp)
            .result_backend_url(self.backend())
            .default_queue(self.queue(0))
            .build()
            .await
            .unwrap()
    }

    /// Runs Python client requests (one JSON object each) and returns its responses;
    /// panics unless every request got an answer without `error`.
    pub(crate) async fn python_client(&self, requests: Vec<Value>) -> Vec<Value> {
        python_batch(&self.venv, self.env(), requests).await
    }

    /// Messages ready in `queue` once no consumer is left on it (so whatever a stopped
    /// worker held unacknowledged is counted: RabbitMQ put it back when its channel
    /// closed).
    async fn depth_when_idle(&self, queue: &str) -> u64 {
        let r = self
            .python_client(vec![
                json!({"op": "amqp_depth", "queue": queue, "idle_within": 10}),
            ])
            .await;
        assert_eq!(
            r[0]["consumers"],
            json!(0),
            "{queue} still consumed: {}",
            r[0]
        );
        r[0]["messages"].as_u64().unwrap()
    }
}

impl Drop for AmqpInterop {
    /// Deletes this test's queues and the exchanges of the same names. (Workers are
    /// declared after the scope, so they are gone by now and no consumer declares them
    /// again.)
    fn drop(&mut self) {
        let request = json!({"op": "amqp_delete", "queues": self.queues});
        let (responses, stderr) = run_client(
            &self.venv.python(),
            &self.venv.client(),
            &self.env(),
            &[request],
        );
        if responses.len() != 1 || responses[0].get("error").is_some() {
            let _ = writeln!(
                std::io::stderr(),
                "could not delete RabbitMQ queues {:?}: {responses:?}\n{stderr}",
                self.queues
            );
        }
    }
}

/// Runs `client.py` on `requests`: the lines it answered (a line that is not JSON
/// becomes an `error` response), and its stderr. Never panics: `Drop` uses it too.
fn run_client(
    python: &Path,
    client: &Path,
    env: &[(&'static str, String)],
    requests: &[Value],
) -> (Vec<Value>, String) {
    let mut cmd = Command::new(python);
    cmd.arg(client)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (Vec::new(), format!("cannot run {}: {e}", python.display())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        for r in requests {
            if writeln!(stdin, "{r}").is_err() {
                break;
            }
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return (Vec::new(), format!("python client lost: {e}")),
    };
    let responses = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|_| json!({"error": format!("not JSON: {l}")}))
        })
        .collect();
    (responses, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs Python client requests with `env` and returns its responses; panics unless every
/// request got an answer without `error`.
async fn python_batch(
    venv: &CeleryVenv,
    env: Vec<(&'static str, String)>,
    requests: Vec<Value>,
) -> Vec<Value> {
    let (python, client) = (venv.python(), venv.client());
    tokio::task::spawn_blocking(move || {
        let (responses, stderr) = run_client(&python, &client, &env, &requests);
        assert_eq!(
            responses.len(),
            requests.len(),
            "python client answered {} of {} requests; stderr:\n{stderr}",
            responses.len(),
            requests.len(),
        );
        for (req, resp) in requests.iter().zip(&responses) {
            assert!(
                resp.get("error").is_none(),
                "python client failed on {req}: {resp}\nstderr:\n{stderr}"
            );
        }
        responses
    })
    .await
    .expect("client thread")
}

fn send(name: &str, args: Value) -> Value {
    json!({"op": "send", "name": name, "args": args, "wait": 20})
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Wire spec §8.1 on RabbitMQ: a stock Python client (py-amqp) against a celeriac worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_a_celeriac_worker_on_rabbitmq() {
    let Some(it) = AmqpInterop::new("python_client_calls_a_celeriac_worker_on_rabbitmq", 1) else {
        return;
    };
    let node = it.node("rust");
    let mut rust = it.rust_worker(&["-Q", it.queue(0), "-c", "4", "-n", &node]);
    let big: Vec<i64> = (0..10_000).collect();
    // The client answers in order, so the ETA request goes first and is due well after
    // the client has started.
    let eta = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let mut with_eta = send("tasks.add", json!([2, 2]));
    with_eta["eta"] = json!(eta);
    let mut countdown = send("tasks.add", json!([1, 1]));
    countdown["countdown"] = json!(1.0);
    let mut expired = send("tasks.add", json!([3, 3]));
    expired["expires"] = json!(-5);
    // Priority is a plain AMQP property here (the queue has no x-max-priority).
    let mut whoami = send("tasks.whoami", json!([]));
    whoami["priority"] = json!(9);
    let r = it
        .python_client(vec![
            with_eta,
            send("tasks.add", json!([2, 3])),
            send("tasks.fail", json!(["boom"])),
            send("tasks.echo", json!(["héllo ☃ 😀"])),
            send(
                "tasks.echo",
                json!([{"a": [1, {"b": null}], "c": 1.5, "d": [true, "x"]}]),
            ),
            send("tasks.echo", json!([big])),
            countdown,
            send("tasks.retry_once", json!(["k"])),
            send("tasks.nope", json!([])),
            expired,
            whoami,
            send("tasks.xsum", json!([[1, 2, 3, 4]])),
        ])
        .await;
    assert_eq!(r[0]["result"], json!(4), "{}", r[0]);
    assert!(
        r[0]["elapsed"].as_f64().unwrap() >= 1.0,
        "eta not honoured: {}",
        r[0]
    );
    assert_eq!(
        (r[1]["state"].clone(), r[1]["result"].clone()),
        (json!("SUCCESS"), json!(5))
    );
    assert_eq!(
        (r[2]["exc_type"].as_str(), r[2]["exc_message"].as_str()),
        (Some("ValueError"), Some("boom")),
        "{}",
        r[2]
    );
    assert_eq!(r[2]["state"], json!("FAILURE"));
    assert!(
        r[2]["traceback"]
            .as_str()
            .unwrap()
            .ends_with("ValueError: boom\n"),
        "{}",
        r[2]
    );
    assert_eq!(r[3]["result"], json!("héllo ☃ 😀"));
    assert_eq!(
        r[4]["result"],
        json!({"a": [1, {"b": null}], "c": 1.5, "d": [true, "x"]})
    );
    assert_eq!(r[5]["result"], json!(big));
    assert_eq!(r[6]["result"], json!(2), "{}", r[6]);
    assert!(
        r[6]["elapsed"].as_f64().unwrap() >= 1.0,
        "countdown not honoured: {}",
        r[6]
    );
    assert_eq!(r[7]["result"], json!("ok"), "retry: {}", r[7]);
    assert_eq!(r[8]["exc_type"], json!("NotRegistered"), "{}", r[8]);
    assert_eq!(
        (r[9]["state"].clone(), r[9]["exc_type"].clone()),
        (json!("REVOKED"), json!("TaskRevokedError")),
        "expired: {}",
        r[9]
    );
    assert_eq!(r[10]["result"], json!({"lang": "rust", "hostname": node}));
    assert_eq!(r[11]["result"], json!(10));
    let exit = rust.terminate();
    assert!(exit.success(), "celeriac worker exit:\n{}", rust.log());
    // The unknown task was rejected, not requeued; nothing else was left behind.
    assert_eq!(it.depth_when_idle(it.queue(0)).await, 0, "{}", rust.log());
}

/// Wire spec §8.2 on RabbitMQ: a celeriac client against a stock Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_client_calls_a_python_worker_on_rabbitmq() {
    let Some(it) = AmqpInterop::new("celeriac_client_calls_a_python_worker_on_rabbitmq", 2) else {
        return;
    };
    let node = it.node("py");
    let mut py = it.python_worker(&node, &format!("{},{}", it.queue(0), it.queue(1)), 4);
    let app = it.app().await;
    let call = |name: &str, args: Value| {
        Signature::new(name).args(args.as_array().cloned().unwrap_or_default())
    };
    assert_eq!(run::<i64>(&app, call("tasks.add", json!([2, 3]))).await, 5);
    let r = call("tasks.fail", json!(["boom"]))
        .apply_async(&app)
        .await
        .unwrap();
    let err = r.get::<Value>(WAIT).await.unwrap_err();
    let celeriac::Error::TaskFailed {
        exception,
        traceback,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (exception.exc_type.as_str(), exception.message()),
        ("ValueError", "boom".to_string())
    );
    assert_eq!(exception.exc_module.as_deref(), Some("builtins"));
    assert!(traceback.as_deref().unwrap().contains("ValueError: boom"));
    assert_eq!(
        run::<String>(&app, call("tasks.retry_once", json!(["k"]))).await,
        "ok"
    );
    let t0 = std::time::Instant::now();
    assert_eq!(
        run::<i64>(&app, call("tasks.add", json!([1, 1])).countdown(1.0)).await,
        2
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "countdown not honoured"
    );
    let eta = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let t0 = std::time::Instant::now();
    let r = call("tasks.add", json!([5, 5]))
        .eta(eta)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 10);
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "eta not honoured"
    );
    // The second queue, through its own binding; priority is a plain AMQP property.
    let who: Value = run(
        &app,
        call("tasks.whoami", json!([]))
            .queue(it.queue(1))
            .priority(5),
    )
    .await;
    assert_eq!(who, json!({"lang": "python", "hostname": node}));
    assert_eq!(
        run::<Value>(&app, call("tasks.echo", json!(["héllo ☃ 😀"]))).await,
        json!("héllo ☃ 😀")
    );
    let big: Vec<i64> = (0..10_000).collect();
    assert_eq!(
        run::<Vec<i64>>(&app, call("tasks.echo", json!([big]))).await,
        big
    );
    let r = app
        .send_task("tasks.nope", json!([]), json!({}))
        .await
        .unwrap();
    assert_eq!(exception_of(&r).await.exc_type, "NotRegistered");
    py.terminate();
    for q in [it.queue(0), it.queue(1)] {
        assert_eq!(it.depth_when_idle(q).await, 0, "{q}:\n{}", py.log());
    }
}

/// A Python worker and a celeriac worker consume one RabbitMQ queue; Python and celeriac
/// clients both send to it; every task runs exactly once and nothing is left over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleet_shares_a_rabbitmq_queue_and_runs_each_task_once() {
    let Some(it) = AmqpInterop::new(
        "mixed_fleet_shares_a_rabbitmq_queue_and_runs_each_task_once",
        1,
    ) else {
        return;
    };
    let q = it.queue(0).to_string();
    let mut py = it.python_worker(&it.node("py"), &q, 4);
    let mut rust = it.rust_worker(&[
        "-Q",
        &q,
        "-c",
        "2",
        "--prefetch",
        "2",
        "-n",
        &it.node("rust"),
    ]);
    let app = it.app().await;
    let k = key();
    // 0..100 from the celeriac client (one batch), 100..200 from the Python client.
    let mut sigs: Vec<Signature> = (0..100)
        .map(|i| Signature::new("tasks.record").args(vec![json!(k), json!(i)]))
        .collect();
    sigs.extend((0..60).map(|_| Signature::new("tasks.whoami")));
    let results = app.send_many(sigs).await.unwrap();
    let sent = it
        .python_client(
            (100..200)
                .map(|i| json!({"op": "send", "name": "tasks.record", "args": [k, i]}))
                .collect(),
        )
        .await;
    let mut hosts = std::collections::BTreeMap::<String, usize>::new();
    for r in &results[100..] {
        let who: Value = r.get(Duration::from_secs(30)).await.unwrap();
        *hosts
            .entry(who["lang"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for r in &results[..100] {
        r.get::<i64>(Duration::from_secs(30)).await.unwrap();
    }
    for s in &sent {
        let id = s["id"].as_str().unwrap();
        app.async_result(id)
            .get::<i64>(Duration::from_secs(30))
            .await
            .unwrap();
    }
    assert!(
        hosts.len() == 2,
        "both workers should have run tasks: {hosts:?}"
    );
    let values = it
        .python_client(vec![json!({"op": "records", "key": k})])
        .await[0]["values"]
        .clone();
    let mut got: Vec<i64> = values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..200).collect::<Vec<_>>(),
        "a task was lost or ran twice"
    );
    assert!(
        rust.terminate().success(),
        "celeriac worker exit:\n{}",
        rust.log()
    );
    py.terminate();
    assert_eq!(it.depth_when_idle(&q).await, 0, "messages left over");
}

/// Tasks a Python client routes to a named queue — through the default exchange
/// (`queue=`) or the queue's own direct exchange (`exchange=`, `routing_key=`) — run only
/// on the worker consuming that queue, celeriac or Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_routes_to_the_right_queue_on_rabbitmq() {
    let Some(it) = AmqpInterop::new("python_client_routes_to_the_right_queue_on_rabbitmq", 3)
    else {
        return;
    };
    let (a, b, p) = (it.node("a"), it.node("b"), it.node("py"));
    let _a = it.rust_worker(&["-Q", it.queue(0), "-n", &a]);
    // Celery's `pyamqp://` spelling of the same broker.
    let pyamqp = format!("py{}", it.amqp);
    assert!(pyamqp.starts_with("pyamqp://"), "{pyamqp}");
    let _b = it.rust_worker_on(&pyamqp, &["-Q", it.queue(1), "-n", &b]);
    let _p = it.python_worker(&p, it.queue(2), 2);
    let mut requests = Vec::new();
    for _ in 0..5 {
        let mut r = send("tasks.whoami", json!([]));
        r["queue"] = json!(it.queue(1));
        r["exchange"] = json!(it.queue(1));
        r["routing_key"] = json!(it.queue(1));
        requests.push(r);
    }
    for q in [it.queue(0), it.queue(2), it.queue(1)] {
        for _ in 0..5 {
            let mut r = send("tasks.whoami", json!([]));
            r["queue"] = json!(q);
            requests.push(r);
        }
    }
    let r = it.python_client(requests).await;
    let hosts: Vec<&str> = r
        .iter()
        .map(|x| x["result"]["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(hosts[..5], [b.as_str(); 5], "by exchange");
    assert_eq!(hosts[5..10], [a.as_str(); 5]);
    assert_eq!(hosts[10..15], [p.as_str(); 5]);
    assert_eq!(hosts[15..], [b.as_str(); 5]);
}

/// A message that is not a task message: the `amqp_publish` request, a piece of the
/// reason the worker must log, and the FAILURE (task id, exception type) it must store
/// when the message names a task id.
struct Garbage<'a> {
    publish: Value,
    reason: &'a str,
    failure: Option<(&'a str, &'a str)>,
}

/// Messages on a RabbitMQ queue that are not task messages, published with py-amqp, are
/// each logged with a reason and rejected (a FAILURE stored where they name a task id),
/// never redelivered; the celeriac worker goes on and runs the task sent after them.
///
/// Only the celeriac worker is tried: stock Celery 5.7 stores no FAILURE for these, and
/// its worker stops (`Unrecoverable error: KeyError('id')`) at the message with a `task`
/// header and no `id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_rabbitmq_queue_is_rejected_and_the_worker_goes_on() {
    let Some(it) = AmqpInterop::new(
        "garbage_on_a_rabbitmq_queue_is_rejected_and_the_worker_goes_on",
        1,
    ) else {
        return;
    };
    let q = it.queue(0).to_string();
    let mut rust = it.rust_worker(&["-Q", &q, "-c", "2", "-n", &it.node("rust")]);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let json_ct = "application/json";
    let task = |id: Option<&str>| match id {
        Some(id) => json!({"task": "tasks.add", "id": id, "lang": "py"}),
        None => json!({"task": "tasks.add", "lang": "py"}),
    };
    let publish = |body: Value, ct: Option<&str>, headers: Value| {
        let mut r = json!({"op": "amqp_publish", "queue": q, "headers": headers,
                           "delivery_mode": 2});
        r["body_b64"] = body;
        if let Some(ct) = ct {
            r["content_type"] = json!(ct);
            r["content_encoding"] = json!(if ct == json_ct { "utf-8" } else { "binary" });
        }
        r
    };
    let ok_body = json!(b64(br#"[[1, 2], {}, {"callbacks": null}]"#));
    let (bad_json, pickled, shape, no_ct, empty) = (uuid(), uuid(), uuid(), uuid(), uuid());
    let garbage = vec![
        Garbage {
            publish: publish(
                json!(b64(b"{not json")),
                Some(json_ct),
                task(Some(&bad_json)),
            ),
            reason: "can't decode message body",
            failure: Some((bad_json.as_str(), "DecodeError")),
        },
        Garbage {
            // pickle.dumps((1, 2)), protocol 4
            publish: publish(
                json!(b64(
                    b"\x80\x04\x95\x07\x00\x00\x00\x00\x00\x00\x00K\x01K\x02\x86\x94."
                )),
                Some("application/x-python-serialize"),
                task(Some(&pickled)),
            ),
            reason: "refusing to deserialize untrusted content of type pickle",
            failure: Some((pickled.as_str(), "ContentDisallowed")),
        },
        Garbage {
            publish: publish(ok_body.clone(), Some(json_ct), Value::Null),
            reason: "message has no `task` header",
            failure: None,
        },
        Garbage {
            publish: publish(ok_body.clone(), Some(json_ct), task(None)),
            reason: "message has no `id` header",
            failure: None,
        },
        Garbage {
            publish: publish(
                ok_body.clone(),
                Some(json_ct),
                json!({"task": "tasks.add", "id": 12345}),
            ),
            reason: "header `id` is invalid",
            failure: None,
        },
        Garbage {
            publish: publish(
                json!(b64(br#""just a string""#)),
                Some(json_ct),
                task(Some(&shape)),
            ),
            reason: "message body has the wrong shape",
            failure: Some((shape.as_str(), "InvalidTaskError")),
        },
        Garbage {
            // No content type at all, and a body that is not even UTF-8.
            publish: publish(json!(b64(b"\xff\xfe\xfd")), None, task(Some(&no_ct))),
            reason: "can't decode message body",
            failure: Some((no_ct.as_str(), "DecodeError")),
        },
        Garbage {
            publish: publish(json!(b64(b"")), Some(json_ct), task(Some(&empty))),
            reason: "can't decode message body",
            failure: Some((empty.as_str(), "DecodeError")),
        },
    ];
    let mut requests: Vec<Value> = garbage.iter().map(|g| g.publish.clone()).collect();
    // The marker, published after the garbage (every publish above was confirmed).
    requests.push(send("tasks.add", json!([20, 22])));
    let stored: Vec<(&str, &str)> = garbage.iter().filter_map(|g| g.failure).collect();
    for (id, _) in &stored {
        requests.push(json!({"op": "get", "id": id, "wait": 10}));
    }
    let r = it.python_client(requests).await;
    let marker = &r[garbage.len()];
    assert_eq!(
        marker["result"],
        json!(42),
        "marker: {marker}\n{}",
        rust.log()
    );
    for (i, (id, exc_type)) in stored.iter().enumerate() {
        let got = &r[garbage.len() + 1 + i];
        assert_eq!(
            (&got["state"], got["exc_type"].as_str()),
            (&json!("FAILURE"), Some(*exc_type)),
            "garbage {id}: {got}"
        );
    }
    for g in &garbage {
        rust.wait_for_log(g.reason, Duration::from_secs(10));
    }
    assert!(
        rust.terminate().success(),
        "celeriac worker exit:\n{}",
        rust.log()
    );
    let log = rust.log();
    let rejected = log
        .lines()
        .filter(|l| l.contains("Received invalid task message"))
        .count();
    assert_eq!(
        rejected,
        garbage.len(),
        "each garbage message logged once:\n{log}"
    );
    for g in &garbage {
        assert_eq!(
            log.lines().filter(|l| l.contains(g.reason)).count(),
            garbage.iter().filter(|h| h.reason == g.reason).count(),
            "{}:\n{log}",
            g.reason
        );
    }
    assert_eq!(
        it.depth_when_idle(&q).await,
        0,
        "garbage left on the queue:\n{log}"
    );
}

/// Wire spec §4.3: a task message a celeriac client publishes on RabbitMQ is, as py-amqp
/// decodes it, the one Celery publishes for the same call — the same properties (task
/// id as `correlation_id`, `reply_to`, persistent, `priority`, `expiration` in ms), the
/// same header names with the same Python types, the same body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celeriac_task_message_on_rabbitmq_is_what_celery_publishes() {
    let Some(it) = AmqpInterop::new(
        "a_celeriac_task_message_on_rabbitmq_is_what_celery_publishes",
        1,
    ) else {
        return;
    };
    let q = it.queue(0).to_string();
    let app = it.app().await;
    // Nobody consumes the queue: both messages wait in it.
    let ours = Signature::new("tasks.add")
        .args(vec![json!(2), json!(3)])
        .countdown(30.0)
        .expires(60.0)
        .priority(5)
        .time_limit(10.0)
        .soft_time_limit(5.0)
        .apply_async(&app)
        .await
        .unwrap();
    let r = it
        .python_client(vec![
            json!({"op": "send", "name": "tasks.add", "args": [2, 3], "countdown": 30,
                   "expires": 60, "priority": 5, "time_limit": 10, "soft_time_limit": 5}),
            json!({"op": "amqp_get", "queue": q, "count": 3}),
        ])
        .await;
    let theirs_id = r[0]["id"].as_str().unwrap();
    let got = r[1]["messages"].as_array().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let (rust, py) = (&got[0], &got[1]);
    assert_eq!(rust["headers"]["id"], json!(ours.id()), "{rust}");
    assert_eq!(py["headers"]["id"], json!(theirs_id), "{py}");
    for (m, id) in [(rust, ours.id()), (py, theirs_id)] {
        assert_eq!(
            m["delivery_info"]["exchange"].as_str(),
            Some(""),
            "published to the default exchange: {m}"
        );
        assert_eq!(m["delivery_info"]["routing_key"].as_str(), Some(q.as_str()));
        let p = &m["properties"];
        assert_eq!(p["correlation_id"], json!(id), "{m}");
        assert!(p["reply_to"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
        assert_eq!(
            (
                &p["content_type"],
                &p["content_encoding"],
                &p["delivery_mode"],
                &p["priority"]
            ),
            (
                &json!("application/json"),
                &json!("utf-8"),
                &json!(2),
                &json!(5)
            ),
            "{m}"
        );
        // Seconds until expiry × 1000, as a decimal string (60000, or a hair under).
        let ms: u64 = p["expiration"].as_str().unwrap().parse().unwrap();
        assert!((59_000..=60_000).contains(&ms), "{m}");
        assert_eq!(m["headers"]["timelimit"], json!([10, 5]), "{m}");
        for h in ["eta", "expires"] {
            let t = m["headers"][h].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with("+00:00"),
                "{h}: {m}"
            );
        }
    }
    let keys = |m: &Value| {
        m["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(keys(rust), keys(py), "property names");
    let types = |m: &Value| -> std::collections::BTreeMap<String, String> {
        m["header_types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect()
    };
    let (mut ours_t, mut theirs_t) = (types(rust), types(py));
    // Celery sends `ignore_result: None` unless asked, celeriac its bool; both read alike.
    for t in [&mut ours_t, &mut theirs_t] {
        if t.get("ignore_result").is_some_and(|v| v == "bool") {
            t.insert("ignore_result".into(), "NoneType".into());
        }
    }
    assert_eq!(ours_t, theirs_t, "header names and their AMQP field types");
    let body = |m: &Value| serde_json::from_str::<Value>(m["body"].as_str().unwrap()).unwrap();
    assert_eq!(body(rust), body(py));
}

/// Celery's `rpc://` results cross too: a Python client's results come back from a
/// celeriac worker to its reply queue, and a celeriac client's from a Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_results_cross_between_python_and_celeriac_on_rabbitmq() {
    let Some(mut it) = AmqpInterop::new(
        "rpc_results_cross_between_python_and_celeriac_on_rabbitmq",
        2,
    ) else {
        return;
    };
    it.rpc = true;
    let rust_node = it.node("rust");
    let py_node = it.node("py");
    let _rust = it.rust_worker(&["-Q", it.queue(0), "-c", "2", "-n", &rust_node]);
    let _py = it.python_worker(&py_node, it.queue(1), 2);

    // A Python client with rpc:// results, against the celeriac worker.
    let r = it
        .python_client(vec![
            send("tasks.add", json!([2, 3])),
            send("tasks.fail", json!(["boom"])),
            send("tasks.retry_once", json!(["k"])),
            send("tasks.whoami", json!([])),
        ])
        .await;
    assert_eq!(
        (&r[0]["state"], &r[0]["result"]),
        (&json!("SUCCESS"), &json!(5)),
        "{}",
        r[0]
    );
    assert_eq!(
        (r[1]["exc_type"].as_str(), r[1]["exc_message"].as_str()),
        (Some("ValueError"), Some("boom")),
        "{}",
        r[1]
    );
    assert_eq!(r[2]["result"], json!("ok"), "{}", r[2]);
    assert_eq!(
        r[3]["result"],
        json!({"lang": "rust", "hostname": rust_node})
    );

    // A celeriac client with rpc:// results, against the Python worker.
    let app = it.app().await;
    assert_eq!(app.backend_url(), "rpc://");
    let on_py = |name: &str, args: Vec<Value>| Signature::new(name).args(args).queue(it.queue(1));
    assert_eq!(
        run::<i64>(&app, on_py("tasks.add", vec![json!(2), json!(3)])).await,
        5
    );
    let r = on_py("tasks.fail", vec![json!("boom")])
        .apply_async(&app)
        .await
        .unwrap();
    let exc = exception_of(&r).await;
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        ("ValueError", "boom".to_string())
    );
    assert_eq!(
        run::<String>(&app, on_py("tasks.retry_once", vec![json!("k")])).await,
        "ok"
    );
    let who: Value = run(&app, on_py("tasks.whoami", vec![])).await;
    assert_eq!(who, json!({"lang": "python", "hostname": py_node}));
}

/// `{"<node>": {"ok": "pong"}}`: a worker's reply to `ping`.
fn pong(node: &str) -> Value {
    let mut reply = serde_json::Map::new();
    reply.insert(node.to_string(), json!({"ok": "pong"}));
    Value::Object(reply)
}

/// Waits until `worker` has logged receiving task `name[id]`, then checks that the queue
/// has no message ready and one consumer: the worker holds the task, unacknowledged (for
/// its countdown).
async fn held(it: &AmqpInterop, queue: &str, worker: &WorkerProcess, name: &str, id: &str) {
    worker.wait_for_log(&format!("{name}[{id}] received"), Duration::from_secs(10));
    let r = it
        .python_client(vec![json!({"op": "amqp_depth", "queue": queue})])
        .await;
    assert_eq!(
        (&r[0]["messages"], &r[0]["consumers"]),
        (&json!(0), &json!(1)),
        "{queue}: {}",
        r[0]
    );
}

/// Remote control over RabbitMQ's pidbox exchanges: a Python client's `ping` gets a
/// celeriac worker's reply, and its `revoke` stops a task the celeriac worker holds for
/// its countdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_pings_and_revokes_on_a_celeriac_worker_on_rabbitmq() {
    let Some(it) = AmqpInterop::new(
        "python_client_pings_and_revokes_on_a_celeriac_worker_on_rabbitmq",
        1,
    ) else {
        return;
    };
    let q = it.queue(0).to_string();
    let node = it.node("rust");
    let mut rust = it.rust_worker(&["-Q", &q, "-n", &node]);
    // Every worker on the broker hears a broadcast (other tests' too): the first ping asks
    // this one only (and returns at its reply), the second asks everyone.
    let r = it
        .python_client(vec![
            json!({"op": "ping", "timeout": 5, "destination": [node]}),
            json!({"op": "ping", "timeout": 1}),
        ])
        .await;
    assert_eq!(
        r[0]["replies"],
        json!([pong(&node)]),
        "ping {node}:\n{}",
        rust.log()
    );
    assert!(
        r[1]["replies"].as_array().unwrap().contains(&pong(&node)),
        "ping everyone: {}\n{}",
        r[1],
        rust.log()
    );

    let k = key();
    let sent = it
        .python_client(vec![
            json!({"op": "send", "name": "tasks.record", "args": [k, 1], "countdown": 3}),
        ])
        .await;
    let id = sent[0]["id"].as_str().unwrap().to_string();
    held(&it, &q, &rust, "tasks.record", &id).await;
    // The marker: the same task on the same queue, recording 2 instead of 1, due after the
    // revoked one. Once it has run, the revoked one came due; had it run, 1 would be
    // recorded (before 2).
    let r = it
        .python_client(vec![
            json!({"op": "revoke", "id": id}),
            json!({"op": "get", "id": id, "wait": 10}),
            json!({"op": "send", "name": "tasks.record", "args": [k, 2], "countdown": 3, "wait": 20}),
            json!({"op": "records", "key": k}),
        ])
        .await;
    assert_eq!(
        (r[1]["state"].clone(), r[1]["exc_type"].clone()),
        (json!("REVOKED"), json!("TaskRevokedError")),
        "{}\n{}",
        r[1],
        rust.log()
    );
    assert_eq!(r[2]["result"], json!(2), "marker: {}", r[2]);
    assert_eq!(r[3]["values"], json!([2]), "the revoked task ran");
    assert!(
        rust.terminate().success(),
        "celeriac worker exit:\n{}",
        rust.log()
    );
    // The revoked message was acknowledged, not left for the next worker.
    assert_eq!(it.depth_when_idle(&q).await, 0, "{}", rust.log());
}

/// Remote control the other way: a celeriac client's `ping` (to every worker, and to one
/// by name) gets a stock Python worker's reply on RabbitMQ, and its `revoke` stops a task
/// the Python worker holds for its countdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_client_pings_a_python_worker_on_rabbitmq() {
    let Some(it) = AmqpInterop::new("celeriac_client_pings_a_python_worker_on_rabbitmq", 1) else {
        return;
    };
    let q = it.queue(0).to_string();
    let node = it.node("py");
    let mut py = it.python_worker(&node, &q, 2);
    let app = it.app().await;
    // celeriac's reply queue `<oid>.reply.celery.pidbox` goes when its consumer does, and
    // no exchange of that name is made (it once was, and stayed: checked below).
    let reply_exchange = format!("{}.reply.celery.pidbox", app.reply_to());
    // Every worker on the broker answers (other tests' too); this one among them, once.
    let replies = app.control().ping(Duration::from_secs(2)).await.unwrap();
    let ours: Vec<&Value> = replies
        .iter()
        .filter(|(n, _)| *n == node)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(ours, [&json!({"ok": "pong"})], "{replies:?}\n{}", py.log());
    let replies = app
        .control()
        .broadcast(
            "ping",
            json!({}),
            Some(std::slice::from_ref(&node)),
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(replies, [(node.clone(), json!({"ok": "pong"}))]);
    let k = key();
    let record = |n: i64| Signature::new("tasks.record").args(vec![json!(k), json!(n)]);
    let r = record(1).countdown(3.0).apply_async(&app).await.unwrap();
    held(&it, &q, &py, "tasks.record", r.id()).await;
    app.control().revoke(&[r.id()], false).await.unwrap();
    let err = r.get::<i64>(Duration::from_secs(10)).await.unwrap_err();
    assert!(
        matches!(err, celeriac::Error::TaskRevoked { .. }),
        "{err}\n{}",
        py.log()
    );
    let exchanges = Command::new("rabbitmqctl")
        .args(["list_exchanges", "name", "--quiet", "--no-table-headers"])
        .output();
    if let Some(out) = exchanges.ok().filter(|o| o.status.success()) {
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            !listing.lines().any(|l| l.trim() == reply_exchange),
            "a reply exchange `{reply_exchange}` was left on the server"
        );
    }
    // The marker, due after the revoked task (see above).
    let marker = record(2).countdown(3.0).apply_async(&app).await.unwrap();
    assert_eq!(marker.get::<i64>(Duration::from_secs(20)).await.unwrap(), 2);
    let values = it
        .python_client(vec![json!({"op": "records", "key": k})])
        .await;
    assert_eq!(values[0]["values"], json!([2]), "the revoked task ran");
    py.terminate();
    assert_eq!(it.depth_when_idle(&q).await, 0, "{}", py.log());
}

/// The routing tutorial's queues for one test: `default-<tag>`, `for_task_A-<tag>` and
/// `for_task_B-<tag>`.
fn tutorial_queues(tag: &str) -> [String; 3] {
    ["default", "for_task_A", "for_task_B"].map(|q| format!("{q}-{tag}"))
}

/// The Python client's settings in the tutorial, with this test's queue names:
///
/// ```python
/// task_default_queue = 'default'
/// task_queues = (
///     Queue('default', Exchange('default'), routing_key='default'),
///     Queue('for_task_A', Exchange('for_task_A'), routing_key='for_task_A'),
///     Queue('for_task_B', Exchange('for_task_B'), routing_key='for_task_B'),
/// )
/// task_routes = {
///     'tasks.taskA': {'queue': 'for_task_A', 'routing_key': 'for_task_A'},
///     'tasks.taskB': {'queue': 'for_task_B', 'routing_key': 'for_task_B'},
/// }
/// ```
fn tutorial_env(queues: &[String; 3]) -> Vec<(&'static str, String)> {
    let [default, a, b] = queues;
    let task_queues = json!([[default, default, default], [a, a, a], [b, b, b]]);
    let task_routes = json!({
        "tasks.taskA": {"queue": a, "routing_key": a},
        "tasks.taskB": {"queue": b, "routing_key": b},
    });
    vec![
        ("CELERIAC_INTEROP_QUEUE", default.clone()),
        ("CELERIAC_INTEROP_TASK_QUEUES", task_queues.to_string()),
        ("CELERIAC_INTEROP_TASK_ROUTES", task_routes.to_string()),
    ]
}

/// The node name a worker announced (`<node> ready.`).
fn node_name(w: &WorkerProcess) -> String {
    let log = w.log();
    let line = log
        .lines()
        .map(str::trim_end)
        .find(|l| l.ends_with(" ready."))
        .unwrap_or_else(|| panic!("no `ready.` line:\n{log}"));
    let line = line.trim_end_matches(" ready.");
    line.rsplit(' ').next().unwrap_or(line).to_string()
}

/// The routing tutorial (a Python client configured as in [`tutorial_env`]) against three
/// celeriac workers, `-n workerA.%h -Q for_task_A`, `-n workerB.%h -Q for_task_B` and
/// `-n worker.%h -Q default`: `tasks.taskA` runs only on workerA, `tasks.taskB` only on
/// workerB, and the unrouted `tasks.add` (and `tasks.whoami`) only on the default queue's
/// worker. The workers are stopped (warm) at the end.
async fn routing_tutorial(
    venv: &CeleryVenv,
    env: Vec<(&'static str, String)>,
    queues: &[String; 3],
    worker: impl Fn(&[&str]) -> WorkerProcess,
) {
    let [default, a, b] = queues;
    let mut workers = [
        worker(&["-n", "workerA.%h", "-Q", a, "-c", "2"]),
        worker(&["-n", "workerB.%h", "-Q", b, "-c", "2"]),
        worker(&["-n", "worker.%h", "-Q", default, "-c", "2"]),
    ];
    let [node_a, node_b, node_d] = [0, 1, 2].map(|i| node_name(&workers[i]));
    for (node, prefix) in [
        (&node_a, "workerA."),
        (&node_b, "workerB."),
        (&node_d, "worker."),
    ] {
        assert!(node.contains(prefix), "{node}");
    }
    let logs = |w: &[WorkerProcess; 3]| {
        format!(
            "workerA:\n{}\nworkerB:\n{}\nworker:\n{}",
            w[0].log(),
            w[1].log(),
            w[2].log()
        )
    };
    let mut requests = Vec::new();
    for i in 0..3 {
        requests.push(send("tasks.taskA", json!([i, 10])));
        requests.push(send("tasks.taskB", json!([i, 10, 100])));
        requests.push(send("tasks.add", json!([i, 1000])));
    }
    requests.push(send("tasks.whoami", json!([])));
    let r = python_batch(venv, env, requests).await;
    for i in 0..3 {
        let (ra, rb, radd) = (&r[3 * i], &r[3 * i + 1], &r[3 * i + 2]);
        assert_eq!(
            ra["result"],
            json!({"result": i + 10, "hostname": node_a, "queue": a}),
            "taskA: {ra}\n{}",
            logs(&workers)
        );
        assert_eq!(
            rb["result"],
            json!({"result": i + 110, "hostname": node_b, "queue": b}),
            "taskB: {rb}\n{}",
            logs(&workers)
        );
        assert_eq!(radd["result"], json!(i + 1000), "add: {radd}");
        // `tasks.add` says nothing of its worker: the default queue's worker logged it.
        let id = radd["id"].as_str().unwrap();
        workers[2].wait_for_log(
            &format!("tasks.add[{id}] received"),
            Duration::from_secs(10),
        );
    }
    assert_eq!(
        r[9]["result"],
        json!({"lang": "rust", "hostname": node_d}),
        "whoami: {}",
        r[9]
    );
    for w in &mut workers {
        assert!(w.terminate().success(), "worker exit:\n{}", w.log());
    }
    // Each worker received only the tasks of its queue.
    let only = [
        ("workerA", "tasks.taskA[", 3),
        ("workerB", "tasks.taskB[", 3),
        ("worker", "tasks.", 4),
    ];
    for (w, (name, mine, n)) in workers.iter().zip(only) {
        let log = w.log();
        let received: Vec<&str> = log.lines().filter(|l| l.contains("] received")).collect();
        assert_eq!(received.len(), n, "{name}:\n{log}");
        assert!(received.iter().all(|l| l.contains(mine)), "{name}:\n{log}");
    }
}

/// The routing tutorial on Redis: the queues and their exchanges are kombu's emulation,
/// under this test's key prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_routing_python_client_on_redis() {
    let test = "tutorial_routing_python_client_on_redis";
    let Some(scope) = RedisScope::new(test) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let Some(venv) = celery_venv(test, root) else {
        return;
    };
    let id = services::unique("tutorial");
    let queues = tutorial_queues(&id[id.len() - 10..]);
    let mut env = vec![
        ("CELERIAC_INTEROP_BROKER", format!("{}/0", scope.base)),
        ("CELERIAC_INTEROP_KEYPREFIX", scope.prefix.clone()),
        ("PYTHONPATH", venv.harness.display().to_string()),
    ];
    env.extend(tutorial_env(&queues));
    let url = scope.url("");
    let worker_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    routing_tutorial(&venv, env.clone(), &queues, |args| {
        WorkerProcess::spawn(&url, args, &worker_env)
    })
    .await;
}

/// The routing tutorial on RabbitMQ: Celery publishes `tasks.taskA` and `tasks.taskB` to
/// the queues' own direct exchanges (the routes name a routing key), `tasks.add` through
/// the default exchange; nothing is left in the queues, which are deleted at the end with
/// their exchanges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_routing_python_client_on_rabbitmq() {
    let Some(mut it) = AmqpInterop::new("tutorial_routing_python_client_on_rabbitmq", 1) else {
        return;
    };
    let queues = tutorial_queues(&it.tag);
    // Deleted (with the exchanges of the same names) when `it` goes.
    it.queues = queues.to_vec();
    let mut env = it.env();
    env.retain(|(k, _)| *k != "CELERIAC_INTEROP_QUEUE");
    env.extend(tutorial_env(&queues));
    routing_tutorial(&it.venv, env, &queues, |args| it.rust_worker(args)).await;
    for q in &queues {
        assert_eq!(it.depth_when_idle(q).await, 0, "{q}");
    }
}

/// Issue 6 on RabbitMQ: a stock Python client's chain, group, chord, callbacks,
/// map/starmap/chunks and saved group run on two celeriac workers sharing this test's
/// queue (results, chord joins and the saved group in Redis), with Celery's results and
/// errors; nothing is left in the queue.
///
/// Every signature names the queue (see `interop::routed`): a celeriac worker, like
/// Celery's, sends chain steps, chord bodies and callbacks to its app's default queue,
/// and the test app's is the shared `celery`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_canvas_runs_on_celeriac_workers_on_rabbitmq() {
    let Some(it) = AmqpInterop::new("python_canvas_runs_on_celeriac_workers_on_rabbitmq", 1) else {
        return;
    };
    let q = it.queue(0).to_string();
    let mut workers = [
        it.rust_worker(&["-Q", &q, "-c", "2", "-n", &it.node("rust1")]),
        it.rust_worker(&["-Q", &q, "-c", "2", "-n", &it.node("rust2")]),
    ];
    let logs = |w: &[WorkerProcess; 2]| format!("rust1:\n{}\nrust2:\n{}", w[0].log(), w[1].log());
    let r = it
        .python_client(interop::python_canvas_requests(Some(&q)))
        .await;
    let app = it.app().await;
    interop::check_python_canvas(&r, &app, || logs(&workers)).await;
    for w in &mut workers {
        assert!(
            w.terminate().success(),
            "celeriac worker exit:\n{}",
            w.log()
        );
    }
    assert_eq!(it.depth_when_idle(&q).await, 0, "{}", logs(&workers));
}

/// Issue 6 on RabbitMQ, the other way: a celeriac client's canvas runs on a stock Python
/// Celery worker — Celery continues its chains (on its default queue, this test's),
/// joins its chords in the Redis backend and restores its saved group; nothing is left
/// in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_canvas_runs_on_a_python_worker_on_rabbitmq() {
    let Some(it) = AmqpInterop::new("celeriac_canvas_runs_on_a_python_worker_on_rabbitmq", 1)
    else {
        return;
    };
    let q = it.queue(0).to_string();
    let mut py = it.python_worker(&it.node("py"), &q, 4);
    let app = it.app().await;
    let g = interop::celeriac_canvas(&app).await;
    let restored = it
        .python_client(vec![interop::restore_group_request(&g)])
        .await;
    interop::check_restored_group(&restored[0], &g);
    py.terminate();
    assert_eq!(it.depth_when_idle(&q).await, 0, "{}", py.log());
}
