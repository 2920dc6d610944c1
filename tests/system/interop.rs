//! Interop with stock Python Celery 5.7 on a real Redis: a Python client calls celeriac
//! workers, a celeriac client calls a Python worker, and a mixed fleet shares one queue.
//!
//! The Python side is `tests/python/` (see its README); its virtualenv is made on first
//! use. Each test works under a key prefix of its own on the shared Redis.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use celeriac::{chain, chord, group, GroupResult, Signature};
use celeriac_testing::python::{celery_venv, CeleryVenv};
use celeriac_testing::services::RedisScope;
use serde_json::{json, Value};

use crate::proc::WorkerProcess;
use crate::support::*;

pub(crate) struct Interop {
    pub(crate) venv: CeleryVenv,
    pub(crate) scope: RedisScope,
}

impl Interop {
    pub(crate) fn new(test: &str) -> Option<Self> {
        let scope = RedisScope::new(test)?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repository root");
        let venv = celery_venv(test, root)?;
        Some(Self { venv, scope })
    }

    fn broker(&self) -> String {
        format!("{}/0", self.scope.base)
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CELERIAC_INTEROP_BROKER", self.broker()),
            ("CELERIAC_INTEROP_KEYPREFIX", self.scope.prefix.clone()),
            ("PYTHONPATH", self.venv.harness.display().to_string()),
        ]
    }

    /// A celeriac worker process on this scope.
    pub(crate) fn rust_worker(&self, args: &[&str]) -> WorkerProcess {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        WorkerProcess::spawn(&self.scope.url(""), args, &env)
    }

    /// A stock Python Celery worker on this scope.
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

    /// Runs Python client requests (one JSON object each) and returns its responses.
    pub(crate) async fn python_client(&self, requests: Vec<Value>) -> Vec<Value> {
        let (python, client, env) = (self.venv.python(), self.venv.client(), self.env());
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(python);
            cmd.arg(client)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("python client starts");
            let mut stdin = child.stdin.take().expect("stdin");
            for r in &requests {
                writeln!(stdin, "{r}").expect("request written");
            }
            drop(stdin);
            let out = child.wait_with_output().expect("python client ends");
            let text = String::from_utf8_lossy(&out.stdout);
            let responses: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect();
            assert_eq!(
                responses.len(),
                requests.len(),
                "python client answered {} of {} requests; stderr:\n{}",
                responses.len(),
                requests.len(),
                String::from_utf8_lossy(&out.stderr)
            );
            for (req, resp) in requests.iter().zip(&responses) {
                assert!(
                    resp.get("error").is_none(),
                    "python client failed on {req}: {resp}"
                );
            }
            responses
        })
        .await
        .expect("client thread")
    }
}

fn send(name: &str, args: Value) -> Value {
    json!({"op": "send", "name": name, "args": args, "wait": 20})
}

/// Wire spec §8.1: a stock Python client against a celeriac worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_a_celeriac_worker() {
    let Some(it) = Interop::new("python_client_calls_a_celeriac_worker") else {
        return;
    };
    let _rust = it.rust_worker(&["-Q", "celery,q2", "-c", "4", "-n", "rust@test"]);
    let big: Vec<i64> = (0..10_000).collect();
    // The client answers in order, so the ETA request goes first and is due well after
    // the client has started.
    let eta = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let mut countdown = send("tasks.add", json!([1, 1]));
    countdown["countdown"] = json!(1.0);
    let mut with_eta = send("tasks.add", json!([2, 2]));
    with_eta["eta"] = json!(eta);
    let mut expired = send("tasks.add", json!([3, 3]));
    expired["expires"] = json!(-5);
    let mut on_q2 = send("tasks.whoami", json!([]));
    on_q2["queue"] = json!("q2");
    on_q2["priority"] = json!(9);
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
            on_q2,
            send("tasks.xsum", json!([[1, 2, 3, 4]])),
        ])
        .await;
    assert_eq!(r[0]["result"], json!(4));
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
        (Some("ValueError"), Some("boom"))
    );
    assert_eq!(r[2]["state"], json!("FAILURE"));
    assert!(r[2]["traceback"]
        .as_str()
        .unwrap()
        .ends_with("ValueError: boom\n"));
    assert_eq!(r[3]["result"], json!("héllo ☃ 😀"));
    assert_eq!(
        r[4]["result"],
        json!({"a": [1, {"b": null}], "c": 1.5, "d": [true, "x"]})
    );
    assert_eq!(r[5]["result"], json!(big));
    assert_eq!(r[6]["result"], json!(2));
    assert!(
        r[6]["elapsed"].as_f64().unwrap() >= 1.0,
        "countdown not honoured: {}",
        r[6]
    );
    assert_eq!(r[7]["result"], json!("ok"));
    assert_eq!(r[8]["exc_type"], json!("NotRegistered"));
    assert_eq!(
        (r[9]["state"].clone(), r[9]["exc_type"].clone()),
        (json!("REVOKED"), json!("TaskRevokedError"))
    );
    assert_eq!(
        r[10]["result"],
        json!({"lang": "rust", "hostname": "rust@test"})
    );
    assert_eq!(r[11]["result"], json!(10));
}

/// A task a Python client sends to `q2` runs only on the celeriac worker consuming `q2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_routes_to_the_q2_worker_only() {
    let Some(it) = Interop::new("python_client_routes_to_the_q2_worker_only") else {
        return;
    };
    let _a = it.rust_worker(&["-Q", "celery", "-n", "a@test"]);
    let _b = it.rust_worker(&["-Q", "q2", "-n", "b@test"]);
    let mut requests = Vec::new();
    for queue in ["q2", "celery"] {
        for _ in 0..5 {
            let mut r = send("tasks.whoami", json!([]));
            r["queue"] = json!(queue);
            requests.push(r);
        }
    }
    let r = it.python_client(requests).await;
    let hosts: Vec<&str> = r
        .iter()
        .map(|x| x["result"]["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(hosts[..5], ["b@test"; 5]);
    assert_eq!(hosts[5..], ["a@test"; 5]);
}

/// Priorities a Python client sets are honoured by a celeriac worker (kombu's buckets,
/// lowest first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_priorities_are_honoured_by_a_celeriac_worker() {
    let Some(it) = Interop::new("python_priorities_are_honoured_by_a_celeriac_worker") else {
        return;
    };
    let k = key();
    let requests = [9, 0, 6, 3]
        .iter()
        .map(|p| json!({"op": "send", "name": "tasks.record", "args": [k, p], "priority": p}))
        .collect();
    it.python_client(requests).await;
    let _w = it.rust_worker(&["-c", "1", "--prefetch", "1"]);
    let mut values = Vec::new();
    for _ in 0..200 {
        values = it
            .python_client(vec![json!({"op": "records", "key": k})])
            .await[0]["values"]
            .clone()
            .as_array()
            .cloned()
            .unwrap_or_default();
        if values.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(values, [json!(0), json!(3), json!(6), json!(9)]);
}

/// Wire spec §8.2: a celeriac client against a stock Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_client_calls_a_python_worker() {
    let Some(it) = Interop::new("celeriac_client_calls_a_python_worker") else {
        return;
    };
    let _py = it.python_worker("py@test", "celery,q2", 4);
    let app = builder_on(&it.scope.url("")).build().await.unwrap();
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
    let who: Value = run(
        &app,
        call("tasks.whoami", json!([])).queue("q2").priority(5),
    )
    .await;
    assert_eq!(who, json!({"lang": "python", "hostname": "py@test"}));
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
}

/// A Python worker and a celeriac worker on the same queue share the load, and every
/// task runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleet_shares_a_queue_and_runs_each_task_once() {
    let Some(it) = Interop::new("mixed_fleet_shares_a_queue_and_runs_each_task_once") else {
        return;
    };
    let mut py = it.python_worker("py@test", "celery", 4);
    let mut rust = it.rust_worker(&["-c", "2", "--prefetch", "2", "-n", "rust@test"]);
    let app = builder_on(&it.scope.url("")).build().await.unwrap();
    let k = key();
    let mut sigs: Vec<Signature> = (0..200)
        .map(|i| Signature::new("tasks.record").args(vec![json!(k), json!(i)]))
        .collect();
    sigs.extend((0..60).map(|_| Signature::new("tasks.whoami")));
    let results = app.send_many(sigs).await.unwrap();
    let mut hosts = std::collections::BTreeMap::<String, usize>::new();
    for r in &results[200..] {
        let who: Value = r.get(Duration::from_secs(30)).await.unwrap();
        *hosts
            .entry(who["lang"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for r in &results[..200] {
        r.get::<i64>(Duration::from_secs(30)).await.unwrap();
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
    let mut c = redis::Client::open(it.broker())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let unacked: u64 = redis::cmd("HLEN")
        .arg(format!("{}unacked", it.scope.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(unacked, 0, "messages left unacknowledged");
}

/// Fanout exchanges use kombu's channels: a Python client's `ping` broadcast reaches a
/// celeriac subscriber of `celery.pidbox`, and a `revoke` broadcast celeriac publishes
/// is obeyed by a Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_broadcasts_cross_between_python_and_celeriac() {
    let Some(it) = Interop::new("fanout_broadcasts_cross_between_python_and_celeriac") else {
        return;
    };
    let app = builder_on(&it.scope.url("")).build().await.unwrap();
    let mut pidbox = app
        .broker()
        .subscribe_fanout("celery.pidbox")
        .await
        .unwrap();
    let replies = it
        .python_client(vec![json!({"op": "ping", "timeout": 0.5})])
        .await;
    assert_eq!(
        replies[0]["replies"],
        json!([]),
        "nobody answers pings here"
    );
    let request = tokio::time::timeout(WAIT, pidbox.next())
        .await
        .expect("ping broadcast arrives")
        .unwrap();
    assert_eq!(request.properties.delivery_info.exchange, "celery.pidbox");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["method"], json!("ping"));

    let _py = it.python_worker("py@test", "celery", 2);
    let held = Signature::new("tasks.add")
        .args(vec![json!(1), json!(1)])
        .countdown(30.0);
    let r = held.apply_async(&app).await.unwrap();
    let revoke = json!({"method": "revoke", "arguments": {"task_id": r.id(), "terminate": false, "signal": "SIGTERM"},
                        "destination": null, "pattern": null, "matcher": null});
    let expires = chrono::Utc::now().timestamp() as f64 + 60.0;
    let message = celeriac::core::Message {
        headers: json!({"clock": 1, "expires": expires})
            .as_object()
            .cloned()
            .unwrap(),
        properties: celeriac::core::message::Properties {
            delivery_info: celeriac::core::message::DeliveryInfo {
                exchange: "celery.pidbox".into(),
                routing_key: String::new(),
                redelivered: None,
            },
            ..Default::default()
        },
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: revoke.to_string().into_bytes().into(),
    };
    // The worker must hold the task (it sits in `unacked`) before the revoke reaches it.
    let c = redis::Client::open(it.broker())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let unacked = format!("{}unacked", it.scope.prefix);
    until("the python worker holds the task", || {
        let (mut c, unacked) = (c.clone(), unacked.clone());
        async move {
            redis::cmd("HLEN")
                .arg(unacked)
                .query_async::<u64>(&mut c)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    app.broker()
        .publish_fanout("celery.pidbox", message)
        .await
        .unwrap();
    let err = r.get::<i64>(Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, celeriac::Error::TaskRevoked { .. }), "{err}");
}

/// A Python client's `ping` gets a celeriac worker's reply, and its `revoke` stops a
/// task the celeriac worker holds for its countdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_pings_and_revokes_on_a_celeriac_worker() {
    let Some(it) = Interop::new("python_client_pings_and_revokes_on_a_celeriac_worker") else {
        return;
    };
    let _rust = it.rust_worker(&["-n", "rust@test"]);
    let r = it
        .python_client(vec![json!({"op": "ping", "timeout": 1})])
        .await;
    assert_eq!(r[0]["replies"], json!([{"rust@test": {"ok": "pong"}}]));
    let k = key();
    let mut held = json!({"op": "send", "name": "tasks.record", "args": [k, 1], "countdown": 3});
    let sent = it.python_client(vec![held.take()]).await;
    let id = sent[0]["id"].as_str().unwrap().to_string();
    let c = redis::Client::open(it.broker())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let unacked = format!("{}unacked", it.scope.prefix);
    until("the celeriac worker holds the task", || {
        let (mut c, unacked) = (c.clone(), unacked.clone());
        async move {
            redis::cmd("HLEN")
                .arg(unacked)
                .query_async::<u64>(&mut c)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
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
        (json!("REVOKED"), json!("TaskRevokedError"))
    );
    assert_eq!(r[2]["result"], json!(2), "marker: {}", r[2]);
    assert_eq!(r[3]["values"], json!([2]), "the revoked task ran");
}

/// A task spec for the Python client's `canvas` op (tests/python/README.md).
fn py_task(name: &str, args: Value) -> Value {
    json!({"task": name, "args": args})
}

fn py_canvas(spec: Value) -> Value {
    json!({"op": "canvas", "canvas": spec, "wait": 30})
}

/// Puts `options.queue = queue` on every signature of a `canvas` spec (its links, chain
/// steps, group members and chord bodies too; not on `map`/`starmap`/`chunks`, which run
/// inline). Celery's workers — and celeriac's — send what follows a task (the next chain
/// step, a chord body, a callback) to their app's default queue unless the signature
/// names one; a celeriac worker's is `celery`, so on a shared RabbitMQ every signature
/// names the test's own queue.
fn routed(spec: &mut Value, queue: &str) {
    let Some(obj) = spec.as_object_mut() else {
        return;
    };
    for key in ["chain", "group", "chord", "link", "link_error"] {
        if let Some(items) = obj.get_mut(key).and_then(Value::as_array_mut) {
            items.iter_mut().for_each(|s| routed(s, queue));
        }
    }
    if let Some(body) = obj.get_mut("body") {
        routed(body, queue);
    }
    let inline = ["map", "starmap", "chunks"]
        .iter()
        .any(|k| obj.contains_key(*k));
    if obj.contains_key("task") && !inline {
        let options = obj.entry("options").or_insert_with(|| json!({}));
        options["queue"] = json!(queue);
    }
}

/// Issue 6's Python side: the Python client's requests — a chain, group, chord (one
/// failing), a failing chain, link and link_error, map/starmap/chunks, a chain through a
/// group, a saved group, and the callbacks' results. With `queue`, every signature is
/// routed there (see [`routed`]). Check the responses with [`check_python_canvas`].
pub(crate) fn python_canvas_requests(queue: Option<&str>) -> Vec<Value> {
    let (linked, errback) = (uuid(), uuid());
    let adds = |n: i64| {
        (0..n)
            .map(|i| py_task("tasks.add", json!([i, i])))
            .collect::<Vec<_>>()
    };
    let mut requests = vec![
        // 0: ((1+1)+3)*10
        py_canvas(json!({"chain": [
            py_task("tasks.add", json!([1, 1])),
            py_task("tasks.add", json!([3])),
            py_task("tasks.mul", json!([10])),
        ]})),
        // 1: a group, results in order
        py_canvas(json!({"group": adds(10)})),
        // 2: a chord
        py_canvas(json!({"chord": adds(10), "body": py_task("tasks.xsum", json!([]))})),
        // 3: a chord with a failing header member
        py_canvas(json!({"chord": [
            py_task("tasks.add", json!([1, 1])),
            py_task("tasks.fail", json!(["bad"])),
        ], "body": py_task("tasks.xsum", json!([]))})),
        // 4: a failure in the middle of a chain
        py_canvas(json!({"chain": [
            py_task("tasks.add", json!([1, 1])),
            {"task": "tasks.fail", "args": ["mid"], "immutable": true},
            py_task("tasks.add", json!([1])),
        ]})),
        // 5, 6: link and link_error
        py_canvas(json!({"task": "tasks.add", "args": [2, 2], "link": [
            {"task": "tasks.echo", "args": ["linked"], "immutable": true,
             "options": {"task_id": linked}}]})),
        py_canvas(json!({"task": "tasks.fail", "args": ["x"], "link_error": [
            {"task": "tasks.echo", "args": ["errback"], "immutable": true,
             "options": {"task_id": errback}}]})),
        // 7, 8, 9: map, starmap, chunks
        py_canvas(json!({"task": "tasks.echo", "map": [1, "two", [3]]})),
        py_canvas(json!({"task": "tasks.add", "starmap": [[1, 2], [3, 4]]})),
        py_canvas(
            json!({"task": "tasks.add", "chunks": (0..10).map(|i| json!([i, i])).collect::<Vec<_>>(), "n": 3}),
        ),
        // 10: a chain through a group (Celery makes it a chord): (2+1) + (2+2)
        py_canvas(json!({"chain": [
            py_task("tasks.add", json!([1, 1])),
            {"group": [py_task("tasks.add", json!([1])), py_task("tasks.add", json!([2]))]},
            py_task("tasks.xsum", json!([])),
        ]})),
        // 11: a saved group
        json!({"op": "canvas", "canvas": {"group": adds(3)}, "wait": 30, "save": true}),
        // 12, 13: the callbacks' results
        json!({"op": "get", "id": linked, "wait": 20}),
        json!({"op": "get", "id": errback, "wait": 20}),
    ];
    if let Some(queue) = queue {
        for r in &mut requests {
            if let Some(spec) = r.get_mut("canvas") {
                routed(spec, queue);
            }
        }
    }
    requests
}

/// Checks the Python client's responses `r` to [`python_canvas_requests`]: Celery's
/// results and errors, the failed chord's `ChordError` and the saved group, both read by a
/// celeriac client `app` (on the same result backend). `logs` goes into failure messages.
pub(crate) async fn check_python_canvas(
    r: &[Value],
    app: &celeriac::App,
    logs: impl Fn() -> String,
) {
    let ok = |i: usize| {
        assert!(
            r[i]["exc_type"].is_null(),
            "request {i}: {}\n{}",
            r[i],
            logs()
        );
        r[i]["result"].clone()
    };
    assert_eq!(ok(0), json!(50));
    assert_eq!(ok(1), json!((0..10).map(|i| i * 2).collect::<Vec<_>>()));
    assert_eq!(ok(2), json!(90));
    // Python's `get` raises the failed header task's own error first (it checks the
    // parents); the body's record carries the ChordError, read below.
    assert_eq!(r[3]["exc_type"], "ValueError", "{}\n{}", r[3], logs());
    assert_eq!(
        (&r[4]["exc_type"], &r[4]["exc_message"], &r[4]["state"]),
        (&json!("ValueError"), &json!("mid"), &json!("FAILURE")),
        "{}\n{}",
        r[4],
        logs()
    );
    assert_eq!(ok(5), json!(4));
    assert_eq!(r[6]["exc_type"], "ValueError", "{}\n{}", r[6], logs());
    assert_eq!(ok(7), json!([1, "two", [3]]));
    assert_eq!(ok(8), json!([3, 7]));
    assert_eq!(ok(9), json!([[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]));
    assert_eq!(ok(10), json!(7));
    assert_eq!(ok(12), json!("linked"));
    assert_eq!(ok(13), json!("errback"));
    let tree = &r[3]["tree"];
    let body = app.async_result(tree["id"].as_str().unwrap());
    let err = body.get::<Value>(WAIT).await.unwrap_err();
    let exc = err.exception().expect("the body failed");
    let failed = tree["parent"]["children"][1]["id"].as_str().unwrap();
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        (
            "ChordError",
            format!("Dependency {failed} raised ValueError('bad')")
        )
    );
    // The group Python saved is restored by a celeriac client.
    let saved = r[11]["id"].as_str().unwrap();
    let back = GroupResult::restore(app, saved)
        .await
        .unwrap()
        .expect("the group Python saved");
    assert_eq!(back.get::<i64>(WAIT).await.unwrap(), vec![0, 2, 4]);
}

/// Issue 6: a stock Python client's chain, group, chord, callbacks, map/starmap/chunks
/// and saved group run on celeriac workers, with Celery's results and errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_canvas_runs_on_celeriac_workers() {
    let Some(it) = Interop::new("python_canvas_runs_on_celeriac_workers") else {
        return;
    };
    let rust = it.rust_worker(&["-c", "4", "-n", "rust@test"]);
    let r = it.python_client(python_canvas_requests(None)).await;
    let app = builder_on(&it.scope.url("")).build().await.unwrap();
    check_python_canvas(&r, &app, || rust.log()).await;
}

/// Issue 6's celeriac side: a celeriac client's chain, group, chord (one failing), failing
/// chain, link and link_error, map/starmap/chunks and chain through a group, run by
/// whatever worker consumes `app`'s default queue, with Celery's results; then a group,
/// saved, returned for a Python client to restore ([`check_restored_group`]).
pub(crate) async fn celeriac_canvas(app: &celeriac::App) -> GroupResult {
    let r = chain![add::new(1, 1), add::s(3), mul::s(10)]
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 50);

    let g = group((0..10).map(|i| add::new(i, i)))
        .apply_async(app)
        .await
        .unwrap();
    let sums: Vec<i64> = g.get(WAIT).await.unwrap();
    assert_eq!(sums, (0..10).map(|i| i * 2).collect::<Vec<_>>());

    let r = chord(group((0..10).map(|i| add::new(i, i))), xsum::s())
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 90);

    let fail_id = uuid();
    let r = chord(
        group([add::new(1, 1), fail::new("bad".into()).task_id(&fail_id)]),
        xsum::s(),
    )
    .apply_async(app)
    .await
    .unwrap();
    let err = r.get::<i64>(WAIT).await.unwrap_err();
    let exc = err.exception().expect("a task failure");
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        (
            "ChordError",
            format!("Dependency {fail_id} raised ValueError('bad')")
        )
    );

    let r = chain![add::new(1, 1), fail::si("mid".into()), add::s(1)]
        .apply_async(app)
        .await
        .unwrap();
    let err = r.get::<i64>(WAIT).await.unwrap_err();
    assert_eq!(err.exception().unwrap().message(), "mid");
    assert_eq!(r.state().await.unwrap(), celeriac::State::Failure);

    let (linked, errback) = (uuid(), uuid());
    let r = add::new(2, 2)
        .link(echo::si(json!("linked")).task_id(&linked))
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 4);
    let f = fail::new("x".into())
        .link_error(echo::si(json!("errback")).task_id(&errback))
        .apply_async(app)
        .await
        .unwrap();
    assert!(f.get::<Value>(WAIT).await.is_err());
    for (id, want) in [(&linked, "linked"), (&errback, "errback")] {
        let v: Value = app.async_result(id.as_str()).get(WAIT).await.unwrap();
        assert_eq!(v, json!(want));
    }

    let r = echo::map([json!(1), json!("two")])
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<Value>(WAIT).await.unwrap(), json!([1, "two"]));
    let r = add::starmap([(1, 2), (3, 4)])
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<Vec<i64>>(WAIT).await.unwrap(), vec![3, 7]);
    let parts: Vec<Vec<i64>> = add::chunks((0..10).map(|i| (i, i)), 3)
        .apply_async(app)
        .await
        .unwrap()
        .get(WAIT)
        .await
        .unwrap();
    assert_eq!(
        parts,
        vec![vec![0, 2, 4], vec![6, 8, 10], vec![12, 14, 16], vec![18]]
    );
    let r = chain![add::new(1, 1), group([add::s(1), add::s(2)]), xsum::s()]
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 7);

    let g = group((0..3).map(|i| add::new(i, i)))
        .apply_async(app)
        .await
        .unwrap();
    g.save().await.unwrap();
    g
}

/// The request for a Python client to restore the group [`celeriac_canvas`] saved.
pub(crate) fn restore_group_request(g: &GroupResult) -> Value {
    json!({"op": "group", "id": g.id(), "wait": 20})
}

/// Checks Python's `GroupResult.restore` of `g` (the response to
/// [`restore_group_request`]): found, the same children, their results.
pub(crate) fn check_restored_group(py: &Value, g: &GroupResult) {
    assert_eq!(py["found"], json!(true), "{py}");
    assert_eq!(py["result"], json!([0, 2, 4]), "{py}");
    let ids: Vec<&str> = g.results().iter().map(|r| r.id()).collect();
    assert_eq!(py["children"], json!(ids));
}

/// Issue 6: a celeriac client's canvas runs on a stock Python Celery worker — Celery
/// continues its chains, joins its chords in the Redis backend and restores its groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_canvas_runs_on_a_python_worker() {
    let Some(it) = Interop::new("celeriac_canvas_runs_on_a_python_worker") else {
        return;
    };
    let _py = it.python_worker("py@test", "celery", 4);
    let app = builder_on(&it.scope.url("")).build().await.unwrap();
    // A group celeriac saved is restored by Python's GroupResult.restore.
    let g = celeriac_canvas(&app).await;
    let py = it.python_client(vec![restore_group_request(&g)]).await;
    check_restored_group(&py[0], &g);
}

/// A stock Python worker runs what `celeriac-testapp beat` sends from a schedule file:
/// each run once, with Python beat's `celery_beat_task` header, celeriac's `beat_entry`
/// and `beat_due` (seen on `self.request`), and `expires` one period after the send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_what_celeriac_beat_sends() {
    let Some(it) = Interop::new("a_python_worker_runs_what_celeriac_beat_sends") else {
        return;
    };
    let queue = format!("beat-interop-{}", uuid());
    let k = key();
    let mut py = it.python_worker("pybeat@test", &queue, 2);
    let dir = std::env::temp_dir().join(format!("celeriac-beat-interop-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("beat.toml");
    std::fs::write(
        &file,
        format!(
            "[schedule.probe-every-second]\n\
             task = \"tasks.beat_probe\"\n\
             every = 1\n\
             args = [2, 3]\n\
             kwargs = {{ key = \"{k}\" }}\n\
             queue = \"{queue}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(crate::proc::BIN);
    cmd.args(["--broker", &it.scope.url(""), "beat", "-s"])
        .arg(&file)
        .args(["-l", "info"])
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERY_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env_remove("CELERY_RESULT_BACKEND")
        .env_remove("RUST_LOG");
    let mut beat = WorkerProcess::spawn_command(cmd, "beat: leading");
    assert!(beat.log().contains("beat: 1 entries"), "{}", beat.log());

    // tasks.beat_probe RPUSHes one JSON object per run to its record list.
    let list = format!("{}celeriac-interop:record:{k}", it.scope.prefix);
    let mut c = redis::Client::open(it.broker())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let raw: Vec<String> = loop {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(&list)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        if raw.len() >= 3 {
            break raw;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} beat runs recorded in 30 s; beat log:\n{}\npython worker log:\n{}",
            raw.len(),
            beat.log(),
            py.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        beat.terminate().success(),
        "beat exit; log:\n{}",
        beat.log()
    );
    assert!(
        beat.log()
            .contains("Scheduler: Sending due task probe-every-second (tasks.beat_probe)"),
        "{}",
        beat.log()
    );
    let records: Vec<Value> = raw
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("{v}")))
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    let mut dues = Vec::new();
    for r in &records {
        assert_eq!(
            (&r["x"], &r["y"], &r["hostname"]),
            (&json!(2), &json!(3), &json!("pybeat@test")),
            "{r}"
        );
        assert_eq!(r["celery_beat_task"], json!(true), "{r}");
        assert_eq!(r["beat_entry"], json!("probe-every-second"), "{r}");
        // Custom headers are request attributes *and* in request.headers (Celery 5.7).
        assert_eq!(
            r["in_headers"],
            json!(["beat_due", "beat_entry", "celery_beat_task"]),
            "{r}"
        );
        let due = at(&r["beat_due"]);
        // expires = send time (≥ due) + one period, as Python's worker parsed it.
        let expires = at(&r["expires"]);
        let valid = (expires - due).num_milliseconds();
        assert!(
            (1000..1500).contains(&valid),
            "expires {valid} ms after due: {r}"
        );
        dues.push(due);
    }
    dues.sort();
    for pair in dues.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "due times not 1 s apart (or a run sent twice): {dues:?}"
        );
    }
    py.terminate();
    let log = py.log();
    assert!(
        !log.contains("ERROR")
            && !log.contains("Traceback")
            && !log.contains("expired")
            && !log.contains("revoked"),
        "python worker log:\n{log}"
    );
    assert!(
        log.matches("Task tasks.beat_probe[").count() >= 3,
        "python worker log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}
