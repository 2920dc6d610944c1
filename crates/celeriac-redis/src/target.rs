//! Where an engine's commands go: the server a `redis://` URL names, or for `sentinel://`
//! the primary the Sentinels name now, followed when a failover moves it. The broker and
//! the result backend each hold one [`Target`] and take every connection from it.
//!
//! A failover leaves the old address a replica (writes answer `READONLY`, a blocked
//! `BRPOP` `UNBLOCKED`, and with its primary gone `MASTERDOWN`) or dead (connection
//! refused). The `ConnectionManager` reconnects, but always to the address it was made
//! with; so after such an error ([`Target::check`]) the Sentinels are asked again, and if
//! they name another server a new client and `ConnectionManager` replace the old ones.
//! The lookup runs in the background, one at a time and at most every
//! [`LOOKUP_EVERY`]: an outage fails every publish, ack and fetch, and each must not cost
//! a round of Sentinel queries, nor wait for one. Callers already retry those errors with
//! back-off, and a retry after the swap reaches the new primary. Connections made from
//! [`Target::client`] (the fetcher's, pub/sub) are made afresh after an error, so they
//! follow as well.
//!
//! A plain URL costs nothing: [`Target::conn`] is a clone under an uncontended read lock
//! (every publish and ack takes one), and [`Target::check`] returns at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use tracing::{debug, warn};

use crate::config::{RedisConfig, SentinelSpec};
use crate::error::{self, NOT_PRIMARY};
use crate::lock;

/// The least time between two Sentinel lookups after errors.
const LOOKUP_EVERY: Duration = Duration::from_millis(500);

/// How long one lookup (every Sentinel asked, the primary's role checked) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The server an engine talks to, swappable. Cheap to clone (shared).
#[derive(Clone)]
pub(crate) struct Target(Arc<Shared>);

struct Shared {
    current: RwLock<Current>,
    /// `sentinel://` only: how to find the primary again.
    follow: Option<Follow>,
}

struct Current {
    client: redis::Client,
    conn: ConnectionManager,
}

struct Follow {
    master_name: String,
    /// Also the "one lookup at a time" lock: `SentinelClient` lookups take `&mut`.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// A lookup is scheduled or running.
    looking: AtomicBool,
    /// When the last lookup started.
    last: Mutex<Option<Instant>>,
    manager: redis::aio::ConnectionManagerConfig,
}

/// Clears `looking` when a lookup ends, however it ends (a runtime shutting down drops it).
struct LookupDone<'a>(&'a AtomicBool);

impl Drop for LookupDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

impl Target {
    /// Connects to the server `cfg` names (for `sentinel://`: asks the Sentinels which it
    /// is). A server or Sentinel that cannot be reached is the error
    /// `unreachable(masked_url, reason)` makes (a broker's or a backend's connection
    /// error); a URL problem is the URL's error.
    pub(crate) async fn connect(
        cfg: &RedisConfig,
        unreachable: impl FnOnce(String, String) -> crate::Error,
    ) -> Result<Self, crate::Error> {
        let (client, follow) = match &cfg.sentinel {
            None => (cfg.client()?, None),
            Some(spec) => {
                let mut sentinels = sentinel_client(spec, cfg.db).map_err(|e| {
                    celeriac_core::url::UrlError::Invalid {
                        url: cfg.masked.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let client = match lookup(&mut sentinels).await {
                    Ok(c) => c,
                    Err(reason) => {
                        return Err(unreachable(
                            cfg.masked.clone(),
                            format!(
                                "no primary for sentinel master `{}`: {reason}",
                                spec.master_name
                            ),
                        ))
                    }
                };
                let follow = Follow {
                    master_name: spec.master_name.clone(),
                    sentinels: tokio::sync::Mutex::new(sentinels),
                    looking: AtomicBool::new(false),
                    last: Mutex::new(None),
                    manager: cfg.manager_config(),
                };
                (client, Some(follow))
            }
        };
        let conn = ConnectionManager::new_with_config(client.clone(), cfg.manager_config())
            .await
            .map_err(|e| unreachable(cfg.masked.clone(), e.to_string()))?;
        Ok(Self(Arc::new(Shared {
            current: RwLock::new(Current { client, conn }),
            follow,
        })))
    }

    /// The auto-reconnecting connection to the current server.
    pub(crate) fn conn(&self) -> ConnectionManager {
        let current = self.0.current.read().unwrap_or_else(|p| p.into_inner());
        current.conn.clone()
    }

    /// A client for the current server, to make connections of one's own from.
    pub(crate) fn client(&self) -> redis::Client {
        let current = self.0.current.read().unwrap_or_else(|p| p.into_inner());
        current.client.clone()
    }

    /// Notes a failed command: if it failed the way a moved primary makes commands fail
    /// (a connection error, or [`NOT_PRIMARY`]), a `sentinel://` target looks for the
    /// primary again, in the background.
    pub(crate) fn check(&self, e: &redis::RedisError) {
        if self.0.follow.is_some() && (error::is_connection(e) || error::has_code(e, NOT_PRIMARY)) {
            self.look_again();
        }
    }

    /// As [`check`](Self::check), for an error a Lua script passed on as text.
    pub(crate) fn check_text(&self, text: &str) {
        if self.0.follow.is_some() && error::names(text, NOT_PRIMARY) {
            self.look_again();
        }
    }

    /// Starts a lookup unless one is running or the last began under [`LOOKUP_EVERY`] ago.
    fn look_again(&self) {
        let Some(follow) = &self.0.follow else { return };
        if follow.looking.swap(true, Ordering::SeqCst) {
            return;
        }
        let due = lock(&follow.last).is_none_or(|at| at.elapsed() >= LOOKUP_EVERY);
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(rt) if due => {
                let target = self.clone();
                rt.spawn(async move { target.relocate().await });
            }
            _ => follow.looking.store(false, Ordering::SeqCst),
        }
    }

    /// Asks the Sentinels for the primary; if it is another server, connects to it and
    /// swaps it in.
    async fn relocate(&self) {
        let Some(follow) = &self.0.follow else { return };
        let _done = LookupDone(&follow.looking);
        *lock(&follow.last) = Some(Instant::now());
        let found = lookup(&mut *follow.sentinels.lock().await).await;
        let client = match found {
            Ok(c) => c,
            Err(reason) => {
                debug!(
                    "sentinel master {}: no primary yet ({reason})",
                    follow.master_name
                );
                return;
            }
        };
        let (from, to) = (address(&self.client()), address(&client));
        if from == to {
            return;
        }
        let conn = match ConnectionManager::new_with_config(client.clone(), follow.manager.clone())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(
                    "sentinel master {} names {to} as the primary, but it cannot be reached ({e}); asking again on the next error",
                    follow.master_name
                );
                return;
            }
        };
        *self.0.current.write().unwrap_or_else(|p| p.into_inner()) = Current { client, conn };
        warn!(
            "redis primary moved from {from} to {to} (sentinel master {})",
            follow.master_name
        );
    }
}

/// A `SentinelClient` for the primary `spec` describes, on database `db`.
fn sentinel_client(spec: &SentinelSpec, db: i64) -> redis::RedisResult<SentinelClient> {
    let addrs = spec
        .sentinels
        .iter()
        .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
    let mut b = SentinelClientBuilder::new(addrs, &spec.master_name, SentinelServerType::Master)?
        .set_client_to_redis_db(db);
    if let Some(u) = &spec.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &spec.password {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(u) = &spec.sentinel_username {
        b = b.set_client_to_sentinel_username(u);
    }
    if let Some(p) = &spec.sentinel_password {
        b = b.set_client_to_sentinel_password(p);
    }
    b.build()
}

/// A client for the primary the Sentinels name now (redis-rs also checks that it
/// answers `ROLE` as a primary), within [`LOOKUP_TIMEOUT`].
async fn lookup(sentinels: &mut SentinelClient) -> Result<redis::Client, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, sentinels.async_get_client()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the Sentinels did not answer within {LOOKUP_TIMEOUT:?}"
        )),
    }
}
