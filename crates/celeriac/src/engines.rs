//! The one place a URL becomes an engine: `memory://` always, and each engine crate behind
//! its cargo feature (`sqlite`, `redis`, `amqp`). Which engine serves a scheme comes from the one
//! list of schemes (`celeriac_core::url::KNOWN_SCHEMES`). Every unknown, malformed or
//! not-compiled-in URL fails here with one line naming the URL (credentials masked) and
//! what was expected.

use std::sync::Arc;

use celeriac_core::memory::{MemoryBackend, MemoryBroker};
use celeriac_core::url::{Engine, EngineUrl, UrlError};
use celeriac_core::{Broker, ResultBackend};

use crate::error::Error;

/// The broker URL used when none is configured: the embedded SQLite file
/// `celeriac.sqlite` in the working directory (with the `sqlite` feature), so separate
/// processes started in one project directory share it; `memory://` without it.
#[cfg(feature = "sqlite")]
pub const DEFAULT_BROKER_URL: &str = "sqlite://celeriac.sqlite";
/// The broker URL used when none is configured.
#[cfg(not(feature = "sqlite"))]
pub const DEFAULT_BROKER_URL: &str = "memory://";

fn not_compiled(url: &EngineUrl) -> Error {
    Error::Url(UrlError::NotCompiled {
        url: url.masked(),
        scheme: url.scheme().to_string(),
        feature: url.engine().feature().unwrap_or(url.scheme()).to_string(),
    })
}

fn wrong_role(url: &EngineUrl, role: &str) -> Error {
    Error::Url(UrlError::WrongRole {
        url: url.masked(),
        scheme: url.scheme().to_string(),
        role: role.into(),
    })
}

#[cfg(feature = "sqlite")]
impl From<celeriac_sqlite::Error> for Error {
    fn from(e: celeriac_sqlite::Error) -> Self {
        match e {
            celeriac_sqlite::Error::Url(e) => Error::Url(e),
            celeriac_sqlite::Error::Open(e) => Error::Engine(Box::new(e)),
            other => Error::Engine(Box::new(other)),
        }
    }
}

#[cfg(feature = "redis")]
impl From<celeriac_redis::Error> for Error {
    fn from(e: celeriac_redis::Error) -> Self {
        match e {
            celeriac_redis::Error::Url(e) => Error::Url(e),
            celeriac_redis::Error::Broker(e) => Error::Broker(e),
            celeriac_redis::Error::Backend(e) => Error::Backend(e),
            other => Error::Config(other.to_string()),
        }
    }
}

#[cfg(feature = "amqp")]
impl From<celeriac_amqp::Error> for Error {
    fn from(e: celeriac_amqp::Error) -> Self {
        match e {
            celeriac_amqp::Error::Url(e) => Error::Url(e),
            celeriac_amqp::Error::Broker(e) => Error::Broker(e),
            other => Error::Config(other.to_string()),
        }
    }
}

/// Connects the broker for `url`.
pub async fn connect_broker(url: &str) -> Result<Arc<dyn Broker>, Error> {
    let url = EngineUrl::parse(url)?;
    match url.engine() {
        Engine::Memory => Ok(Arc::new(MemoryBroker::from_url(&url)?)),
        #[cfg(feature = "sqlite")]
        Engine::Sqlite => Ok(Arc::new(
            celeriac_sqlite::SqliteBroker::connect(url.expose()).await?,
        )),
        #[cfg(feature = "redis")]
        Engine::Redis => Ok(Arc::new(celeriac_redis::RedisBroker::connect(&url).await?)),
        #[cfg(feature = "amqp")]
        Engine::Amqp => Ok(Arc::new(celeriac_amqp::AmqpBroker::connect(&url).await?)),
        Engine::Rpc | Engine::Disabled => Err(wrong_role(&url, "broker")),
        _ => Err(not_compiled(&url)),
    }
}

/// Connects the result backend for `url`; `disabled://` means none. `rpc://` sends
/// results as messages over the broker at `broker_url` (RabbitMQ), to the reply queue
/// `reply_to` (the app's oid).
pub async fn connect_backend(
    url: &str,
    broker_url: &str,
    reply_to: &str,
) -> Result<Option<Arc<dyn ResultBackend>>, Error> {
    #[cfg(not(feature = "amqp"))]
    let _ = (broker_url, reply_to);
    let url = EngineUrl::parse(url)?;
    match url.engine() {
        Engine::Memory => Ok(Some(Arc::new(MemoryBackend::from_url(&url)))),
        Engine::Disabled => Ok(None),
        #[cfg(feature = "sqlite")]
        Engine::Sqlite => Ok(Some(Arc::new(
            celeriac_sqlite::SqliteBackend::connect(url.expose()).await?,
        ))),
        #[cfg(feature = "redis")]
        Engine::Redis => Ok(Some(Arc::new(
            celeriac_redis::RedisBackend::connect(&url).await?,
        ))),
        Engine::Amqp => Err(wrong_role(&url, "result backend")),
        #[cfg(feature = "amqp")]
        Engine::Rpc => {
            let broker = EngineUrl::parse(broker_url)?;
            if broker.engine() != Engine::Amqp {
                return Err(Error::Config(format!(
                    "the rpc:// result backend sends results through RabbitMQ, but the broker is `{}`; use an amqp:// broker, or store results in redis:// or sqlite://",
                    broker.masked()
                )));
            }
            Ok(Some(Arc::new(
                celeriac_amqp::RpcBackend::connect(&broker, reply_to).await?,
            )))
        }
        _ => Err(not_compiled(&url)),
    }
}

/// The backend URL to use when only a broker URL is configured: the same engine where it
/// can store results (so results work out of the box), `rpc://` on RabbitMQ, none
/// otherwise.
pub fn default_backend_for(broker_url: &str) -> String {
    match EngineUrl::parse(broker_url).map(|u| u.engine()) {
        Ok(e) if e.stores_results() => broker_url.to_string(),
        Ok(Engine::Amqp) => "rpc://".to_string(),
        _ => "disabled://".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_get_one_clear_line() {
        let e = connect_broker("reddis://:pw@localhost")
            .await
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "unknown scheme `reddis` in `reddis://:***@localhost`; did you mean `redis`?"
        );
        let e = connect_broker("rpc://").await.err().unwrap().to_string();
        assert!(e.contains("cannot be used as a broker"), "{e}");
        let e = connect_broker("memory://x?priority_order=sideways")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("priority_order"), "{e}");
        assert!(connect_backend("disabled://", "memory://", "oid")
            .await
            .unwrap()
            .is_none());
        assert_eq!(default_backend_for("memory://a"), "memory://a");
        assert_eq!(default_backend_for("amqp://h"), "rpc://");
        assert_eq!(default_backend_for("unix:///r.sock"), "unix:///r.sock");
    }
}
