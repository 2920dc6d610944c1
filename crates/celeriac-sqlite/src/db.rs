//! One database file as one process sees it: a dedicated thread owning the connection,
//! which runs every operation sent to it and groups whatever is waiting into one
//! transaction (so a burst of publishes, acks and result writes from many tasks costs one
//! commit), plus a change signal that wakes idle consumers and result waiters.
//!
//! Changes made by this process signal directly after their commit. Changes made by other
//! processes are seen through the file system: every commit in WAL mode writes the `-wal`
//! file, and an inotify (or platform) watch on the database's directory turns that into
//! the same signal. Waiters also re-check every `poll_interval`, so a file system without
//! change notifications (some network mounts) still works, only slower.
//!
//! The broker and the result backend of one file in one process share one `Db`.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{oneshot, Notify};
use tracing::{debug, error};

use crate::config::SqliteConfig;
use crate::error::{DbError, OpenError};
use crate::schema;
use crate::wal::WalWindow;

/// Most operations grouped into one transaction.
const BATCH: usize = 1024;

/// What the thread runs: an operation inside a savepoint of the batch transaction, and
/// then its reply once the batch's commit outcome is known.
trait Job: Send {
    fn writes(&self) -> bool;
    /// Runs the operation; returns its reply and the error it met, if any.
    fn run(self: Box<Self>, conn: &mut rusqlite::Transaction<'_>) -> (Reply, Option<DbError>);
    fn fail(self: Box<Self>, e: DbError);
}

type Reply = Box<dyn FnOnce(Result<(), DbError>) + Send>;

struct Call<F, R> {
    f: F,
    writes: bool,
    reply: oneshot::Sender<Result<R, DbError>>,
}

impl<F, R> Job for Call<F, R>
where
    F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    R: Send + 'static,
{
    fn writes(&self) -> bool {
        self.writes
    }

    fn run(self: Box<Self>, txn: &mut rusqlite::Transaction<'_>) -> (Reply, Option<DbError>) {
        let Call { f, reply, .. } = *self;
        // A savepoint per operation: one failing operation rolls back only itself.
        let result = match txn.savepoint() {
            Ok(sp) => match f(&sp) {
                Ok(r) => sp.commit().map(|()| r).map_err(DbError::from),
                Err(e) => Err(DbError::from(e)),
            },
            Err(e) => Err(DbError::from(e)),
        };
        let error = result.as_ref().err().cloned();
        let reply: Reply = Box::new(move |commit: Result<(), DbError>| {
            // An operation's own error says more than the batch's.
            let _ = reply.send(result.and_then(|r| commit.map(|()| r)));
        });
        (reply, error)
    }

    fn fail(self: Box<Self>, e: DbError) {
        let _ = self.reply.send(Err(e));
    }
}

/// A database file opened by this process.
pub(crate) struct Db {
    pub(crate) cfg: SqliteConfig,
    /// `sqlite:///absolute/path`, for messages.
    pub(crate) name: String,
    /// `None` once dropping has begun.
    jobs: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    /// The database thread, joined on drop.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Signalled after every committed write here, and on file changes by others.
    pub(crate) changed: Arc<Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
}

static OPEN: OnceLock<Mutex<HashMap<std::path::PathBuf, Weak<Db>>>> = OnceLock::new();

impl Db {
    /// The process's handle on the file `cfg.path`, opened (and checked, and migrated)
    /// on first use.
    pub(crate) fn open(cfg: &SqliteConfig) -> Result<Arc<Db>, OpenError> {
        let registry = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
        let mut open = registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = open.get(&cfg.path).and_then(Weak::upgrade) {
            return Ok(db);
        }
        let conn = schema::open(cfg)?;
        let changed = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread_changed = changed.clone();
        let name = cfg.display();
        let thread_name = name.clone();
        let busy_timeout = cfg.busy_timeout;
        let path = cfg.path.clone();
        let wake = open_wake_file(&cfg.path)
            .map_err(|e| debug!("{name}: no wake file ({e}); other processes will poll"))
            .ok();
        let thread = std::thread::Builder::new()
            .name("celeriac-sqlite".into())
            .spawn(move || {
                let mut conn = conn;
                let mut window = WalWindow::new(&conn, &path);
                window.keep(&conn, true, &thread_name);
                // The busy handler keeps its state per thread: install it on this one.
                if let Err(e) = schema::set_busy_handler(&mut conn, busy_timeout) {
                    error!("{thread_name}: cannot install the busy handler: {e}");
                }
                run(conn, window, rx, thread_changed, thread_name, wake)
            })
            .map_err(|e| OpenError {
                path: cfg.path.clone(),
                reason: format!("cannot start its database thread: {e}"),
            })?;
        let watcher = watch(cfg, changed.clone());
        let db = Arc::new(Db {
            cfg: cfg.clone(),
            name,
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            changed,
            _watcher: watcher,
        });
        open.insert(cfg.path.clone(), Arc::downgrade(&db));
        Ok(db)
    }

    /// Reads a `sqlite://` URL and opens its file (off the async runtime: opening checks
    /// and may migrate the file).
    pub(crate) async fn open_url(url: &str) -> Result<Arc<Db>, crate::error::Error> {
        let cfg = SqliteConfig::from_url(url)?;
        let path = cfg.path.clone();
        let opened = tokio::task::spawn_blocking(move || Db::open(&cfg))
            .await
            .map_err(|e| OpenError {
                path,
                reason: format!("could not be opened: {e}"),
            })?;
        Ok(opened?)
    }

    fn submit(&self, job: Box<dyn Job>) -> Result<(), Box<dyn Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Runs `f` on the database thread, in a transaction shared with whatever else is
    /// waiting, and returns its result once committed.
    pub(crate) async fn call<R, F>(&self, writes: bool, f: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        if let Err(job) = self.submit(Box::new(Call { f, writes, reply })) {
            job.fail(DbError::closed());
        }
        rx.await.unwrap_or_else(|_| Err(DbError::closed()))
    }

    /// Runs a write without waiting for it (from `Drop`, which cannot await).
    pub(crate) fn spawn_write<F>(&self, f: F)
    where
        F: FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        let (reply, _) = oneshot::channel();
        let _ = self.submit(Box::new(Call {
            f,
            writes: true,
            reply,
        }));
    }
}

impl Drop for Db {
    /// Closes the database before returning: the thread finishes the batch it is running,
    /// then closes its connection. So once the last handle on a file in this process is
    /// gone, the file is closed (another program may check it, change its journal mode,
    /// or delete it), as with a `File`.
    fn drop(&mut self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            // The last handle can be dropped on the database thread itself (a reply
            // callback holding the last clone): it must not wait for itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn run(
    mut conn: Connection,
    mut window: WalWindow,
    rx: mpsc::Receiver<Box<dyn Job>>,
    changed: Arc<Notify>,
    name: String,
    wake: Option<std::fs::File>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let writes = batch.iter().any(|j| j.writes());
        let behavior = if writes {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let mut txn = match conn.transaction_with_behavior(behavior) {
            Ok(t) => t,
            Err(e) => {
                let e = DbError::from(e);
                debug!("{name}: cannot begin a transaction: {}", e.message);
                for job in batch {
                    job.fail(e.clone());
                }
                continue;
            }
        };
        let mut replies = Vec::with_capacity(batch.len());
        let mut aborted: Option<DbError> = None;
        for job in batch {
            if let Some(e) = &aborted {
                job.fail(e.clone());
                continue;
            }
            let (reply, error) = job.run(&mut txn);
            replies.push(reply);
            // Some errors (a full disk, I/O) make SQLite roll the whole transaction
            // back: nothing of this batch is written, so none of it may report success,
            // and nothing after it may run outside a transaction.
            if txn.is_autocommit() {
                aborted = Some(error.unwrap_or_else(DbError::rolled_back));
            }
        }
        let committed = match &aborted {
            Some(e) => {
                drop(txn); // rolls back
                Err(e.clone())
            }
            None => txn.commit().map_err(DbError::from),
        };
        if let Err(e) = &committed {
            error!("{name}: commit failed: {}", e.message);
        }
        // After a failed commit at once: the disk may be full, and the log must not grow
        // into what room comes back.
        window.keep(&conn, committed.is_err(), &name);
        let ok = committed.is_ok();
        for reply in replies {
            reply(committed.clone());
        }
        if writes && ok {
            changed.notify_waiters();
            if let Some(f) = &wake {
                use std::os::unix::fs::FileExt;
                let _ = f.write_at(b"w", 0);
            }
        }
    }
}

/// The file every process touches after each committed write: `<database>-wake`.
///
/// Watching the `-wal` file itself is not enough: SQLite writes the WAL frames (which
/// notifies watchers) before it publishes the commit in the shared-memory index (which,
/// being a memory map, notifies nobody), so a woken reader can look too early, see
/// nothing, and sleep until its next poll. A write to this file happens after the commit
/// is visible.
pub(crate) fn wake_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push("-wake");
    db.with_file_name(name)
}

/// Opens the wake file (see [`wake_path`]) for writing; a new one gets the database file's
/// mode, as SQLite gives it to the `-wal` and `-shm` files, so every process that may
/// write the database may touch it, and no one else may.
fn open_wake_file(db: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let path = wake_path(db);
    let mode = std::fs::metadata(db)?.permissions().mode() & 0o777;
    match schema::create_new(&path, mode)? {
        Some(file) => Ok(file),
        None => std::fs::OpenOptions::new().write(true).open(path),
    }
}

/// Watches the database's wake file (see [`wake_path`]) for writes.
///
/// The file itself is watched, not its directory: every commit also writes the `-wal` and
/// `-shm` files next to it, and a directory watch would wake the watcher thread for each of
/// those writes only to throw the event away (a fifth of the CPU of a busy worker). The
/// directory is the fallback where a file cannot be watched.
fn watch(cfg: &SqliteConfig, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = cfg.path.parent()?.to_path_buf();
    let wake_file = wake_path(&cfg.path);
    let wake = wake_file.file_name()?.to_os_string();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.kind.is_modify() || event.kind.is_create() {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| n == wake.as_os_str()));
                if ours {
                    changed.notify_waiters();
                }
            }
        }
    })
    .map_err(|e| debug!("no file watcher ({e}); polling only"))
    .ok()?;
    if let Err(e) = watcher.watch(&wake_file, notify::RecursiveMode::NonRecursive) {
        debug!(
            "cannot watch {} ({e}); watching its directory",
            wake_file.display()
        );
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| debug!("cannot watch {} ({e}); polling only", dir.display()))
            .ok()?;
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use celeriac_core::{Broker, PublishOptions};
    use celeriac_testing::broker::message;
    use celeriac_testing::services::ScratchDir;

    use crate::SqliteBroker;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    }

    /// Opens `db` and publishes, then returns the modes of the database and its side files
    /// while it is open (SQLite removes `-wal` and `-shm` when the last connection closes).
    async fn modes_while_open(db: &Path) -> Vec<(String, u32)> {
        let broker = SqliteBroker::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        broker
            .publish(message("q", 1, None), PublishOptions::default())
            .await
            .unwrap();
        ["", "-wal", "-shm", "-wake"]
            .iter()
            .map(|suffix| {
                let name = format!("{}{suffix}", db.display());
                let m = mode(Path::new(&name));
                (name, m)
            })
            .collect()
    }

    const CHILD: &str = "CELERIAC_SQLITE_TEST_UMASK_0_DIR";

    /// The database holds task arguments and results: every file of a new one is 0600,
    /// even under `umask 000`. The umask belongs to the whole process, so the check runs in
    /// a child process of this test binary started with that umask.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_a_new_databases_files_are_0600_whatever_the_umask() {
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = Path::new(&dir);
            // The umask really is permissive: a file std creates 0666 stays 0666.
            let probe = dir.join("probe");
            std::fs::write(&probe, "").unwrap();
            assert_eq!(mode(&probe), 0o666, "the child's umask is not 000");
            for (file, m) in modes_while_open(&dir.join("new.sqlite")).await {
                assert_eq!(m, 0o600, "{file} is {m:o}");
            }
            return;
        }
        let dir = ScratchDir::new("celeriac-sqlite-modes");
        let name = module_path!()
            .split_once("::")
            .map(|(_, rest)| {
                format!("{rest}::issue14_a_new_databases_files_are_0600_whatever_the_umask")
            })
            .unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child under umask 000 failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file its owner created keeps its mode (0640 for a group of workers, say), and the
    /// side files celeriac and SQLite create take the same mode.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_existing_files_mode_is_kept_and_its_side_files_follow_it() {
        let dir = ScratchDir::new("celeriac-sqlite-modes");
        let db = dir.path().join("shared.sqlite");
        std::fs::write(&db, "").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
        for (file, m) in modes_while_open(&db).await {
            assert_eq!(m, 0o640, "{file} is {m:o}");
        }
    }
}
