//! The canvas end to end — chains, groups, chords, callbacks, map/starmap/chunks — on
//! every engine: memory://, SQLite and Redis run the same claims, one test each, with a
//! worker in the test process.

use std::time::Duration;

use celeriac::{chain, chord, group, App, GroupResult, State};
use celeriac_testing::services::{RedisScope, ScratchDir};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

/// One test per claim on each engine, named `canvas::on_<engine>::<claim>`, each with an
/// app and a worker (4 slots) of its own, so a failing claim names itself and hides none
/// of the others. A claim gets the worker and ends by [`drained`].
macro_rules! on_every_engine {
    ($($claim:ident),* $(,)?) => {
        mod on_memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $claim() {
                    let app = app().await;
                    let worker = start(&app, |b| b.concurrency(4));
                    super::$claim(&app, worker).await;
                }
            )*
        }
        mod on_sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $claim() {
                    let dir = ScratchDir::new("celeriac-canvas");
                    let app = builder_on(&dir.sqlite_url("c.sqlite", ""))
                        .build()
                        .await
                        .unwrap();
                    let worker = start(&app, |b| b.concurrency(4));
                    super::$claim(&app, worker).await;
                }
            )*
        }
        mod on_redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $claim() {
                    let test = concat!("canvas::on_redis::", stringify!($claim));
                    let Some(scope) = RedisScope::new(test) else {
                        return;
                    };
                    let app = builder_on(&scope.url("")).build().await.unwrap();
                    let worker = start(&app, |b| b.concurrency(4));
                    super::$claim(&app, worker).await;
                }
            )*
        }
    };
}

on_every_engine!(
    chains_pass_results_along,
    a_failure_stops_the_chain_and_fails_its_last_step,
    groups_return_results_in_order_and_as_completed,
    chords_join_their_header_in_order,
    a_failing_header_fails_the_chord_body,
    a_group_inside_a_chain_becomes_a_chord,
    callbacks_and_errbacks_run,
    map_starmap_and_chunks,
    pool_style_calls,
);

/// Proves the claim's work is over, so counts of runs are final and "X did not run" is
/// proven, not waited for: a marker task sent now on the same queue runs (so everything
/// queued before it was taken), then `worker` stops warm (everything it started finishes,
/// sending whatever follows it; what it prefetched goes back to the queue), and the queue
/// is empty (nothing sent was left unrun).
async fn drained(app: &App, worker: Running) {
    assert_eq!(run::<i64>(app, count_task::new(key())).await, 1, "marker");
    worker.warm().await;
    assert_eq!(
        app.broker().queue_depth("celery").await.unwrap(),
        0,
        "messages left in the queue after the worker stopped"
    );
}

async fn chains_pass_results_along(app: &App, worker: Running) {
    let r = chain![add::new(1, 1), add::s(3), mul::s(10)]
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 50);
    // `si` ignores the parent's result.
    let r = chain![add::new(1, 1), add::si(10, 10), mul::s(2)]
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 40);
    // Nested chains are flattened.
    let inner = chain![add::s(1), add::s(1)];
    let r = chain![add::new(0, 0), inner, mul::s(5)]
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 10);
    drained(app, worker).await;
}

async fn a_failure_stops_the_chain_and_fails_its_last_step(app: &App, worker: Running) {
    let k = key();
    let r = chain![
        add::new(1, 1),
        fail::si("boom".into()),
        note::s(k.clone()),
        mul::s(2)
    ]
    .apply_async(app)
    .await
    .unwrap();
    // The chain's result (its last step) carries the failure that stopped it.
    let err = r.get::<i64>(LONG).await.unwrap_err();
    let exc = err.exception().expect("a task failure");
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        ("ValueError", "boom".to_string())
    );
    assert_eq!(r.state().await.unwrap(), State::Failure);
    drained(app, worker).await;
    assert_eq!(
        count(&format!("{k}:runs")),
        0,
        "a step after the failure ran"
    );
}

async fn groups_return_results_in_order_and_as_completed(app: &App, worker: Running) {
    let g = group((0..20).map(|i| add::new(i, i)))
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(g.len(), 20);
    let got: Vec<i64> = g.get(LONG).await.unwrap();
    assert_eq!(got, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    assert_eq!(g.completed_count().await.unwrap(), 20);
    assert!(g.ready().await.unwrap() && g.successful().await.unwrap());
    let mut seen: Vec<usize> = g
        .iter_results::<i64>(LONG)
        .map(|r| {
            let (i, v) = r.unwrap();
            assert_eq!(v, i as i64 * 2);
            i
        })
        .collect()
        .await;
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    // Saved, it is found by id.
    g.save().await.unwrap();
    let back = GroupResult::restore(app, g.id())
        .await
        .unwrap()
        .expect("saved group");
    assert_eq!(back.get::<i64>(LONG).await.unwrap(), got);

    // A failing member: `get` fails, `failed` says so.
    let g = group([add::new(1, 1), fail::new("no".into())])
        .apply_async(app)
        .await
        .unwrap();
    assert!(g.get::<Value>(LONG).await.is_err());
    assert!(g.failed().await.unwrap());
    drained(app, worker).await;
}

async fn chords_join_their_header_in_order(app: &App, worker: Running) {
    let r = chord(group((0..50).map(|i| add::new(i, i))), xsum::s())
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(
        r.get::<i64>(LONG).await.unwrap(),
        (0..50).map(|i| i * 2).sum::<i64>()
    );
    // The body gets the list in header order, whatever order the parts finished in.
    let k = key();
    let r = chord(
        group([hold::new(key(), 300), add::new(1, 1), hold::new(key(), 100)]),
        note::s(k.clone()),
    )
    .apply_async(app)
    .await
    .unwrap();
    let list = r.get::<Value>(LONG).await.unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(3));
    assert_eq!(list[1], json!(2));
    // An empty header: the body runs at once with [].
    let r = chord(group([]), xsum::s()).apply_async(app).await.unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 0);
    drained(app, worker).await;
    assert_eq!(
        count(&format!("{k}:runs")),
        1,
        "the body ran other than once"
    );
}

async fn a_failing_header_fails_the_chord_body(app: &App, worker: Running) {
    let k = key();
    let r = chord(
        group([add::new(1, 1), fail::new("bad".into())]),
        note::s(k.clone()),
    )
    .apply_async(app)
    .await
    .unwrap();
    let err = r.get::<Value>(LONG).await.unwrap_err();
    let exc = err.exception().expect("a task failure");
    assert_eq!(exc.exc_type, "ChordError");
    assert_eq!(exc.exc_module.as_deref(), Some("celery.exceptions"));
    let msg = exc.message();
    assert!(
        msg.starts_with("Dependency ") && msg.ends_with(" raised ValueError('bad')"),
        "{msg}"
    );
    drained(app, worker).await;
    assert_eq!(count(&format!("{k}:runs")), 0, "the body ran");
}

async fn a_group_inside_a_chain_becomes_a_chord(app: &App, worker: Running) {
    let r = chain![add::new(1, 1), group([add::s(1), add::s(2)]), xsum::s()]
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 7);
    // A chord inside a chain, followed by more steps.
    let r = chain![
        chord(group([add::new(1, 1), add::new(2, 2)]), xsum::s()),
        mul::s(10)
    ]
    .apply_async(app)
    .await
    .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 60);
    drained(app, worker).await;
}

async fn callbacks_and_errbacks_run(app: &App, worker: Running) {
    let (ok, err) = (key(), key());
    let r = add::new(2, 2)
        .link(note::s(ok.clone()))
        .link_error(note::s(err.clone()))
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 4);
    until("the callback ran", || async {
        count(&format!("{ok}:runs")) == 1
    })
    .await;
    assert_eq!(entries(&ok), vec![json!(4)]);

    let f = fail::new("x".into())
        .link(note::s(ok.clone()))
        .link_error(note::s(err.clone()))
        .apply_async(app)
        .await
        .unwrap();
    assert!(f.get::<Value>(LONG).await.is_err());
    until("the errback ran", || async {
        count(&format!("{err}:runs")) == 1
    })
    .await;
    // An errback gets the failed task's id.
    assert_eq!(entries(&err), vec![json!(f.id())]);

    // Two callbacks both run.
    let (a, b) = (key(), key());
    add::new(1, 2)
        .link(note::s(a.clone()))
        .link(note::s(b.clone()))
        .apply_async(app)
        .await
        .unwrap();
    until("both callbacks ran", || async {
        count(&format!("{a}:runs")) == 1 && count(&format!("{b}:runs")) == 1
    })
    .await;
    drained(app, worker).await;
    assert_eq!(
        count(&format!("{ok}:runs")),
        1,
        "the callback ran on a failure"
    );
    assert_eq!(
        count(&format!("{err}:runs")),
        1,
        "the errback ran on a success"
    );
}

async fn map_starmap_and_chunks(app: &App, worker: Running) {
    let r = sq::map([1, 2, 3]).apply_async(app).await.unwrap();
    assert_eq!(r.get::<Vec<i64>>(LONG).await.unwrap(), vec![1, 4, 9]);
    let r = add::starmap([(1, 1), (2, 2)])
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(r.get::<Vec<i64>>(LONG).await.unwrap(), vec![2, 4]);
    let g = add::chunks((0..10).map(|i| (i, i)), 3)
        .apply_async(app)
        .await
        .unwrap();
    assert_eq!(g.len(), 4);
    let parts: Vec<Vec<i64>> = g.get(LONG).await.unwrap();
    assert_eq!(
        parts,
        vec![vec![0, 2, 4], vec![6, 8, 10], vec![12, 14, 16], vec![18]]
    );
    // A failing item fails the whole map, with its error.
    let r = fail::map(["nope".to_string()])
        .apply_async(app)
        .await
        .unwrap();
    let err = r.get::<Value>(LONG).await.unwrap_err();
    assert_eq!(err.exception().unwrap().exc_type, "ValueError");
    drained(app, worker).await;
}

/// `app.map` / `app.starmap` / `app.imap_unordered`: Python's `Pool` over the workers.
async fn pool_style_calls(app: &App, worker: Running) {
    for chunksize in [1, 7] {
        let squares = app.map(sq, 0..50, chunksize).await.unwrap();
        assert_eq!(squares, (0..50).map(|i| i * i).collect::<Vec<_>>());
        let sums = app
            .starmap(add, (0..50).map(|i| (i, 1)), chunksize)
            .await
            .unwrap();
        assert_eq!(sums, (1..=50).collect::<Vec<_>>());
        let mut seen: Vec<i64> = app
            .imap_unordered(add, (0..50).map(|i| (i, i)), chunksize)
            .await
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await;
        seen.sort();
        assert_eq!(seen, (0..50).map(|i| i * 2).collect::<Vec<_>>());
    }
    assert!(app.map(sq, [], 3).await.unwrap().is_empty());
    // The first failure (in item order) is the error; imap_unordered yields it and goes on.
    let err = app
        .map(fail, ["a".to_string(), "b".to_string()], 1)
        .await
        .unwrap_err();
    assert_eq!(err.exception().unwrap().message(), "a");
    let items: Vec<Result<(), celeriac::Error>> = app
        .imap_unordered(fail, [("x".to_string(),), ("y".to_string(),)], 1)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|r| r.is_err()));
    drained(app, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canvas_in_eager_mode() {
    let app = builder().always_eager(true).build().await.unwrap();
    let r = chain![add::new(1, 1), add::s(3), mul::s(10)]
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 50);
    let g = group((0..5).map(|i| add::new(i, i)))
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(g.get::<i64>(LONG).await.unwrap(), vec![0, 2, 4, 6, 8]);
    let r = chord(group((0..5).map(|i| add::new(i, i))), xsum::s())
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(LONG).await.unwrap(), 20);
    let r = chord(group([add::new(1, 1), fail::new("bad".into())]), xsum::s())
        .apply_async(&app)
        .await
        .unwrap();
    let err = r.get::<i64>(LONG).await.unwrap_err();
    assert_eq!(err.exception().unwrap().exc_type, "ChordError");
    let g = add::chunks((0..4).map(|i| (i, i)), 2)
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(
        g.get::<Vec<i64>>(LONG).await.unwrap(),
        vec![vec![0, 2], vec![4, 6]]
    );
    assert_eq!(app.map(sq, 1..=4, 3).await.unwrap(), vec![1, 4, 9, 16]);
}

/// A chord of 1,000 under 4 workers sharing one memory:// broker fires its body once, with
/// the results in header order (the SQLite and Redis versions, with 4 worker processes, are
/// in `tests/multiprocess.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_of_1000_fires_once_under_four_workers_on_memory() {
    let app = app().await;
    let workers: Vec<_> = (0..4).map(|_| start(&app, |b| b.concurrency(4))).collect();
    let k = key();
    let r = chord(group((0..1000).map(|i| add::new(i, i))), note::s(k.clone()))
        .apply_async(&app)
        .await
        .unwrap();
    let got: Vec<i64> = r.get(LONG).await.unwrap();
    assert_eq!(got, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    // Every worker stopped (warm: what they started finished, sending whatever follows it)
    // and nothing is left waiting: a second firing would have run or would be counted here.
    for w in workers {
        w.warm().await;
    }
    assert_eq!(app.broker().queue_depth("celery").await.unwrap(), 0);
    assert_eq!(
        count(&format!("{k}:runs")),
        1,
        "the body ran other than once"
    );
}
