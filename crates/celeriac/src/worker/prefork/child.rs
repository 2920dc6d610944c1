//! The child side of the prefork pool: the same binary, started by the worker with
//! `CELERIAC_PREFORK_SOCKET` set, connects back, runs one task at a time, and answers.
//!
//! A thread reads requests from the socket; when the socket closes — the worker stopped,
//! recycled this child, or was killed, even with SIGKILL — the child exits at once, so it
//! never outlives its worker (no parent-death signal needed, and no `unsafe`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use celeriac_core::protocol::{envelope, TaskMessage};
use celeriac_core::ExceptionInfo;

use super::wire::{Hello, Output, Request, Response};
use crate::app::{App, AppBuilder};
use crate::context::TaskContext;
use crate::execute::{self, Limits, Pool};

/// Set (to the worker's socket path) in a prefork child's environment.
pub const SOCKET_ENV: &str = "CELERIAC_PREFORK_SOCKET";
/// The child's number, for its hello.
pub const CHILD_ENV: &str = "CELERIAC_PREFORK_CHILD";
/// The child's one-time token, for its hello: proves it is the process the worker started.
pub(crate) const TOKEN_ENV: &str = "CELERIAC_PREFORK_TOKEN";
/// The worker's broker URL: a child builds its app on the same engines (a task may send
/// tasks), not on whatever the defaults would pick in its working directory.
pub(crate) const BROKER_ENV: &str = "CELERIAC_PREFORK_BROKER_URL";
/// The worker's result backend URL.
pub(crate) const BACKEND_ENV: &str = "CELERIAC_PREFORK_BACKEND_URL";
/// Broker and backend URLs a worker may have from its own environment; its children are
/// started without them (they are given [`BROKER_ENV`] and [`BACKEND_ENV`] instead), so
/// tasks do not inherit them.
pub(crate) const INHERITED_URL_ENV: [&str; 4] = [
    "CELERIAC_BROKER_URL",
    "CELERY_BROKER_URL",
    "CELERIAC_RESULT_BACKEND",
    "CELERY_RESULT_BACKEND",
];

/// Runs this process as a prefork child and exits, if the worker started it as one;
/// otherwise hands `builder` back untouched.
///
/// [`crate::cli::run`] calls this first. A program that runs a prefork [`crate::Worker`]
/// without the CLI must call it at the top of `main`, before starting any thread or
/// runtime (a child removes the pool's variables from its environment here), with the
/// same tasks registered:
///
/// ```no_run
/// # fn app() -> celeriac::AppBuilder { celeriac::App::builder() }
/// fn main() {
///     let builder = celeriac::worker::prefork::run_child_if_requested(app());
///     // ... build the app and run a worker with .pool(celeriac::Pool::Prefork)
/// #   drop(builder);
/// }
/// ```
pub fn run_child_if_requested(builder: AppBuilder) -> AppBuilder {
    let Ok(socket) = std::env::var(SOCKET_ENV) else {
        return builder;
    };
    let child = std::env::var(CHILD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let mut builder = builder;
    if let Ok(url) = std::env::var(BROKER_ENV) {
        builder = builder.broker_url(url);
    }
    if let Ok(url) = std::env::var(BACKEND_ENV) {
        builder = builder.result_backend_url(url);
    }
    // Tasks, and the processes they start, must not inherit these: the socket and token
    // are this child's credentials, the URLs may carry passwords. Editing the environment
    // races with any other thread reading it (which is why `remove_var` is `unsafe` from
    // edition 2024 on); this runs first thing in `main`, before any thread exists.
    for name in [SOCKET_ENV, CHILD_ENV, TOKEN_ENV, BROKER_ENV, BACKEND_ENV] {
        std::env::remove_var(name);
    }
    std::process::exit(child_main(builder, &socket, Hello { child, token }))
}

fn child_main(builder: AppBuilder, socket: &str, hello: Hello) -> i32 {
    let child = hello.child;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prefork child {child}: cannot start a runtime: {e}");
            return 1;
        }
    };
    let app = match runtime.block_on(builder.build()) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("prefork child {child}: {e}");
            return 1;
        }
    };
    let (stream, mut writer) = match UnixStream::connect(socket).and_then(|s| {
        let w = s.try_clone()?;
        Ok((s, w))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("prefork child {child}: cannot reach the worker at {socket}: {e}");
            return 1;
        }
    };
    if write_line(&mut writer, &hello).is_err() {
        return 1;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    if tx.send(req).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("prefork child {child}: unreadable request: {e}"),
            }
        }
        // The worker closed the socket (or died): stop now, whatever is running.
        std::process::exit(0)
    });
    runtime.block_on(async move {
        while let Some(req) = rx.recv().await {
            let seq = req.seq;
            let output = run_request(&app, req).await;
            if write_line(&mut writer, &Response { seq, output }).is_err() {
                return 0;
            }
        }
        0
    })
}

fn write_line<T: serde::Serialize>(w: &mut UnixStream, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

async fn run_request(app: &App, req: Request) -> Output {
    let invalid = |reason: String| Output::Failed {
        exception: ExceptionInfo::celery("InvalidTaskError", reason),
        traceback: None,
        retryable: false,
    };
    let bytes = match serde_json::to_vec(&req.envelope) {
        Ok(b) => b,
        Err(e) => return invalid(e.to_string()),
    };
    let msg = match envelope::decode(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|(m, _)| TaskMessage::decode(&m).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(e) => return invalid(e),
    };
    let Some(task) = app.task(&msg.headers.task).cloned() else {
        return Output::Failed {
            exception: ExceptionInfo::celery("NotRegistered", msg.headers.task.clone()),
            traceback: None,
            retryable: false,
        };
    };
    let (args, kwargs) = (msg.args.clone(), msg.kwargs.clone());
    let ctx = TaskContext::new(
        app.clone(),
        std::sync::Arc::new(msg),
        req.delivery_info(),
        req.hostname.as_str().into(),
        req.max_retries,
        false,
    );
    let limits = Limits {
        hard: None, // the worker enforces it, by killing this process
        soft: req.soft_time_limit,
    };
    execute::run(&task, ctx, args, kwargs, Pool::Async, limits)
        .await
        .into()
}
