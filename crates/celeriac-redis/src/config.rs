//! Redis URLs as kombu reads them, and the transport options celeriac honours.
//!
//! Forms: `redis://[USER:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]`, `rediss://…` (TLS),
//! `unix:///path/redis.sock[?db=N]`, `redis+socket:///path[?virtual_host=N]` and
//! `socket:///path`. Host defaults to 127.0.0.1, port to 6379, DB to 0; a DB that is not
//! an integer is refused with kombu's message.
//!
//! kombu's `broker_transport_options` are given as query options: `visibility_timeout`
//! (s, default 3600), `global_keyprefix`, `polling_interval` (the BRPOP timeout, s, default
//! 1), `unacked_restore_interval` (s between visibility sweeps, default 60; Celery's
//! worker sweeps about every 100 s), celeriac's `dead_after` (s of silence after which a
//! consumer is dead and a live one restores the messages it held, default 10) and
//! `heartbeat` (s between a consumer's liveness beats, default `dead_after` / 5), and for
//! TLS `ssl_cert_reqs`
//! (`required`/`optional`/`none`, as kombu spells them, `CERT_*` too), `ssl_ca_certs`
//! (a CA file to verify the server with) and `ssl_certfile` + `ssl_keyfile` (a client
//! certificate for mutual TLS).

use std::time::Duration;

use celeriac_core::url::{EngineUrl, UrlError};

/// Everything a Redis engine needs from its URL.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The URL handed to redis-rs (credentials included; never logged).
    pub(crate) client_url: String,
    /// The URL as given, password masked.
    pub masked: String,
    /// Database number.
    pub db: i64,
    /// `global_keyprefix`: prepended to every key and channel.
    pub keyprefix: String,
    /// Age after which an unacknowledged message is restored to its queue.
    pub visibility_timeout: Duration,
    /// BRPOP timeout: how long one blocking wait lasts before it is re-issued.
    pub polling_interval: Duration,
    /// Time between visibility-timeout sweeps of a consuming process.
    pub restore_interval: Duration,
    /// Silence after which a consumer is dead and its unacknowledged messages are
    /// restored by a live one (celeriac consumers only; see `broker::liveness`).
    pub dead_after: Duration,
    /// Time between a consumer's liveness beats.
    pub heartbeat: Duration,
    /// `ssl_ca_certs`: PEM file of the CA to verify the server with (instead of the
    /// system's roots).
    pub ssl_ca_certs: Option<std::path::PathBuf>,
    /// `ssl_certfile` / `ssl_keyfile`: a client certificate and key (PEM) for mutual TLS.
    pub ssl_client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn seconds(url: &EngineUrl, key: &str, default: f64) -> Result<Duration, UrlError> {
    match url.query(key) {
        None => Ok(Duration::from_secs_f64(default)),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                url.bad_option(
                    key,
                    format!("expected a positive number of seconds, got `{v}`"),
                )
            }),
    }
}

/// A database number as kombu parses it.
fn parse_db(url: &EngineUrl, text: &str) -> Result<i64, UrlError> {
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
        url.bad_option(
            "db",
            format!("Database is int between 0 and limit - 1, not {text}"),
        )
    })
}

impl RedisConfig {
    /// Reads a Redis URL.
    ///
    /// ```
    /// use celeriac_core::url::EngineUrl;
    /// use celeriac_redis::RedisConfig;
    /// let c = RedisConfig::from_url(&EngineUrl::parse("redis://:pw@cache:6380/2?visibility_timeout=60").unwrap()).unwrap();
    /// assert_eq!((c.db, c.visibility_timeout.as_secs()), (2, 60));
    /// assert_eq!(c.masked, "redis://:***@cache:6380/2?visibility_timeout=60");
    /// ```
    pub fn from_url(url: &EngineUrl) -> Result<Self, UrlError> {
        let u = url.as_url();
        let scheme = url.scheme();
        let (client_url, db) = match scheme {
            "redis" | "rediss" => {
                let db = parse_db(url, u.path().trim_start_matches('/'))?;
                let host = match u.host_str() {
                    None | Some("") => "127.0.0.1".to_string(),
                    Some(h) => h.to_string(),
                };
                let port = u.port().unwrap_or(6379);
                let auth = match (u.username(), u.password()) {
                    ("", None) => String::new(),
                    ("", Some(p)) => format!(":{p}@"),
                    (user, None) => format!(":{user}@"), // a lone userinfo is the password
                    (user, Some(p)) => format!("{user}:{p}@"),
                };
                let mut client = format!("{scheme}://{auth}{host}:{port}/{db}");
                if scheme == "rediss" {
                    match url
                        .query("ssl_cert_reqs")
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .as_deref()
                    {
                        None | Some("required") | Some("cert_required") => {}
                        Some("none")
                        | Some("cert_none")
                        | Some("optional")
                        | Some("cert_optional") => client.push_str("#insecure"),
                        Some(other) => {
                            return Err(url.bad_option(
                                "ssl_cert_reqs",
                                format!("expected required, optional or none, got `{other}`"),
                            ))
                        }
                    }
                }
                (client, db)
            }
            "unix" | "redis+socket" | "socket" => {
                let path = u.path();
                if path.is_empty() || path == "/" {
                    return Err(url.bad_option("path", "a unix socket URL needs the socket's path"));
                }
                let db_text = url
                    .query("db")
                    .or_else(|| url.query("virtual_host"))
                    .unwrap_or_default();
                let db = parse_db(url, &db_text)?;
                let auth = u
                    .password()
                    .map(|p| format!("&pass={p}"))
                    .unwrap_or_default();
                (format!("redis+unix://{path}?db={db}{auth}"), db)
            }
            other => {
                return Err(UrlError::WrongRole {
                    url: url.masked(),
                    scheme: other.to_string(),
                    role: "Redis engine".into(),
                })
            }
        };
        let dead_after = seconds(url, "dead_after", 10.0)?;
        let heartbeat = match url.query("heartbeat") {
            Some(_) => seconds(url, "heartbeat", 0.0)?,
            None => dead_after / 5,
        };
        if heartbeat >= dead_after {
            return Err(url.bad_option(
                "heartbeat",
                format!("must be shorter than dead_after ({dead_after:?}), got {heartbeat:?}"),
            ));
        }
        Ok(Self {
            client_url,
            masked: url.masked(),
            db,
            keyprefix: url.query("global_keyprefix").unwrap_or_default(),
            visibility_timeout: seconds(url, "visibility_timeout", 3600.0)?,
            polling_interval: seconds(url, "polling_interval", 1.0)?,
            restore_interval: seconds(url, "unacked_restore_interval", 60.0)?,
            dead_after,
            heartbeat,
            ssl_ca_certs: url.query("ssl_ca_certs").map(Into::into),
            ssl_client_cert: match (url.query("ssl_certfile"), url.query("ssl_keyfile")) {
                (Some(c), Some(k)) => Some((c.into(), k.into())),
                (None, None) => None,
                _ => {
                    return Err(
                        url.bad_option("ssl_certfile", "ssl_certfile and ssl_keyfile go together")
                    )
                }
            },
        })
    }

    /// Whether the URL asks for TLS.
    pub fn is_tls(&self) -> bool {
        self.client_url.starts_with("rediss://")
    }

    /// The client and an auto-reconnecting multiplexed connection: what both the broker
    /// and the backend talk through. A server that cannot be reached is the error
    /// `unreachable(masked_url, reason)` makes (a broker's or a backend's connection
    /// error); a URL problem is the URL's error.
    pub(crate) async fn connect(
        &self,
        unreachable: impl FnOnce(String, String) -> crate::Error,
    ) -> Result<(redis::Client, redis::aio::ConnectionManager), crate::Error> {
        let client = self.client()?;
        let conn = redis::aio::ConnectionManager::new_with_config(
            client.clone(),
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(30)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2)),
        )
        .await
        .map_err(|e| unreachable(self.masked.clone(), e.to_string()))?;
        Ok((client, conn))
    }

    pub(crate) fn client(&self) -> Result<redis::Client, UrlError> {
        if self.is_tls() && !cfg!(feature = "tls") {
            return Err(UrlError::NotCompiled {
                url: self.masked.clone(),
                scheme: "rediss".into(),
                feature: "redis-tls".into(),
            });
        }
        #[cfg(feature = "tls")]
        if self.is_tls() && (self.ssl_ca_certs.is_some() || self.ssl_client_cert.is_some()) {
            return self.tls_client();
        }
        redis::Client::open(self.client_url.as_str()).map_err(|e| UrlError::Invalid {
            url: self.masked.clone(),
            reason: e.to_string(),
        })
    }

    #[cfg(feature = "tls")]
    fn tls_client(&self) -> Result<redis::Client, UrlError> {
        let read = |option: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| UrlError::BadOption {
                url: self.masked.clone(),
                option: option.to_string(),
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        let root_cert = self
            .ssl_ca_certs
            .as_deref()
            .map(|p| read("ssl_ca_certs", p))
            .transpose()?;
        let client_tls = match &self.ssl_client_cert {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("ssl_certfile", cert)?,
                client_key: read("ssl_keyfile", key)?,
            }),
            None => None,
        };
        redis::Client::build_with_tls(
            self.client_url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| UrlError::Invalid {
            url: self.masked.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Result<RedisConfig, String> {
        RedisConfig::from_url(&EngineUrl::parse(s).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_kombu_url_forms() {
        let c = cfg("redis://").unwrap();
        assert_eq!(
            (c.client_url.as_str(), c.db),
            ("redis://127.0.0.1:6379/0", 0)
        );
        let c = cfg("redis://:s3cret@redis.example:6380/2").unwrap();
        assert_eq!(c.client_url, "redis://:s3cret@redis.example:6380/2");
        assert_eq!(c.masked, "redis://:***@redis.example:6380/2");
        let c = cfg(
            "redis://user:pw@h/13?global_keyprefix=app:&visibility_timeout=5&polling_interval=0.5",
        )
        .unwrap();
        assert_eq!(c.client_url, "redis://user:pw@h:6379/13");
        assert_eq!(c.keyprefix, "app:");
        assert_eq!(c.visibility_timeout, Duration::from_secs(5));
        assert_eq!(c.polling_interval, Duration::from_millis(500));
        let c = cfg("redis+socket:///var/run/redis.sock?virtual_host=3").unwrap();
        assert_eq!(
            (c.client_url.as_str(), c.db),
            ("redis+unix:///var/run/redis.sock?db=3", 3)
        );
        let c = cfg("unix:///tmp/r.sock").unwrap();
        assert_eq!(c.client_url, "redis+unix:///tmp/r.sock?db=0");
        let c = cfg("rediss://:pw@h:6380/0?ssl_cert_reqs=none").unwrap();
        assert!(c.client_url.ends_with("#insecure"));
        let c = cfg("redis://h?dead_after=3").unwrap();
        assert_eq!(
            (c.dead_after, c.heartbeat),
            (Duration::from_secs(3), Duration::from_millis(600))
        );
        let e = cfg("redis://h?dead_after=3&heartbeat=5").unwrap_err();
        assert!(e.contains("heartbeat") && e.contains("dead_after"), "{e}");
    }

    #[test]
    fn refuses_bad_options_with_kombus_words() {
        let e = cfg("redis://h/abc").unwrap_err();
        assert!(
            e.contains("Database is int between 0 and limit - 1, not abc"),
            "{e}"
        );
        let e = cfg("redis://h/0?visibility_timeout=soon").unwrap_err();
        assert!(e.contains("visibility_timeout"), "{e}");
        let e = cfg("rediss://h?ssl_cert_reqs=maybe").unwrap_err();
        assert!(e.contains("ssl_cert_reqs"), "{e}");
        assert!(cfg("unix://").is_err());
    }
}
