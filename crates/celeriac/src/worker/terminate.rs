//! The tasks running in this worker, by id, so that `revoke(terminate=true)` can stop one
//! and `inspect active` / `query_task` can list them with their start times.

use crate::context::TaskContext;

/// The running tasks, so `revoke(terminate=true)` can reach one by id.
///
/// A slab of their contexts (each carries its terminate signal): registering a task is a
/// lock and a slot, with no allocation and no hashing of its id. Finding a task by id
/// walks the running tasks, which only a revoke or an `inspect active` does.
#[derive(Default)]
pub(super) struct Terminators {
    running: std::sync::Mutex<slab::Slab<(TaskContext, f64)>>,
}

// `#[inline]` on what every task calls: these lived beside the job code that calls them,
// and stay inlinable into it from their own module.
impl Terminators {
    #[inline]
    fn lock(&self) -> std::sync::MutexGuard<'_, slab::Slab<(TaskContext, f64)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a task that starts running at `time_start` (Unix seconds); the key removes it.
    #[inline]
    pub(super) fn register(&self, ctx: &TaskContext, time_start: f64) -> usize {
        self.lock().insert((ctx.clone(), time_start))
    }

    /// Removes a task that stopped running.
    #[inline]
    pub(super) fn remove(&self, key: usize) {
        self.lock().try_remove(key);
    }

    /// Stops the running task `id` (as by signal `signum`); false if it is not running
    /// here.
    pub(super) fn terminate(&self, id: &str, signum: i32) -> bool {
        let running = self.lock();
        let mut found = false;
        for (_, (ctx, _)) in running.iter().filter(|(_, (c, _))| c.id() == id) {
            ctx.terminate(signum);
            found = true;
        }
        found
    }

    /// The tasks running now, with their start times (Unix seconds).
    pub(super) fn running(&self) -> Vec<(TaskContext, f64)> {
        self.lock().iter().map(|(_, r)| r.clone()).collect()
    }
}
