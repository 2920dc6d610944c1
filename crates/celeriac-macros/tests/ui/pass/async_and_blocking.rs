use celeriac::{Task, TaskContext, TaskKind, TaskResult};

#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Size {
    width: u32,
    height: u32,
}

/// Docs move to the generated struct.
#[celeriac::task(name = "tasks.resize", max_retries = 5, retry_backoff = true, acks_late = true)]
fn resize(ctx: &TaskContext, path: String, size: Size, label: Option<String>) -> TaskResult<String> {
    Ok(format!("{}:{path}:{}x{}:{label:?}", ctx.id(), size.width, size.height))
}

#[celeriac::task]
pub(crate) async fn no_args() -> Result<(), std::io::Error> {
    Ok(())
}

#[celeriac::task(
    max_retries = None,
    default_retry_delay = 1.5,
    retry_backoff = 2,
    retry_backoff_max = 60,
    retry_jitter = false,
    autoretry = true,
    track_started = true,
    ignore_result = true,
    time_limit = 30,
    soft_time_limit = 20.5
)]
fn every_option(r#type: String) -> TaskResult<String> {
    Ok(r#type)
}

fn main() {
    assert_eq!(add::name(), "tasks.add");
    assert_eq!(add.kind(), TaskKind::Async);
    assert_eq!(resize.kind(), TaskKind::Blocking);
    assert_eq!(resize.config().max_retries, Some(5));
    assert_eq!(resize.config().acks_late, Some(true));
    assert!(no_args::name().ends_with(".no_args"));
    let c = every_option.config();
    assert_eq!((c.max_retries, c.retry_backoff, c.time_limit), (None, 2.0, Some(30.0)));
    let sig = add::new(2, 3);
    assert_eq!(sig.args, vec![serde_json::json!(2), serde_json::json!(3)]);
    let _ = resize::new("a.png".into(), Size { width: 1, height: 2 }, None);
    let _ = every_option::new("t".into());
    let _ = no_args::run();
}
