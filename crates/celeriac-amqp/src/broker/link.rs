//! The connection and the channels every part shares: one publishing channel (in confirm
//! mode when `confirm_publish`) and one for declarations and queries, whose failures
//! (`NOT_FOUND` on a passive declare, `PRECONDITION_FAILED` on an inequivalent one) close
//! only that channel. A closed channel is opened again on next use, a lost connection is
//! made again (callers retry with back-off: publish retry, the consumer loop).

use std::sync::Arc;

use lapin::options::ConfirmSelectOptions;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};
use tracing::{debug, info};

use celeriac_core::error::BrokerError;

use super::{lock, Inner};
use crate::error;

/// A live connection and its shared channels.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) conn: Arc<Connection>,
    /// For `basic.publish`.
    pub(crate) publish: Channel,
    /// For declarations, binds, passive declares and purges.
    pub(crate) admin: Channel,
}

impl Link {
    fn healthy(&self) -> bool {
        self.conn.status().connected()
            && self.publish.status().connected()
            && self.admin.status().connected()
    }
}

impl Inner {
    /// The current link, made (again) if there is none or it broke.
    pub(crate) async fn link(&self) -> Result<Link, BrokerError> {
        let mut slot = self.link.lock().await;
        if let Some(l) = slot.as_ref() {
            if l.healthy() {
                return Ok(l.clone());
            }
            if l.conn.status().connected() {
                // Only a channel closed (a refused declare or publish): open new ones.
                let publish = if l.publish.status().connected() {
                    l.publish.clone()
                } else {
                    self.publish_channel(&l.conn).await?
                };
                let admin = if l.admin.status().connected() {
                    l.admin.clone()
                } else {
                    self.channel(&l.conn).await?
                };
                let l = Link {
                    conn: l.conn.clone(),
                    publish,
                    admin,
                };
                *slot = Some(l.clone());
                return Ok(l);
            }
        }
        let was_connected = slot.take().is_some();
        let conn = self.connect().await?;
        let publish = self.publish_channel(&conn).await?;
        let admin = self.channel(&conn).await?;
        // Declarations are made again on the new connection (the broker may have
        // restarted without its non-durable entities).
        lock(&self.declared).clear();
        lock(&self.exchanges).clear();
        if was_connected {
            info!("connection to {} made again", self.cfg.masked);
        }
        let l = Link {
            conn: Arc::new(conn),
            publish,
            admin,
        };
        *slot = Some(l.clone());
        Ok(l)
    }

    /// Forgets the link if it is still `broken` (another task may have replaced it).
    pub(crate) async fn drop_link(&self) {
        let mut slot = self.link.lock().await;
        if slot.as_ref().is_some_and(|l| !l.healthy()) {
            *slot = None;
        }
    }

    async fn connect(&self) -> Result<Connection, BrokerError> {
        let name = self.cfg.connection_name.clone().unwrap_or_else(|| {
            format!(
                "celeriac {} pid {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            )
        });
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        let connecting = async {
            match &self.cfg.tls {
                None => Connection::connect_uri(self.cfg.uri(), props).await,
                Some(tls) => {
                    let config = lapin::tcp::OwnedTLSConfig {
                        identity: tls.client.as_ref().map(|(cert, key)| {
                            lapin::tcp::OwnedIdentity::PKCS8 {
                                pem: cert.clone(),
                                key: key.clone(),
                            }
                        }),
                        cert_chain: tls.ca.clone(),
                    };
                    let runtime = lapin::runtime::default_runtime()?;
                    Connection::connect_uri_with_config(self.cfg.uri(), props, config, runtime)
                        .await
                }
            }
        };
        let conn = tokio::time::timeout(self.cfg.connect_timeout, connecting)
            .await
            .map_err(|_| BrokerError::Connection {
                url: self.cfg.masked.clone(),
                reason: format!(
                    "no answer within {:?} (connect_timeout)",
                    self.cfg.connect_timeout
                ),
            })?
            .map_err(|e| error::broker(&self.cfg.masked, "connect", &e))
            .map_err(|e| match e {
                // A refused login is reported as such, not as "operation failed".
                BrokerError::Operation { reason, .. } => BrokerError::Connection {
                    url: self.cfg.masked.clone(),
                    reason,
                },
                other => other,
            })?;
        debug!("connected to {}", self.cfg.masked);
        Ok(conn)
    }

    /// A new channel on `conn`.
    pub(crate) async fn channel(&self, conn: &Connection) -> Result<Channel, BrokerError> {
        conn.create_channel()
            .await
            .map_err(|e| error::broker(&self.cfg.masked, "channel.open", &e))
    }

    async fn publish_channel(&self, conn: &Connection) -> Result<Channel, BrokerError> {
        let ch = self.channel(conn).await?;
        if self.cfg.confirm_publish {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| error::broker(&self.cfg.masked, "confirm.select", &e))?;
        }
        Ok(ch)
    }
}
