//! Opening a database file: refusing what is not ours (another program's database, a file
//! that is not SQLite at all, a corrupt or read-only file) with one clear line naming the
//! path, and creating or migrating the schema.
//!
//! A new database file is created by celeriac itself, mode 0600 whatever the umask (it
//! holds task arguments and results), before SQLite opens it: SQLite gives the `-wal` and
//! `-shm` files it creates the database file's mode exactly, and so does the `-wake` file
//! (see `db`). A file that already exists keeps the mode its owner gave it, and its
//! side files follow it.
//!
//! A celeriac database carries `PRAGMA application_id = 0x63656C72` ("celr") and its
//! schema version in `PRAGMA user_version`; migrations run in order, each in the same
//! transaction as the version bump, so a crash mid-migration leaves the old version.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::config::SqliteConfig;
use crate::error::OpenError;

/// "celr": marks a database as celeriac's.
pub const APPLICATION_ID: i32 = 0x6365_6C72;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 6;

/// Schema migrations, version `i + 1` at index `i`.
const MIGRATIONS: [&str; 6] = [
    include_str!("../migrations/001_initial.sql"),
    include_str!("../migrations/002_broadcasts.sql"),
    include_str!("../migrations/003_chords.sql"),
    include_str!("../migrations/004_visible_index.sql"),
    include_str!("../migrations/005_exchanges.sql"),
    include_str!("../migrations/006_beat.sql"),
];

/// Opens (creating if needed) and checks the database at `cfg.path`.
pub(crate) fn open(cfg: &SqliteConfig) -> Result<Connection, OpenError> {
    let path = &cfg.path;
    let fail = |reason: String| OpenError {
        path: path.clone(),
        reason,
    };
    if let Some(reason) = not_sqlite(path) {
        return Err(fail(reason));
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create its directory: {e}")))?;
        }
    }
    create_new(path, PRIVATE).map_err(|e| fail(format!("cannot be created: {e}")))?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(describe(&e)))?;
    set_busy_handler(&mut conn, cfg.busy_timeout).map_err(|e| fail(describe(&e)))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| fail(describe(&e)))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(format!("cannot switch to WAL mode (got `{mode}`)")));
    }
    let sync = if cfg.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-65536;"
    ))
    .map_err(|e| fail(describe(&e)))?;
    check_and_migrate(&conn).map_err(&fail)?;
    if let Some(max) = cfg.max_size {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| fail(describe(&e)))?;
        let pages = (max as i64 / page.max(512)).max(1);
        let _: i64 = conn
            .query_row(&format!("PRAGMA max_page_count={pages}"), [], |r| r.get(0))
            .map_err(|e| fail(describe(&e)))?;
    }
    Ok(conn)
}

thread_local! {
    /// The busy timeout of the connection owned by this thread, and when its current wait
    /// began (SQLite's busy handler is a plain function, without state of its own).
    static BUSY: std::cell::Cell<(Duration, Option<std::time::Instant>)> =
        const { std::cell::Cell::new((Duration::ZERO, None)) };
}

/// Waits for another process's write lock with short sleeps.
///
/// SQLite's own `busy_timeout` sleeps 1, 2, 5, 10 … up to 100 ms between tries: with
/// several worker processes taking turns on the lock for sub-millisecond transactions,
/// most of the time would be spent asleep. This handler retries after 20 µs, backing off
/// to 1 ms, and gives up after the configured timeout.
fn busy(tries: i32) -> bool {
    BUSY.with(|b| {
        let (timeout, started) = b.get();
        let now = std::time::Instant::now();
        let started = if tries == 0 {
            now
        } else {
            started.unwrap_or(now)
        };
        b.set((timeout, Some(started)));
        if now.duration_since(started) >= timeout {
            return false;
        }
        let pause = Duration::from_micros(20u64 << (tries.clamp(0, 6) as u32));
        std::thread::sleep(pause.min(Duration::from_millis(1)));
        true
    })
}

/// Installs [`busy`] for the connection (used only from the thread that opened it).
pub(crate) fn set_busy_handler(conn: &mut Connection, timeout: Duration) -> rusqlite::Result<()> {
    BUSY.with(|b| b.set((timeout, None)));
    conn.busy_handler(Some(busy))
}

/// The mode of a database file celeriac creates: read and write for its owner only.
pub(crate) const PRIVATE: u32 = 0o600;

/// Creates `path` with exactly `mode` (the umask may only have removed bits, so the mode
/// is set again once created) and returns it open for writing; `None` if it exists
/// already, which is left as it is.
pub(crate) fn create_new(path: &Path, mode: u32) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            Ok(Some(file))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// A reason if the file exists but is not an SQLite database at all.
fn not_sqlite(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        return Some("is a directory, not a database file".into());
    }
    if meta.len() == 0 {
        return None;
    }
    let mut header = [0u8; 16];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut header)
    });
    match read {
        Ok(()) if &header == b"SQLite format 3\0" => None,
        Ok(()) => Some("is not an SQLite database (no SQLite header); is the path right?".into()),
        Err(_) if meta.len() < 16 => Some("is not an SQLite database (too short)".into()),
        Err(e) => Some(format!("cannot be read: {e}")),
    }
}

/// One line for an SQLite error met while opening.
pub(crate) fn describe(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::ReadOnly) => {
            "is read-only (celeriac needs to write to it and its directory)".into()
        }
        Some(C::CannotOpen) => {
            "cannot be opened (does its directory exist and is it writable?)".into()
        }
        Some(C::NotADatabase) => "is not an SQLite database".into(),
        Some(C::DatabaseCorrupt) => format!("is corrupt ({e})"),
        Some(C::PermissionDenied) => "permission denied".into(),
        Some(C::DiskFull) => "the disk is full".into(),
        _ => e.to_string(),
    }
}

/// Checks the file is ours and brings its schema up to date, under the write lock so two
/// processes opening a new file at once do not both create the schema.
fn check_and_migrate(conn: &Connection) -> Result<(), String> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| describe(&e))?;
    let result = migrate_locked(conn);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = conn.execute_batch(end).map_err(|e| describe(&e));
    result.and(ended)
}

fn migrate_locked(conn: &Connection) -> Result<(), String> {
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| describe(&e))?;
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| describe(&e))?;
    let tables: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .map_err(|e| describe(&e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| describe(&e))?;
        rows.collect::<Result<_, _>>().map_err(|e| describe(&e))?
    };
    if app_id != APPLICATION_ID {
        if app_id != 0 || !tables.is_empty() {
            return Err(format!(
                "is not a celeriac database (it belongs to another program: application_id {app_id:#x}, tables {})",
                if tables.is_empty() { "none".to_string() } else { tables.join(", ") }
            ));
        }
    } else {
        if version > SCHEMA_VERSION {
            return Err(format!(
                "was created by a newer celeriac (schema {version}; this build knows up to {SCHEMA_VERSION})"
            ));
        }
        // Catch damage early, with a bounded check, rather than mid-task.
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| describe(&e))?;
        if check != "ok" {
            return Err(format!("is corrupt ({check})"));
        }
    }
    let from = if app_id == APPLICATION_ID {
        version.max(0) as usize
    } else {
        0
    };
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let to = i as i32 + 1;
        conn.execute_batch(sql)
            .map_err(|e| format!("schema migration to version {to} failed: {}", describe(&e)))?;
        conn.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {to};"
        ))
        .map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// Seconds since the Unix epoch, as stored in `visible_at`, `claimed_at`, `last_seen`.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
