//! Redis URLs as kombu reads them, and the transport options celeriac honours.
//!
//! Forms: `redis://[USER:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]`, `rediss://…` (TLS),
//! `unix:///path/redis.sock[?db=N]`, `redis+socket:///path[?virtual_host=N]` and
//! `socket:///path`. Host defaults to 127.0.0.1, port to 6379, DB to 0; a DB that is not
//! an integer is refused with kombu's message.
//!
//! Sentinel, kombu's form: `sentinel://[USER:PASSWORD@]HOST[:PORT][/DB][;sentinel://HOST2[:PORT2]…]?master_name=NAME`,
//! one URL per Sentinel (port 26379 by default), the options on any of them. As in kombu
//! and Celery's `SentinelBackend`, the first URL's credentials and DB are the primary's
//! (a later URL may repeat them, not contradict them); the Sentinels themselves are asked
//! without a password unless `sentinel_password` (and `sentinel_username`) say otherwise —
//! kombu's `sentinel_kwargs={'password': …}`. `master_name` is required. kombu's
//! `min_other_sentinels` is not supported (refused unless 0), nor is TLS through
//! Sentinel (the `ssl_*` options are refused).
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
#[derive(Clone)]
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
    /// `sentinel://`: the Sentinels to ask for the primary, and how (`None` otherwise).
    pub(crate) sentinel: Option<SentinelSpec>,
}

/// What a `sentinel://` URL says: whom to ask, for which master, with which credentials.
#[derive(Clone)]
pub(crate) struct SentinelSpec {
    /// Every Sentinel, in the URL's order.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// `master_name`: the name the Sentinels monitor the primary under.
    pub(crate) master_name: String,
    /// The primary's credentials (the first URL's userinfo, decoded).
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// `sentinel_username` / `sentinel_password`: the Sentinels' own credentials.
    pub(crate) sentinel_username: Option<String>,
    pub(crate) sentinel_password: Option<String>,
}

impl std::fmt::Debug for RedisConfig {
    /// Every field but the client URL, which holds the password: `masked` stands for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("masked", &self.masked)
            .field("db", &self.db)
            .field("keyprefix", &self.keyprefix)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("polling_interval", &self.polling_interval)
            .field("restore_interval", &self.restore_interval)
            .field("dead_after", &self.dead_after)
            .field("heartbeat", &self.heartbeat)
            .field("ssl_ca_certs", &self.ssl_ca_certs)
            .field("ssl_client_cert", &self.ssl_client_cert)
            .field("sentinel", &self.sentinel)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SentinelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "***");
        f.debug_struct("SentinelSpec")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &hidden(&self.sentinel_password))
            .finish()
    }
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

/// A percent-encoded part of a URL (a user name, a password) as its text.
fn decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A URL's credentials as (user name, password); a lone userinfo is the password, as
/// for `redis://`.
fn credentials(u: &url::Url) -> (Option<String>, Option<String>) {
    match (u.username(), u.password()) {
        ("", None) => (None, None),
        ("", Some(p)) => (None, Some(decoded(p))),
        (user, None) => (None, Some(decoded(user))),
        (user, Some(p)) => (Some(decoded(user)), Some(decoded(p))),
    }
}

/// Reads a `sentinel://` URL (list): the Sentinels, `master_name`, the primary's DB and
/// credentials (the first URL's, as kombu reads them).
fn sentinel_spec(url: &EngineUrl) -> Result<(SentinelSpec, i64), UrlError> {
    let first = url.as_url();
    let db = parse_db(url, first.path().trim_start_matches('/'))?;
    let (username, password) = credentials(first);
    let mut sentinels = Vec::new();
    for (i, u) in std::iter::once(first).chain(url.alternates()).enumerate() {
        let path = u.path().trim_start_matches('/');
        if !path.is_empty() && parse_db(url, path)? != db {
            return Err(url.bad_option(
                "db",
                format!("the primary's database is the first URL's ({db}), as kombu reads it; a later URL names {path}"),
            ));
        }
        if i > 0
            && (!u.username().is_empty() || u.password().is_some())
            && credentials(u) != (username.clone(), password.clone())
        {
            return Err(url.bad_option(
                "password",
                "the primary's credentials are the first URL's, as kombu reads them; a later URL names others",
            ));
        }
        let host = match u.host_str() {
            None | Some("") => "127.0.0.1".to_string(),
            Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        };
        sentinels.push((host, u.port().unwrap_or(26379)));
    }
    let master_name = url.query("master_name").filter(|m| !m.is_empty()).ok_or_else(|| {
        url.bad_option(
            "master_name",
            "a sentinel:// URL needs the name the Sentinels monitor the primary under, e.g. ?master_name=mymaster",
        )
    })?;
    if url
        .query("min_other_sentinels")
        .is_some_and(|v| v.trim() != "0")
    {
        return Err(url.bad_option(
            "min_other_sentinels",
            "not supported: the first Sentinel that names a primary which confirms its role is believed",
        ));
    }
    if let Some(option) = [
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
    ]
    .into_iter()
    .find(|o| url.query(o).is_some())
    {
        return Err(url.bad_option(option, "TLS through Sentinel is not supported"));
    }
    let spec = SentinelSpec {
        sentinels,
        master_name,
        username,
        password,
        sentinel_username: url.query("sentinel_username"),
        sentinel_password: url.query("sentinel_password"),
    };
    Ok((spec, db))
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
        let mut sentinel = None;
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
            "sentinel" => {
                let (spec, db) = sentinel_spec(url)?;
                sentinel = Some(spec);
                // No fixed address: the primary is whichever the Sentinels name (`target`).
                (String::new(), db)
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
            sentinel,
        })
    }

    /// `master_name`, for a `sentinel://` URL: the name the Sentinels monitor the primary
    /// under.
    pub fn master_name(&self) -> Option<&str> {
        self.sentinel.as_ref().map(|s| s.master_name.as_str())
    }

    /// Whether the URL asks for TLS.
    pub fn is_tls(&self) -> bool {
        self.client_url.starts_with("rediss://")
    }

    /// How the auto-reconnecting connection every non-blocking command goes through is
    /// made (`target`).
    pub(crate) fn manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
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
        let c = cfg("redis://:s3cret@h:6380/1").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let c = cfg("redis://h?dead_after=3").unwrap();
        assert_eq!(
            (c.dead_after, c.heartbeat),
            (Duration::from_secs(3), Duration::from_millis(600))
        );
        let e = cfg("redis://h?dead_after=3&heartbeat=5").unwrap_err();
        assert!(e.contains("heartbeat") && e.contains("dead_after"), "{e}");
    }

    #[test]
    fn reads_sentinel_lists_as_kombu_does() {
        let c = cfg("sentinel://:s3cret@s1:26380/2;sentinel://s2;sentinel://[::1]:26381?master_name=mymaster&sentinel_password=sp&visibility_timeout=60")
            .unwrap();
        let spec = c.sentinel.as_ref().unwrap();
        assert_eq!(
            spec.sentinels,
            [
                ("s1".to_string(), 26380),
                ("s2".to_string(), 26379),
                ("::1".to_string(), 26381)
            ]
        );
        assert_eq!((c.master_name(), c.db), (Some("mymaster"), 2));
        assert_eq!(
            (spec.username.as_deref(), spec.password.as_deref()),
            (None, Some("s3cret"))
        );
        assert_eq!(
            (
                spec.sentinel_username.as_deref(),
                spec.sentinel_password.as_deref()
            ),
            (None, Some("sp"))
        );
        assert_eq!(c.visibility_timeout, Duration::from_secs(60));
        assert!(!c.is_tls());
        assert_eq!(
            c.masked,
            "sentinel://:***@s1:26380/2;sentinel://s2;sentinel://[::1]:26381?master_name=mymaster&sentinel_password=***&visibility_timeout=60"
        );
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("\"sp\""),
            "{debug}"
        );
        // The option on the first URL, credentials percent-decoded, a repeated DB (Celery's
        // form) accepted.
        let c = cfg("sentinel://app:p%40ss@h1/3?master_name=m;sentinel://app:p%40ss@h2/3").unwrap();
        let spec = c.sentinel.as_ref().unwrap();
        assert_eq!(
            (spec.username.as_deref(), spec.password.as_deref(), c.db),
            (Some("app"), Some("p@ss"), 3)
        );
        assert_eq!(c.master_name(), Some("m"));
        assert_eq!(cfg("redis://h").unwrap().master_name(), None);
    }

    #[test]
    fn refuses_sentinel_urls_it_cannot_serve_in_one_line() {
        for (url, words) in [
            ("sentinel://:pw@h1:26379", "master_name"),
            ("sentinel://h1?master_name=", "master_name"),
            ("sentinel://h1;sentinel://h2/4?master_name=m", "first URL"),
            (
                "sentinel://:pw@h1;sentinel://:zz9@h2?master_name=m",
                "credentials",
            ),
            (
                "sentinel://h1?master_name=m&min_other_sentinels=1",
                "min_other_sentinels",
            ),
            ("sentinel://h1?master_name=m&ssl_cert_reqs=none", "TLS"),
            ("sentinel://h1/x?master_name=m", "Database is int"),
        ] {
            let e = cfg(url).unwrap_err();
            assert!(e.contains(words) && !e.contains('\n'), "{url}: {e}");
            assert!(!e.contains("pw@") && !e.contains("zz9"), "{url}: {e}");
        }
        assert!(cfg("sentinel://h1?master_name=m&min_other_sentinels=0").is_ok());
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
