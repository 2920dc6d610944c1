//! Settling deliveries: the [`Acker`] every `Delivery` calls. Ack and reject delete the
//! row; reject with requeue moves it to the back (a new id); restore (and a dropped
//! delivery) releases the claim, keeping its place, marked redelivered.

use async_trait::async_trait;
use rusqlite::{params, Connection};

use celeriac_core::broker::Acker;
use celeriac_core::error::BrokerError;

use super::{err, Inner};

impl Inner {
    pub(super) async fn settle(&self, tag: &str, how: Settle) -> Result<(), BrokerError> {
        let tag = tag.to_string();
        self.db
            .call(true, move |c| settle(c, &tag, how))
            .await
            .map_err(err(&self.db, "settle"))
    }
}

#[derive(Clone, Copy)]
pub(super) enum Settle {
    Delete,
    Back,
    Front,
}

fn settle(c: &Connection, tag: &str, how: Settle) -> rusqlite::Result<()> {
    match how {
        Settle::Delete => c.execute("DELETE FROM messages WHERE tag = ?1", params![tag]),
        Settle::Back => c.execute(
            "UPDATE messages SET id = (SELECT MAX(id) + 1 FROM messages), claimed_by = NULL, claimed_at = NULL,
             redelivered = 1 WHERE tag = ?1",
            params![tag],
        ),
        Settle::Front => c.execute(
            "UPDATE messages SET claimed_by = NULL, claimed_at = NULL, redelivered = 1 WHERE tag = ?1",
            params![tag],
        ),
    }
    .map(drop)
}

#[async_trait]
impl Acker for Inner {
    async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        self.settle(tag, Settle::Delete).await
    }

    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        self.settle(
            tag,
            if requeue {
                Settle::Back
            } else {
                Settle::Delete
            },
        )
        .await
    }

    async fn restore(&self, tag: &str) -> Result<(), BrokerError> {
        self.settle(tag, Settle::Front).await
    }

    fn abandon(&self, tag: &str) {
        let tag = tag.to_string();
        self.db.spawn_write(move |c| settle(c, &tag, Settle::Front));
    }
}
