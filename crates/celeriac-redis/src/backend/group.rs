//! Saved groups (`GroupResult.save()` / `restore()` / `delete()`): the group's task ids as
//! Celery's record under `celery-taskset-meta-<gid>`, `SETEX` + `PUBLISH` like a task
//! record, kept as long as chord data.

use celeriac_core::backend::{decode_saved_group, group_record};
use celeriac_core::error::BackendError;

use super::chord::CHORD_EXPIRES;
use super::RedisBackend;

impl RedisBackend {
    /// `ResultBackend::save_group`: writes and publishes the group's record.
    pub(super) async fn group_save(
        &self,
        group_id: &str,
        task_ids: &[String],
    ) -> Result<(), BackendError> {
        let key = self.inner.keys.group(group_id, "");
        let record = group_record::encode(group_id, task_ids).to_string();
        redis::pipe()
            .atomic()
            .cmd("SETEX")
            .arg(&key)
            .arg(CHORD_EXPIRES)
            .arg(&record)
            .ignore()
            .cmd("PUBLISH")
            .arg(&key)
            .arg(&record)
            .ignore()
            .exec_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("save group", e))
    }

    /// `ResultBackend::restore_group`: the saved group's task ids, if saved.
    pub(super) async fn group_restore(
        &self,
        group_id: &str,
    ) -> Result<Option<Vec<String>>, BackendError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.inner.keys.group(group_id, ""))
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("restore group", e))?;
        raw.map(|r| decode_saved_group(group_id, &r)).transpose()
    }

    /// `ResultBackend::forget_group`: deletes the saved group's record.
    pub(super) async fn group_forget(&self, group_id: &str) -> Result<(), BackendError> {
        redis::cmd("DEL")
            .arg(self.inner.keys.group(group_id, ""))
            .exec_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("forget group", e))
    }
}
