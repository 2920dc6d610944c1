//! Who may join the pool: the socket lives in a private directory.
//!
//! The directory (mode 0700, random name) keeps other users from reaching the socket at
//! all.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A fresh directory only the worker's user can enter, holding the pool's socket; removed
/// (with the socket) on [`SocketDir::remove`] or drop.
#[derive(Debug)]
pub(super) struct SocketDir {
    dir: PathBuf,
    socket: PathBuf,
}

impl SocketDir {
    /// Creates `celeriac-prefork-<pid>-<random>` in the temp directory, mode 0700.
    pub(super) fn create() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "celeriac-prefork-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        // Not `create_dir_all`: the directory must be new, so one planted in advance (or a
        // symlink in its place) fails here instead of being used.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        // The umask may have taken bits away from 0700 (a umask of 0o700 leaves none);
        // set exactly what the pool needs.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = dir.join("pool.sock");
        Ok(Self { dir, socket })
    }

    /// Where the pool listens.
    pub(super) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Removes the socket and the directory; idempotent.
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_directory_is_private_new_and_removed() {
        let d = SocketDir::create().unwrap();
        let dir = d.socket().parent().unwrap().to_path_buf();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_ne!(dir, std::env::temp_dir());
        drop(d);
        assert!(!dir.exists());
    }
}
