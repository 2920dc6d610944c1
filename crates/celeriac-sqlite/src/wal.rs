//! The write-ahead log's window: how many pages the log may hold before a commit copies
//! them back into the database file (`PRAGMA wal_autocheckpoint`), kept to a share of the
//! room left on the disk.
//!
//! A wide window is faster: pages written over and over (a queue's index, its head) are
//! copied back once per window rather than once per few commits — 10,000 pages run the
//! SQLite benchmark about a third faster than SQLite's default of 1,000. But the log is
//! emptied only by copying it into the database file, and that copy needs room of its own
//! (the file grows to take new pages). A log allowed to grow past what the disk holds
//! fills the disk by itself and can then never be copied back: every later write fails,
//! for good, even after other files free their space. (Measured: on a 32 MiB disk a
//! 10,000-page window filled it with a 32 MiB log beside a 4 KiB database file; neither a
//! passive nor a truncating checkpoint could run.)
//!
//! So the window is a quarter of the room the log can use (the disk's free space plus the
//! log's own size, which it reuses), between [`MIN_PAGES`] and [`MAX_PAGES`], looked at
//! again once a second and after every failed commit. The log file is also truncated back
//! to twice the window when a checkpoint empties it (`PRAGMA journal_size_limit`), so a
//! log that grew while the disk had room gives that room back when the disk runs short.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tracing::{debug, info};

/// The widest window, in pages (40 MiB of 4 KiB pages).
pub(crate) const MAX_PAGES: u64 = 10_000;
/// The narrowest window, in pages.
pub(crate) const MIN_PAGES: u64 = 100;
/// The window is at most this fraction (1/`SHARE`) of the room the log can use.
const SHARE: u64 = 4;
/// How often the free space is looked at while commits succeed.
const EVERY: Duration = Duration::from_secs(1);

/// The window of one connection, and what it needs to resize it.
pub(crate) struct WalWindow {
    /// The directory holding the database (and its log).
    dir: PathBuf,
    /// The log file, `<database>-wal`.
    wal: PathBuf,
    /// The database's page size, bytes.
    page: u64,
    /// The window set on the connection, pages; 0 before the first look.
    pages: u64,
    /// When the free space was last looked at.
    checked: Option<Instant>,
}

impl WalWindow {
    /// The window of `conn`, the connection to the database file `db`; not yet set (see
    /// [`WalWindow::keep`]).
    pub(crate) fn new(conn: &Connection, db: &Path) -> Self {
        let page = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .ok()
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(4096)
            .max(512);
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push("-wal");
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        WalWindow {
            wal: dir.join(name),
            dir,
            page,
            pages: 0,
            checked: None,
        }
    }

    /// The window now set, pages (0 before the first [`WalWindow::keep`]).
    #[cfg(test)]
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// Resizes the window to the room on the disk, if a second has passed since the last
    /// look, or at once if `now` (after a failed commit: the disk may be full). `name`
    /// names the database in log lines.
    pub(crate) fn keep(&mut self, conn: &Connection, now: bool, name: &str) {
        if !now && self.checked.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.checked = Some(Instant::now());
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) if self.pages == 0 => {
                debug!(
                    "{name}: cannot read the free space ({e}); the log window stays at its widest"
                );
                u64::MAX
            }
            Err(_) => return,
        };
        let wal = std::fs::metadata(&self.wal).map(|m| m.len()).unwrap_or(0);
        let pages = pages_for(free, wal, self.page);
        if pages == self.pages {
            return;
        }
        let limit = pages.saturating_mul(self.page).saturating_mul(2);
        let set = conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint={pages}; PRAGMA journal_size_limit={limit};"
        ));
        if let Err(e) = set {
            debug!("{name}: cannot set the log window to {pages} pages: {e}");
            return;
        }
        let mib = |b: u64| b as f64 / 1_048_576.0;
        if self.pages == MAX_PAGES {
            info!(
                "{name}: {:.1} MiB free on its disk; the write-ahead log is now checkpointed every {pages} pages ({:.1} MiB) so that it cannot fill the disk",
                mib(free),
                mib(pages * self.page)
            );
        } else if self.pages != 0 && pages == MAX_PAGES {
            info!("{name}: room on its disk again; the write-ahead log window is back to {pages} pages");
        }
        self.pages = pages;
    }
}

/// The window for `free` bytes free on the disk and a log file of `wal` bytes, in pages
/// of `page` bytes.
pub(crate) fn pages_for(free: u64, wal: u64, page: u64) -> u64 {
    (free.saturating_add(wal) / SHARE / page.max(1)).clamp(MIN_PAGES, MAX_PAGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_window_is_a_quarter_of_the_room_within_its_bounds() {
        assert_eq!(pages_for(u64::MAX, 0, 4096), MAX_PAGES);
        assert_eq!(pages_for(10 << 30, 0, 4096), MAX_PAGES);
        // 16 MiB free and a 4 MiB log: 5 MiB of window.
        assert_eq!(pages_for(16 * MIB, 4 * MIB, 4096), 1280);
        assert_eq!(pages_for(0, 0, 4096), MIN_PAGES);
        assert_eq!(pages_for(0, u64::MAX, 0), MAX_PAGES);
    }

    #[test]
    fn a_new_file_gets_a_window_and_a_size_limit() {
        let dir = celeriac_testing::services::ScratchDir::new("celeriac-wal");
        let db = dir.path().join("w.sqlite");
        let conn = Connection::open(&db).unwrap();
        let mut w = WalWindow::new(&conn, &db);
        w.keep(&conn, false, "w");
        let set: i64 = conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(set as u64, w.pages());
        assert!((MIN_PAGES..=MAX_PAGES).contains(&w.pages()));
        let limit: i64 = conn
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit as u64, w.pages() * 4096 * 2);
    }
}
