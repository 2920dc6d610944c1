//! Python Celery for interop tests: a virtualenv with `celery[redis]==5.7.0`, made once by
//! `tests/python/bootstrap.sh` (idempotent, serialized with a lock) under `target/`.
//!
//! Without a Python interpreter or without PyPI, interop tests skip loudly — or fail when
//! `CELERIAC_REQUIRE_SERVICES=1`, as in CI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::services::services_required;

/// Paths of a ready Celery virtualenv.
#[derive(Debug, Clone)]
pub struct CeleryVenv {
    /// The virtualenv directory.
    pub dir: PathBuf,
    /// `tests/python`: put it on `PYTHONPATH` for `celeriac_interop.tasks`.
    pub harness: PathBuf,
}

impl CeleryVenv {
    /// The venv's Python.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }

    /// The venv's `celery` command.
    pub fn celery(&self) -> PathBuf {
        self.dir.join("bin/celery")
    }

    /// `tests/python/client.py`.
    pub fn client(&self) -> PathBuf {
        self.harness.join("client.py")
    }
}

/// Makes (or reuses) the venv for the repository at `root`; `None` means skipped.
pub fn celery_venv(test: &str, root: &Path) -> Option<CeleryVenv> {
    let harness = root.join("tests/python");
    let dir = std::env::var_os("CELERIAC_TEST_CELERY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/celery-venv"));
    let out = Command::new("bash")
        .arg(harness.join("bootstrap.sh"))
        .arg(&dir)
        .output();
    let failure = match out {
        Ok(o) if o.status.success() => return Some(CeleryVenv { dir, harness }),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run tests/python/bootstrap.sh: {e}"),
    };
    if services_required() {
        panic!("{test}: no Python Celery 5.7 ({failure}) and CELERIAC_REQUIRE_SERVICES=1");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no Python Celery 5.7 ({failure}; needs python3 and PyPI)"
    );
    None
}
