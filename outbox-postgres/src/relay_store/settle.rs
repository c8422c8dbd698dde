//! Writing back the outcome of windows: one statement for published, retried and dead-lettered
//! messages, so that it is all written or nothing is, without a transaction block.

use std::time::Instant;

use outbox_core::{Settled, Settlement};
use sqlx::Row;

use super::PgRelayStore;
use super::session::Session;
use crate::error::Error;

impl PgRelayStore {
    pub(super) async fn settle_in(
        &self,
        session: &mut Session,
        settlement: &Settlement,
    ) -> Result<Settled, Error> {
        if session.epoch != settlement.token || session.conn.is_none() {
            // Claimed on a session that is gone: its lanes may have a new owner already.
            return Ok(Settled::default());
        }
        if settlement.is_empty() {
            return Ok(Settled::default());
        }
        let query = if self.retention.is_some() {
            &self.queries.settle_retaining
        } else {
            &self.queries.settle
        };
        let retries = &settlement.retries;
        let dead = &settlement.dead_letters;
        let started = Instant::now();
        let row = sqlx::query(query)
            .bind(&settlement.published)
            .bind(retries.iter().map(|r| r.seq).collect::<Vec<_>>())
            .bind(
                retries
                    .iter()
                    .map(|r| r.attempts as i32)
                    .collect::<Vec<_>>(),
            )
            .bind(
                retries
                    .iter()
                    .map(|r| r.delay.as_secs_f64())
                    .collect::<Vec<_>>(),
            )
            .bind(retries.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
            .bind(dead.iter().map(|d| d.seq).collect::<Vec<_>>())
            .bind(dead.iter().map(|d| d.attempts as i32).collect::<Vec<_>>())
            .bind(dead.iter().map(|d| d.error.clone()).collect::<Vec<_>>())
            .fetch_one(session.conn()?)
            .await?;
        session.renew(started, self.lease);
        Ok(Settled {
            published: row.try_get("published")?,
            retried: row.try_get("retried")?,
            dead_lettered: row.try_get("dead_lettered")?,
        })
    }
}
