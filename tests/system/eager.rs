//! Eager mode: tasks run inline in `apply_async`, for unit tests of code that sends tasks.

use celeriac::Error;
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
