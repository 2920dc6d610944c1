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
    /// `redis://` and its spellings, and `sentinel://`: the Redis engine.
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
    (
        "sentinel",
        Engine::Redis,
        "Redis whose primary Sentinel names (`;`-separated list, `master_name`)",
    ),
    ("amqp", Engine::Amqp, "RabbitMQ"),
    ("amqps", Engine::Amqp, "RabbitMQ over TLS"),
    ("pyamqp", Engine::Amqp, "RabbitMQ (Celery's alias)"),
    ("rpc", Engine::Rpc, "results over the AMQP broker"),
    ("disabled", Engine::Disabled, "no result backend"),
];

/// Schemes whose URL may be a `;`-separated list (kombu's "alternates"), as
/// `sentinel://h1:26379;sentinel://h2:26379` names every Sentinel of one deployment.
const LIST_SCHEMES: &[&str] = &["sentinel"];

/// A broker or backend URL that has been split into its parts.
///
/// A `sentinel://` URL may be a list, `sentinel://h1:26379;sentinel://h2:26379/0?…`: the
/// first is the URL ([`as_url`](Self::as_url), [`host`](Self::host), ...), the others
/// are its [`alternates`](Self::alternates), and [`query`](Self::query) reads options
/// from any of them.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineUrl {
    raw: String,
    parsed: url::Url,
    alternates: Vec<url::Url>,
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
        let text = text.trim();
        let invalid = |reason: String| UrlError::Invalid {
            url: mask(text),
            reason,
        };
        let is_list = text
            .split_once("://")
            .is_some_and(|(s, _)| LIST_SCHEMES.contains(&s.to_ascii_lowercase().as_str()));
        let (first, rest) = if is_list {
            let mut pieces = list_pieces(text).into_iter();
            (pieces.next().unwrap_or(text), pieces.collect())
        } else {
            (text, Vec::new())
        };
        let parsed = url::Url::parse(first).map_err(|e| invalid(e.to_string()))?;
        let mut alternates = Vec::with_capacity(rest.len());
        for piece in rest {
            let alt =
                url::Url::parse(piece).map_err(|e| invalid(format!("`{}`: {e}", mask(piece))))?;
            if alt.scheme() != parsed.scheme() {
                return Err(invalid(format!(
                    "every URL of a `;`-separated list must be {}://, not `{}`",
                    parsed.scheme(),
                    mask(piece)
                )));
            }
            alternates.push(alt);
        }
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
            raw: text.to_string(),
            parsed,
            alternates,
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

    /// The value of a query option, if present: from the first URL of a list that has it.
    pub fn query(&self, key: &str) -> Option<String> {
        self.all()
            .find_map(|u| u.query_pairs().find(|(k, _)| k == key))
            .map(|(_, v)| v.into_owned())
    }

    /// All query options in order (of every URL of a list).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.all()
            .flat_map(|u| u.query_pairs())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The URLs after the first of a `;`-separated list (`sentinel://` only), in order;
    /// empty for a single URL.
    pub fn alternates(&self) -> &[url::Url] {
        &self.alternates
    }

    fn all(&self) -> impl Iterator<Item = &url::Url> {
        std::iter::once(&self.parsed).chain(&self.alternates)
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

/// Splits `text` at every `;` that starts another URL (`;scheme://`), as kombu splits a
/// list of alternates; a `;` anywhere else (a password, a path) is kept.
fn list_pieces(text: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        rest.split_once("://").is_some_and(|(scheme, _)| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        })
    };
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(';') {
        if starts_url(&text[i + 1..]) {
            pieces.push(&text[start..i]);
            start = i + 1;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// Replaces the passwords of a URL-like string with `***`, leaving the rest as written:
/// the userinfo's, those of every URL of a `;`-separated list, and the values of query
/// options named `password` or `…_password` (`sentinel_password`).
///
/// Works on text that does not parse as a URL too, so error messages about bad URLs can
/// still be logged safely.
pub fn mask(text: &str) -> String {
    list_pieces(text)
        .into_iter()
        .map(mask_one)
        .collect::<Vec<_>>()
        .join(";")
}

/// Masks the query values of options whose name ends in `password`.
fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().ends_with("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn mask_one(text: &str) -> String {
    let masked = mask_userinfo(text);
    let Some(q) = masked.find('?') else {
        return masked;
    };
    let end = masked[q..].find('#').map_or(masked.len(), |i| q + i);
    format!(
        "{}?{}{}",
        &masked[..q],
        mask_query(&masked[q + 1..end]),
        &masked[end..]
    )
}

fn mask_userinfo(text: &str) -> String {
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
        assert_eq!(
            mask("sentinel://:pw@h1:26379;sentinel://:pw2@h2/0?master_name=m"),
            "sentinel://:***@h1:26379;sentinel://:***@h2/0?master_name=m"
        );
        assert_eq!(
            mask("sentinel://h?master_name=m&sentinel_password=s3&password=p#x"),
            "sentinel://h?master_name=m&sentinel_password=***&password=***#x"
        );
        // A `;` that does not start another URL is part of the password or the path.
        assert_eq!(mask("redis://:pa;ss@h"), "redis://:***@h");
        assert_eq!(mask("sqlite:///tmp/a;b.db"), "sqlite:///tmp/a;b.db");
    }

    #[test]
    fn sentinel_lists_parse_into_alternates() {
        let u = EngineUrl::parse(
            "sentinel://:pw@h1:26379/2;sentinel://h2:26380;sentinel://h3?master_name=m",
        )
        .unwrap();
        assert_eq!(u.engine(), Engine::Redis);
        assert_eq!((u.host(), u.as_url().port()), ("h1", Some(26379)));
        let alts: Vec<_> = u.alternates().iter().map(|a| a.host_str()).collect();
        assert_eq!(alts, [Some("h2"), Some("h3")]);
        assert_eq!(u.query("master_name").as_deref(), Some("m"));
        assert_eq!(
            u.masked(),
            "sentinel://:***@h1:26379/2;sentinel://h2:26380;sentinel://h3?master_name=m"
        );
        let e = EngineUrl::parse("sentinel://h1;redis://:pw@h2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be sentinel://"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
        assert!(EngineUrl::parse("sentinel://h1;sentinel://h2:notaport").is_err());
        // Other schemes are not lists: `;` stays part of the URL, as before.
        let u = EngineUrl::parse("redis://h1;redis://h2").map(|u| u.alternates().len());
        assert!(matches!(u, Ok(0) | Err(_)), "{u:?}");
        assert!(EngineUrl::parse("sqlite:///tmp/a;b.db").is_ok());
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
