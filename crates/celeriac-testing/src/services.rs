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
