//! Eager mode: tasks run inline in `apply_async`, for unit tests of code that sends tasks.

use celeriac::{chain, chord, group, Error};
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn eager_runs_inline_with_results_failures_and_retries() {
    let app = builder().always_eager(true).build().await.unwrap();
    let r = add::new(2, 3).apply_async(&app).await.unwrap();
    assert!(r.ready().await.unwrap());
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 5);

    let err = fail::new("nope".into())
        .delay(&app)
        .await
        .unwrap()
        .get::<()>(WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.exception().unwrap().exc_type, "ValueError");

    let k = key();
    let v: Value = run(&app, flaky::new(k.clone(), 2)).await;
    assert_eq!(v, json!({"attempt": 3, "retries": 2}));

    let ctx: Value = run(&app, context::new()).await;
    assert_eq!(ctx["eager"], json!(true));

    let err = app
        .send_task("tasks.unknown", json!([]), json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotRegistered(ref n) if n == "tasks.unknown"),
        "{err:?}"
    );
    assert_eq!(
        app.broker().queue_depth("celery").await.unwrap(),
        0,
        "eager mode published"
    );
}

/// Eager canvases run through the worker's workflow steps (issue 13): a chord member's
/// failure fails the body with the worker's `ChordError` text, a chain failing in the
/// middle fails its last step, and callbacks and errbacks run.
#[tokio::test]
async fn eager_canvases_follow_the_workers_flow() {
    let app = builder().always_eager(true).build().await.unwrap();

    let bad = key();
    let r = chord(
        group([add::new(1, 1), fail::new("bad".into()).task_id(bad.clone())]),
        xsum::s(),
    )
    .apply_async(&app)
    .await
    .unwrap();
    let exc = r
        .get::<i64>(WAIT)
        .await
        .unwrap_err()
        .exception()
        .unwrap()
        .clone();
    assert_eq!(exc.exc_type, "ChordError");
    assert_eq!(
        exc.message(),
        format!("Dependency {bad} raised ValueError('bad')")
    );

    let last = key();
    let r = chain![
        add::new(1, 1),
        fail::si("mid".into()),
        add::s(1).task_id(last.clone())
    ]
    .apply_async(&app)
    .await
    .unwrap();
    assert_eq!(r.id(), last, "a chain's handle is its last step");
    let exc = r
        .get::<i64>(WAIT)
        .await
        .unwrap_err()
        .exception()
        .unwrap()
        .clone();
    assert_eq!(
        (exc.exc_type.as_str(), exc.message().as_str()),
        ("ValueError", "mid")
    );

    let (ok, failed) = (key(), key());
    let r = add::new(2, 3)
        .link(note::s(ok.clone()))
        .apply_async(&app)
        .await
        .unwrap();
    assert_eq!(r.get::<i64>(WAIT).await.unwrap(), 5);
    assert_eq!(entries(&ok), vec![json!(5)], "the callback got the result");
    let r = fail::new("x".into())
        .link_error(note::s(failed.clone()))
        .apply_async(&app)
        .await
        .unwrap();
    assert!(r.failed().await.unwrap());
    assert_eq!(
        entries(&failed),
        vec![json!(r.id())],
        "the errback got the failed task's id"
    );
}
