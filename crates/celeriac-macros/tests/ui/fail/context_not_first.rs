use celeriac::{TaskContext, TaskResult};

#[celeriac::task]
async fn late_ctx(x: i64, ctx: &TaskContext) -> TaskResult<i64> {
    Ok(x + ctx.retries() as i64)
}

fn main() {}
