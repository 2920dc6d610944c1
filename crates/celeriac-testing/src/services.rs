//! Finding the services tests talk to, and skipping loudly when one is absent.
//!
//! Addresses come from `CELERIAC_TEST_REDIS_URL` / `CELERIAC_TEST_AMQP_URL` (defaults on
//! 127.0.0.1). A service that does not answer a TCP connect within a second either fails
//! the test (`CELERIAC_REQUIRE_SERVICES=1`, as CI sets) or skips it with a line written
//! straight to stderr — libtest hides `eprintln!` output of passing tests, so a skip would
//! otherwise be silent.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::time::Duration;

/// Redis for tests.
pub fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// RabbitMQ for tests.
pub fn amqp_url() -> String {
    std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Whether absent services fail tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("CELERIAC_REQUIRE_SERVICES")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Returns `Some(url)` if the service at `url` accepts a TCP connection; otherwise panics
/// (services required) or reports the skip for `test` on stderr and returns `None`.
pub fn require(test: &str, service: &str, url: &str, hint: &str) -> Option<String> {
    let reachable = url::Url::parse(url).ok().and_then(|u| {
        let host = u.host_str()?.to_string();
        let port = u.port_or_known_default().or(match u.scheme() {
            "redis" | "rediss" => Some(6379),
            "amqp" => Some(5672),
            _ => None,
        })?;
        (host.as_str(), port).to_socket_addrs().ok()?.next()
    });
    let ok = reachable.is_some_and(|addr| {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    });
    if ok {
        return Some(url.to_string());
    }
    let masked = celeriac_core::url::mask(url);
    if services_required() {
        panic!("{test}: no {service} at {masked} and CELERIAC_REQUIRE_SERVICES=1 ({hint})");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no {service} at {masked} ({hint})"
    );
    None
}

/// A name no other test uses, for queues and key prefixes.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A key prefix on the test Redis that belongs to one test: its URL carries
/// `global_keyprefix`, and dropping it deletes every key under the prefix, so the shared
/// server keeps nothing from finished tests (and is never flushed).
#[derive(Debug)]
pub struct RedisScope {
    /// The server URL without options.
    pub base: String,
    /// The prefix, ending in `:`.
    pub prefix: String,
}

impl RedisScope {
    /// A scope on the test Redis, or `None` (skipped loudly) when there is none.
    pub fn new(test: &str) -> Option<Self> {
        let base = require(
            test,
            "Redis",
            &redis_url(),
            "start redis-server or set CELERIAC_TEST_REDIS_URL",
        )?;
        Some(Self {
            base: base.trim_end_matches('/').to_string(),
            prefix: format!("{}:", unique("celeriac-test")),
        })
    }

    /// The URL for database 0 with this scope's prefix and extra `options` (`a=1&b=2`).
    pub fn url(&self, options: &str) -> String {
        let sep = if options.is_empty() { "" } else { "&" };
        format!(
            "{}/0?global_keyprefix={}{sep}{options}",
            self.base, self.prefix
        )
    }

    /// Deletes every key under the prefix now.
    pub fn clear(&self) {
        let Ok(client) = redis::Client::open(format!("{}/0", self.base)) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys: Vec<String> = match redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
        {
            Ok(k) => k,
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

impl Drop for RedisScope {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A `redis-server` of a test's own, on a free port, for fault tests (restarts, outages)
/// that must not disturb the shared server. Killed and its files removed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    tls_port: Option<u16>,
    dir: std::path::PathBuf,
    options: ServerOptions,
    child: Option<std::process::Child>,
}

/// What a test's own `redis-server` offers besides plain TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerOptions {
    /// Append-only file, fsync on every write (survives restarts).
    pub persistent: bool,
    /// A TLS port too, with a self-signed certificate for 127.0.0.1 (made with `openssl`).
    pub tls: bool,
    /// A unix socket too.
    pub unix_socket: bool,
    /// Microseconds Redis waits per key while it loads its dataset at start-up (its
    /// `key-load-delay`): with some thousand keys stored, a restart answers `LOADING` for
    /// seconds, as a large production dataset does.
    pub key_load_delay_us: u32,
}

/// Whether `redis-server` can be run; if not, panics (services required) or reports the
/// skip for `test`.
fn redis_server_installed(test: &str) -> bool {
    let installed = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        if services_required() {
            panic!("{test}: redis-server is not installed and CELERIAC_REQUIRE_SERVICES=1");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: no redis-server binary (install redis-server)"
        );
    }
    installed
}

/// A synchronous connection to a test's own server, or a panic naming it.
fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `within`; panics with
/// `what` after that.
fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on, never the same twice in this process: the OS may hand a
/// just-released port out again, and two servers started by parallel tests (or one
/// server's plain and TLS ports) must not race for it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl RedisServer {
    /// Starts one (`persistent`: append-only file, fsync on every write), or returns
    /// `None` (skipped loudly) if `redis-server` is not installed.
    pub fn start(test: &str, persistent: bool) -> Option<Self> {
        Self::start_with(
            test,
            ServerOptions {
                persistent,
                ..ServerOptions::default()
            },
        )
    }

    /// Starts one with `options`, or `None` (skipped loudly) without `redis-server`.
    pub fn start_with(test: &str, options: ServerOptions) -> Option<Self> {
        if !redis_server_installed(test) {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("celeriac-redis"));
        std::fs::create_dir_all(&dir).expect("temp dir for redis-server");
        if options.tls && !self_signed_cert(test, &dir) {
            return None;
        }
        let mut server = Self {
            port: free_port(),
            tls_port: options.tls.then(free_port),
            dir,
            options,
            child: None,
        };
        server.spawn(true);
        Some(server)
    }

    /// `rediss://127.0.0.1:<tls port>` (with `ServerOptions::tls`).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}"))
    }

    /// The self-signed certificate the TLS port presents (PEM).
    pub fn tls_cert(&self) -> std::path::PathBuf {
        self.dir.join("cert.pem")
    }

    /// The unix socket path (with `ServerOptions::unix_socket`).
    pub fn socket(&self) -> Option<std::path::PathBuf> {
        self.options
            .unix_socket
            .then(|| self.dir.join("redis.sock"))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the process; `may_move`: on a first start, new ports if one was taken.
    fn spawn(&mut self, may_move: bool) {
        let aof = if self.options.persistent { "yes" } else { "no" };
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", aof, "--appendfsync", "always"])
        .arg("--dir")
        .arg(&self.dir);
        if let Some(tls_port) = self.tls_port {
            cmd.args([
                "--tls-port",
                &tls_port.to_string(),
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(self.dir.join("cert.pem"))
            .arg("--tls-key-file")
            .arg(self.dir.join("key.pem"))
            .arg("--tls-ca-cert-file")
            .arg(self.dir.join("cert.pem"));
        }
        if self.options.key_load_delay_us > 0 {
            cmd.args([
                "--key-load-delay",
                &self.options.key_load_delay_us.to_string(),
                "--loading-process-events-interval-bytes",
                "1024",
            ]);
        }
        if let Some(sock) = self.socket() {
            cmd.arg("--unixsocket")
                .arg(sock)
                .args(["--unixsocketperm", "700"]);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // It exits at once when a port was taken meanwhile (by a process outside
            // this one): new ports, and again.
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                assert!(
                    may_move && std::time::Instant::now() < deadline,
                    "redis-server on port {} exited at start: {status}",
                    self.port
                );
                self.port = free_port();
                self.tls_port = self.tls_port.map(|_| free_port());
                return self.spawn(true);
            }
            let up = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            // A server still loading its dataset is up: it answers `LOADING`.
            if up.is_ok()
                || up.as_ref().is_err_and(|e| {
                    self.options.key_load_delay_us > 0 && e.code() == Some("LOADING")
                })
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server gracefully (SIGTERM: it writes its data and exits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Stops and starts the server on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(false);
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes this server a replica of `primary` (`REPLICAOF`) and waits (up to 10 s) until
    /// the link is up and the first sync is done.
    pub fn replicate(&self, primary: &RedisServer) {
        let mut c = connect(&self.url());
        redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(primary.port)
            .exec(&mut c)
            .unwrap_or_else(|e| panic!("REPLICAOF on port {}: {e}", self.port));
        wait_for(
            &format!("port {} to replicate port {}", self.port, primary.port),
            Duration::from_secs(10),
            || {
                let info: String = redis::cmd("INFO").arg("replication").query(&mut c).ok()?;
                (info.contains("master_link_status:up")
                    && info.contains("master_sync_in_progress:0"))
                .then_some(())
            },
        );
    }
}

/// A Redis Sentinel of a test's own (`redis-server <conf> --sentinel`) on a free port,
/// the only Sentinel (quorum 1) of one primary, with short timeouts (down after 1 s,
/// failover timeout 5 s) so failover tests take seconds. Killed and its files removed on
/// drop.
#[derive(Debug)]
pub struct RedisSentinel {
    port: u16,
    name: String,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl RedisSentinel {
    /// Starts one monitoring the primary on `127.0.0.1:<primary_port>` as `name`, and
    /// waits until it knows the primary; `None` (skipped loudly) without `redis-server`.
    pub fn start(test: &str, name: &str, primary_port: u16) -> Option<Self> {
        if !redis_server_installed(test) {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("celeriac-sentinel"));
        std::fs::create_dir_all(&dir).expect("temp dir for redis-sentinel");
        let port = free_port();
        // Sentinel rewrites its configuration file, so it lives in the temp dir too.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n",
                dir.display()
            ),
        )
        .expect("sentinel.conf written");
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        let sentinel = Self {
            port,
            name: name.to_string(),
            dir,
            child: Some(child),
        };
        wait_for(
            &format!("the Sentinel on port {port} to know `{name}`"),
            Duration::from_secs(10),
            || sentinel.try_primary_port(),
        );
        Some(sentinel)
    }

    /// `redis://127.0.0.1:<port>`, to send `SENTINEL` commands to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn try_primary_port(&self) -> Option<u16> {
        let mut c = redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
            .ok()?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.name)
            .query(&mut c)
            .ok()?;
        addr.map(|(_, port)| port)
    }

    /// The port of the primary it names now (`SENTINEL get-master-addr-by-name`).
    pub fn primary_port(&self) -> u16 {
        self.try_primary_port()
            .unwrap_or_else(|| panic!("the Sentinel on port {} names no primary", self.port))
    }

    /// Waits (up to 15 s) until it knows `n` replicas it could promote (connected, not
    /// down).
    pub fn wait_for_replicas(&self, n: usize) {
        let mut c = connect(&self.url());
        wait_for(
            &format!("the Sentinel to know {n} healthy replica(s)"),
            Duration::from_secs(15),
            || {
                let replicas: Vec<std::collections::HashMap<String, String>> =
                    redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(&self.name)
                        .query(&mut c)
                        .ok()?;
                let healthy = replicas
                    .iter()
                    .filter(|r| {
                        r.get("flags").is_some_and(|f| {
                            f.contains("slave")
                                && !f.contains("down")
                                && !f.contains("disconnected")
                        }) && r.get("master-link-status").is_some_and(|s| s == "ok")
                    })
                    .count();
                (healthy >= n).then_some(())
            },
        );
    }

    /// `SENTINEL FAILOVER`, retried (up to 15 s) while the Sentinel is not ready for it
    /// (`NOGOODSLAVE`, `INPROG`); then waits (up to 20 s) until it names a primary other
    /// than `from_port`, and returns that primary's port.
    pub fn failover(&self, from_port: u16) -> u16 {
        let mut c = connect(&self.url());
        wait_for(
            "the Sentinel to accept SENTINEL FAILOVER",
            Duration::from_secs(15),
            || {
                redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(&self.name)
                    .exec(&mut c)
                    .ok()
            },
        );
        self.wait_for_new_primary(from_port)
    }

    /// Waits (up to 20 s) until it names a primary other than `from_port`; returns its port.
    pub fn wait_for_new_primary(&self, from_port: u16) -> u16 {
        wait_for(
            &format!("the Sentinel to name a primary other than port {from_port}"),
            Duration::from_secs(20),
            || self.try_primary_port().filter(|p| *p != from_port),
        )
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes `cert.pem` and `key.pem` (PKCS#8) in `dir`: a self-signed certificate for
/// 127.0.0.1, made with `openssl`. Without openssl: false, skipped loudly (or a panic
/// under `CELERIAC_REQUIRE_SERVICES=1`).
fn self_signed_cert(test: &str, dir: &std::path::Path) -> bool {
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output();
    if made.is_ok_and(|o| o.status.success()) {
        return true;
    }
    if services_required() {
        panic!(
            "{test}: cannot make a TLS certificate with openssl and CELERIAC_REQUIRE_SERVICES=1"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no openssl to make a TLS certificate"
    );
    false
}

/// A TLS front for a plain TCP service (RabbitMQ has no TLS listener here): `socat`
/// terminating TLS with a self-signed certificate for 127.0.0.1 on a free port, and
/// asking clients for a certificate signed by it when `client_certs`. Killed on drop.
#[derive(Debug)]
pub struct TlsFront {
    port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl TlsFront {
    /// Starts one in front of `upstream` (`host:port`), or returns `None` (skipped
    /// loudly) without openssl or socat.
    pub fn start(test: &str, upstream: &str, client_certs: bool) -> Option<Self> {
        let dir = std::env::temp_dir().join(unique("celeriac-tls"));
        std::fs::create_dir_all(&dir).expect("temp dir for the TLS front");
        if !self_signed_cert(test, &dir) {
            return None;
        }
        let port = free_port();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify={}",
            cert.display(),
            key.display(),
            cert.display(),
            u8::from(client_certs)
        );
        let child = std::process::Command::new("socat")
            .arg(listen)
            .arg(format!("TCP:{upstream}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                if services_required() {
                    panic!("{test}: cannot run socat ({e}) and CELERIAC_REQUIRE_SERVICES=1");
                }
                let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no socat ({e})");
                return None;
            }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{test}: socat did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { port, dir, child })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its certificate (PEM): the CA to trust, and a client certificate it accepts.
    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.join("cert.pem")
    }

    /// The key of [`TlsFront::cert`] (PKCS#8 PEM).
    pub fn key(&self) -> std::path::PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory of a test's own under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: std::path::PathBuf,
}

impl ScratchDir {
    /// A fresh, empty directory.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A `sqlite://` URL for a database file `name` in it, with `options` (`a=1&b=2`).
    pub fn sqlite_url(&self, name: &str, options: &str) -> String {
        let sep = if options.is_empty() { "" } else { "?" };
        format!("sqlite://{}{sep}{options}", self.path.join(name).display())
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
