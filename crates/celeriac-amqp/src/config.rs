//! AMQP URLs as kombu reads them, and the options celeriac honours.
//!
//! `amqp://[USER[:PASSWORD]@]HOST[:PORT][/VHOST][?OPTIONS]`, Celery's `pyamqp://`
//! spelling of the same, and `amqps://` (TLS, cargo feature `tls`; port 5671 by default). Defaults as kombu's: user and password `guest`, host
//! `localhost`, port 5672, virtual host `/`. The virtual host is the path after the first
//! `/`, percent-decoded, so `amqp://h//` and `amqp://h/%2f` both name `/`, and an empty one
//! (`amqp://h` or `amqp://h/`) means `/` too.
//!
//! Options (query string): `heartbeat` (s, default 120, Celery's `broker_heartbeat`; the
//! server may lower it; 0 turns heartbeats off), `connect_timeout` (s, default 4),
//! `confirm_publish` (default true: every publish waits for RabbitMQ's confirm),
//! `max_priority` (1–255: `x-max-priority` on every queue celeriac declares, Celery's
//! `task_queue_max_priority`) and `queue_type` (`classic` or `quorum`: `x-queue-type` on
//! the queues it declares, Celery's `task_default_queue_type`; with it `delivery_limit`,
//! `x-delivery-limit`: how often a quorum queue redelivers a message before dropping or
//! dead-lettering it), and celeriac's
//! `connection_name` (what RabbitMQ's management UI and `rabbitmqctl list_connections`
//! show for the connection; default `celeriac <version> pid <pid>`).
//!
//! TLS options (`amqps://`), named as for `rediss://` and as in Celery's
//! `broker_use_ssl`: `ssl_ca_certs` (a PEM file of the CA to verify the server with,
//! instead of the system's roots), `ssl_certfile` + `ssl_keyfile` (a client certificate
//! and its PKCS#8 key, PEM, for mutual TLS), `ssl_cert_reqs` (only `required`, the
//! default: the server's certificate is always verified).

use std::time::Duration;

use celeriac_core::url::{Engine, EngineUrl, UrlError};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use percent_encoding::percent_decode_str;

/// Everything the AMQP engine needs from its URL.
#[derive(Clone)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// The URL as given, password masked.
    pub masked: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Virtual host.
    pub vhost: String,
    /// Login.
    pub username: String,
    pub(crate) password: String,
    /// Heartbeat interval asked for (0: none).
    pub heartbeat: Duration,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// Whether publishes wait for RabbitMQ's confirm.
    pub confirm_publish: bool,
    /// `x-max-priority` for the queues this engine declares.
    pub max_priority: Option<u8>,
    /// `x-queue-type` for the queues this engine declares (`None`: classic, no argument).
    pub queue_type: Option<String>,
    /// `x-delivery-limit` for the quorum queues this engine declares.
    pub delivery_limit: Option<u32>,
    /// The name the connection shows in RabbitMQ's management (`None`: the default).
    pub connection_name: Option<String>,
    /// `amqps://`: what to trust and what to present (`None`: plain TCP).
    pub tls: Option<TlsFiles>,
}

/// The TLS material of an `amqps://` URL, read when the URL is.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// PEM of the CA(s) to verify the server with (`None`: the system's roots).
    pub ca: Option<String>,
    /// A client certificate and its key, PEM.
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.as_ref().map(|_| "PEM"))
            .field(
                "client",
                &self.client.as_ref().map(|_| "certificate and key"),
            )
            .finish()
    }
}

impl std::fmt::Debug for AmqpConfig {
    /// Every field but the password: `masked` stands for the URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("masked", &self.masked)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("vhost", &self.vhost)
            .field("username", &self.username)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_publish", &self.confirm_publish)
            .field("max_priority", &self.max_priority)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("connection_name", &self.connection_name)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The options this engine reads; any other is refused by name.
const OPTIONS: &[&str] = &[
    "heartbeat",
    "connect_timeout",
    "confirm_publish",
    "max_priority",
    "queue_type",
    "connection_name",
    "delivery_limit",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
];

fn seconds(url: &EngineUrl, key: &str, default: f64, zero_ok: bool) -> Result<Duration, UrlError> {
    match url.query(key) {
        None => Ok(Duration::from_secs_f64(default)),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s <= 86_400.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| zero_ok || !d.is_zero())
            .ok_or_else(|| {
                url.bad_option(
                    key,
                    format!("`{v}` is not a number of seconds between 0 and 86400"),
                )
            }),
    }
}

/// Reads the TLS options of an `amqps://` URL, and the files they name.
fn tls_files(url: &EngineUrl) -> Result<TlsFiles, UrlError> {
    match url.query("ssl_cert_reqs").as_deref() {
        None | Some("required" | "CERT_REQUIRED") => {}
        Some(v) => {
            return Err(url.bad_option(
                "ssl_cert_reqs",
                format!(
                "`{v}`: only `required` is supported (the server's certificate is always verified)"
            ),
            ))
        }
    }
    let read = |key: &str| -> Result<Option<Vec<u8>>, UrlError> {
        match url.query(key) {
            None => Ok(None),
            Some(path) => std::fs::read(&path)
                .map(Some)
                .map_err(|e| url.bad_option(key, format!("cannot read `{path}`: {e}"))),
        }
    };
    let ca = match read("ssl_ca_certs")? {
        None => None,
        Some(pem) => Some(
            String::from_utf8(pem)
                .map_err(|_| url.bad_option("ssl_ca_certs", "the file is not PEM text"))?,
        ),
    };
    let client = match (read("ssl_certfile")?, read("ssl_keyfile")?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(url.bad_option(
                "ssl_certfile",
                "a client certificate needs both ssl_certfile and ssl_keyfile",
            ))
        }
    };
    Ok(TlsFiles { ca, client })
}

impl AmqpConfig {
    /// Reads an `amqp://` or `pyamqp://` URL.
    pub fn from_url(url: &EngineUrl) -> Result<Self, UrlError> {
        if url.engine() != Engine::Amqp {
            return Err(url.bad_option("scheme", "not an AMQP URL"));
        }
        let tls = url.scheme() == "amqps";
        if tls && !cfg!(feature = "tls") {
            return Err(UrlError::NotCompiled {
                url: url.masked(),
                scheme: "amqps".into(),
                feature: "amqp-tls".into(),
            });
        }
        let tls = if tls {
            Some(tls_files(url)?)
        } else {
            for key in [
                "ssl_ca_certs",
                "ssl_certfile",
                "ssl_keyfile",
                "ssl_cert_reqs",
            ] {
                if url.query(key).is_some() {
                    return Err(url.bad_option(key, "TLS options need an amqps:// URL"));
                }
            }
            None
        };
        for (key, _) in url.query_pairs() {
            if !OPTIONS.contains(&key.as_str()) {
                return Err(url.bad_option(
                    &key,
                    format!("unknown option; known: {}", OPTIONS.join(", ")),
                ));
            }
        }
        let u = url.as_url();
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let username = match u.username() {
            "" => "guest".to_string(),
            name => decode(name),
        };
        let password = u.password().map_or_else(|| "guest".to_string(), decode);
        let host = match u.host_str() {
            None | Some("") => "localhost".to_string(),
            Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        };
        let port = u.port().unwrap_or(if tls.is_some() { 5671 } else { 5672 });
        let path = u.path();
        let vhost = match path.strip_prefix('/').unwrap_or(path) {
            "" => "/".to_string(),
            v => decode(v),
        };
        let confirm_publish = match url.query("confirm_publish").as_deref() {
            None | Some("true" | "1" | "yes" | "on") => true,
            Some("false" | "0" | "no" | "off") => false,
            Some(v) => {
                return Err(url.bad_option("confirm_publish", format!("`{v}` is not true or false")))
            }
        };
        let max_priority = match url.query("max_priority") {
            None => None,
            Some(v) => Some(v.parse::<u8>().ok().filter(|p| *p >= 1).ok_or_else(|| {
                url.bad_option(
                    "max_priority",
                    format!("`{v}` is not a number from 1 to 255"),
                )
            })?),
        };
        let queue_type = match url.query("queue_type").as_deref() {
            None | Some("classic") => None,
            Some("quorum") => Some("quorum".to_string()),
            Some(v) => {
                return Err(
                    url.bad_option("queue_type", format!("`{v}` is not `classic` or `quorum`"))
                )
            }
        };
        let delivery_limit = match url.query("delivery_limit") {
            None => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1 && *n <= i32::MAX as u32)
                    .ok_or_else(|| {
                        url.bad_option(
                            "delivery_limit",
                            format!("`{v}` is not a positive whole number"),
                        )
                    })?,
            ),
        };
        if delivery_limit.is_some() && queue_type.is_none() {
            return Err(url.bad_option(
                "delivery_limit",
                "x-delivery-limit is a quorum queue argument; add queue_type=quorum",
            ));
        }
        if queue_type.is_some() && max_priority.is_some() {
            return Err(url.bad_option(
                "max_priority",
                "quorum queues have no x-max-priority; drop one of max_priority and queue_type=quorum",
            ));
        }
        Ok(Self {
            masked: url.masked(),
            host,
            port,
            vhost,
            username,
            password,
            heartbeat: seconds(url, "heartbeat", 120.0, true)?,
            connect_timeout: seconds(url, "connect_timeout", 4.0, false)?,
            confirm_publish,
            max_priority,
            queue_type,
            delivery_limit,
            connection_name: url.query("connection_name").filter(|n| !n.is_empty()),
            tls,
        })
    }

    /// The URI lapin connects with.
    pub(crate) fn uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls.is_some() {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.username.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(self.heartbeat.as_secs().min(u16::MAX as u64) as u16),
                connection_timeout: Some(self.connect_timeout.as_millis() as u64),
                ..AMQPQueryString::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> Result<AmqpConfig, String> {
        AmqpConfig::from_url(&EngineUrl::parse(url).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_kombus() {
        let c = cfg("amqp://").unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.vhost.as_str(),
                c.username.as_str()
            ),
            ("localhost", 5672, "/", "guest")
        );
        assert_eq!(c.password, "guest");
        assert_eq!(c.heartbeat, Duration::from_secs(120));
        assert!(c.confirm_publish);
        let c = cfg("pyamqp://u:p%40ss@rabbit:5673//").unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.vhost.as_str(),
                c.username.as_str(),
                c.password.as_str()
            ),
            ("rabbit", 5673, "/", "u", "p@ss")
        );
        assert!(!format!("{c:?}").contains("p@ss"));
        assert_eq!(cfg("amqp://h/").unwrap().vhost, "/");
        assert_eq!(cfg("amqp://h/%2f").unwrap().vhost, "/");
        assert_eq!(cfg("amqp://h/prod").unwrap().vhost, "prod");
    }

    #[test]
    fn options_are_checked() {
        let c = cfg("amqp://h?heartbeat=0&max_priority=10&confirm_publish=false").unwrap();
        assert_eq!(c.heartbeat, Duration::ZERO);
        assert_eq!(c.max_priority, Some(10));
        assert!(!c.confirm_publish);
        assert_eq!(
            cfg("amqp://h?queue_type=quorum")
                .unwrap()
                .queue_type
                .as_deref(),
            Some("quorum")
        );
        for bad in [
            "amqp://h?heartbeat=soon",
            "amqp://h?max_priority=0",
            "amqp://h?max_priority=300",
            "amqp://h?queue_type=stream",
            "amqp://h?confirm=1",
            "amqp://h?queue_type=quorum&max_priority=5",
            "amqp://h?delivery_limit=3",
            "amqp://h?queue_type=quorum&delivery_limit=0",
        ] {
            let e = cfg(bad).expect_err(bad);
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
