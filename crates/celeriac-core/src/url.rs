//! Broker and result-backend URLs: parsing, credential masking, and the one list of
//! schemes celeriac knows, so every unknown scheme gets the same "did you mean" error.
//!
//! Which engine serves a scheme is decided by the facade crate (engines are features);
//! this module only knows the names, as kombu's `TRANSPORT_ALIASES` does.

use std::fmt;

/// The engine that serves a scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Engine {
    /// `memory://`: in-process broker and result store.
    Memory,
    /// `sqlite://`: the embedded SQLite engine.
    Sqlite,
    /// `redis://` and its spellings: the Redis engine.
    Redis,
    /// `amqp://` and its spellings: RabbitMQ.
    Amqp,
    /// `rpc://`: results sent as messages over the AMQP broker.
    Rpc,
    /// `disabled://`: no result backend.
    Disabled,
}

impl Engine {
    /// The cargo feature of the `celeriac` crate that compiles this engine in (`None`
    /// for engines that are always there).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Engine::Sqlite => Some("sqlite"),
            Engine::Redis => Some("redis"),
            Engine::Amqp | Engine::Rpc => Some("amqp"),
            Engine::Memory | Engine::Disabled => None,
        }
    }

    /// Whether this engine can store results (so a broker URL of it can be the default
    /// result backend too).
    pub fn stores_results(self) -> bool {
        matches!(self, Engine::Memory | Engine::Sqlite | Engine::Redis)
    }
}

/// Every URL scheme celeriac understands: the one list, with the engine that serves each
/// and what it is for.
pub const KNOWN_SCHEMES: &[(&str, Engine, &str)] = &[
    (
        "memory",
        Engine::Memory,
        "in-process broker and result store",
    ),
    ("sqlite", Engine::Sqlite, "embedded SQLite file"),
    ("redis", Engine::Redis, "Redis"),
    ("rediss", Engine::Redis, "Redis over TLS"),
    ("unix", Engine::Redis, "Redis on a unix socket"),
    (
        "redis+socket",
        Engine::Redis,
        "Redis on a unix socket (kombu's spelling)",
    ),
    (
        "socket",
        Engine::Redis,
        "Redis on a unix socket (kombu's short spelling)",
    ),
    ("amqp", Engine::Amqp, "RabbitMQ"),
    ("amqps", Engine::Amqp, "RabbitMQ over TLS"),
    ("pyamqp", Engine::Amqp, "RabbitMQ (Celery's alias)"),
    ("rpc", Engine::Rpc, "results over the AMQP broker"),
    ("disabled", Engine::Disabled, "no result backend"),
];

/// A broker or backend URL that has been split into its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineUrl {
    raw: String,
    parsed: url::Url,
    engine: Engine,
}

/// Why a URL could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The text is not a URL at all.
    #[error("invalid URL `{url}`: {reason} (expected something like redis://localhost:6379/0 or sqlite:///path/to/file.db)")]
    Invalid {
        /// The URL as given, credentials masked.
        url: String,
        /// What the parser objected to.
        reason: String,
    },
    /// The scheme is not one celeriac knows.
    #[error("unknown scheme `{scheme}` in `{url}`{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_else(|| format!("; expected one of {}", known_list())))]
    UnknownScheme {
        /// The URL as given, credentials masked.
        url: String,
        /// The scheme that was not recognised.
        scheme: String,
        /// The closest known scheme, if one is close.
        suggestion: Option<String>,
    },
    /// The scheme is known but its engine was not compiled into this binary.
    #[error("`{scheme}://` is not available in this build (URL `{url}`): celeriac was built without its `{feature}` engine")]
    NotCompiled {
        /// The URL as given, credentials masked.
        url: String,
        /// The scheme.
        scheme: String,
        /// The cargo feature that provides it.
        feature: String,
    },
    /// The scheme is known but cannot serve this role (e.g. `rpc://` as a broker).
    #[error("`{scheme}://` cannot be used as a {role} (URL `{url}`)")]
    WrongRole {
        /// The URL as given, credentials masked.
        url: String,
        /// The scheme.
        scheme: String,
        /// "broker" or "result backend".
        role: String,
    },
    /// A query option had a value the engine does not accept.
    #[error("bad option `{option}` in `{url}`: {reason}")]
    BadOption {
        /// The URL as given, credentials masked.
        url: String,
        /// The option name.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn known_list() -> String {
    KNOWN_SCHEMES
        .iter()
        .map(|(s, _, _)| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl EngineUrl {
    /// Parses a URL and checks that its scheme is a known one.
    ///
    /// ```
    /// use celeriac_core::url::EngineUrl;
    /// let u = EngineUrl::parse("redis://:secret@localhost:6379/0").unwrap();
    /// assert_eq!(u.scheme(), "redis");
    /// assert_eq!(u.masked(), "redis://:***@localhost:6379/0");
    /// let err = EngineUrl::parse("reddis://localhost").unwrap_err();
    /// assert!(err.to_string().contains("did you mean `redis`"));
    /// ```
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let parsed = url::Url::parse(text.trim()).map_err(|e| UrlError::Invalid {
            url: mask(text),
            reason: e.to_string(),
        })?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        let Some(&(_, engine, _)) = KNOWN_SCHEMES.iter().find(|(s, _, _)| *s == scheme) else {
            let suggestion = KNOWN_SCHEMES
                .iter()
                .map(|(s, _, _)| (strsim::levenshtein(s, &scheme), *s))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, s)| s.to_string());
            return Err(UrlError::UnknownScheme {
                url: mask(text),
                scheme,
                suggestion,
            });
        };
        Ok(Self {
            raw: text.trim().to_string(),
            parsed,
            engine,
        })
    }

    /// The scheme, lower-case (`redis`, `memory`, ...).
    pub fn scheme(&self) -> &str {
        self.parsed.scheme()
    }

    /// The engine that serves this URL's scheme.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The host part, empty when absent (`memory://` has none).
    pub fn host(&self) -> &str {
        self.parsed.host_str().unwrap_or("")
    }

    /// The path part, without decoding.
    pub fn path(&self) -> &str {
        self.parsed.path()
    }

    /// The value of a query option, if present.
    pub fn query(&self, key: &str) -> Option<String> {
        self.parsed
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// All query options in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The parsed URL, for engines that need every part.
    pub fn as_url(&self) -> &url::Url {
        &self.parsed
    }

    /// The URL as given, with the password replaced by `***`: safe to log.
    pub fn masked(&self) -> String {
        mask(&self.raw)
    }

    /// The URL as given, credentials included. Never log this.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// A "bad option" error for this URL.
    pub fn bad_option(&self, option: &str, reason: impl Into<String>) -> UrlError {
        UrlError::BadOption {
            url: self.masked(),
            option: option.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Debug for EngineUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EngineUrl").field(&self.masked()).finish()
    }
}

impl fmt::Display for EngineUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Replaces the password of a URL-like string with `***`, leaving the rest as written.
///
/// Works on text that does not parse as a URL too, so error messages about bad URLs can
/// still be logged safely.
pub fn mask(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return text.to_string();
    };
    let userinfo = &authority[..at];
    let masked_userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // A lone userinfo is a password for Redis (`redis://secret@host`).
        None => "***".to_string(),
    };
    format!(
        "{}://{}@{}{}",
        &text[..scheme_end],
        masked_userinfo,
        &authority[at + 1..],
        &rest[authority_end..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_every_form() {
        assert_eq!(mask("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(mask("amqp://guest:guest@h//"), "amqp://guest:***@h//");
        assert_eq!(mask("redis://pw@h"), "redis://***@h");
        assert_eq!(mask("redis://h:6379"), "redis://h:6379");
        assert_eq!(mask("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(mask("garbage"), "garbage");
        assert_eq!(mask("a://u:p@h?x=@y"), "a://u:***@h?x=@y");
    }

    #[test]
    fn unknown_scheme_suggests_the_closest() {
        let e = EngineUrl::parse("reddis://x").unwrap_err();
        assert_eq!(
            e,
            UrlError::UnknownScheme {
                url: "reddis://x".into(),
                scheme: "reddis".into(),
                suggestion: Some("redis".into())
            }
        );
        let e = EngineUrl::parse("kafka://x").unwrap_err().to_string();
        assert!(e.contains("expected one of memory://"), "{e}");
    }

    #[test]
    fn invalid_url_names_it_masked() {
        let e = EngineUrl::parse("redis://:pw@[bad")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis://:***@[bad"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        assert!(EngineUrl::parse("not a url").is_err());
    }

    #[test]
    fn reads_parts() {
        let u = EngineUrl::parse("memory://shared?priority_order=high_first").unwrap();
        assert_eq!(u.scheme(), "memory");
        assert_eq!(u.host(), "shared");
        assert_eq!(u.query("priority_order").as_deref(), Some("high_first"));
        assert_eq!(u.query("nope"), None);
        assert_eq!(EngineUrl::parse("memory://").unwrap().host(), "");
    }
}
