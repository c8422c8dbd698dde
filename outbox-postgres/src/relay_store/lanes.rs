//! Taking and giving up lanes: every relay of one outbox owns at most `ceil(lanes / relays)`.
//!
//! A lane to be given up is *drained*: claims take nothing more from it, and its lock is released
//! only once the engine reports it idle (its last window settled). So a lane never changes owner
//! while a window of it is in flight, and rebalancing never pauses the other lanes.

use std::collections::BTreeSet;
use std::time::Instant;

use outbox_core::Lane;
use sqlx::Row;

use super::PgRelayStore;
use super::session::Session;
use crate::error::Error;

impl PgRelayStore {
    /// Rebalances when due, and releases drained lanes that are no longer busy.
    pub(super) async fn rebalance(
        &self,
        session: &mut Session,
        busy: &BTreeSet<Lane>,
    ) -> Result<(), Error> {
        let due = session
            .last_rebalance
            .is_none_or(|at| at.elapsed() >= self.rebalance_interval);
        if due {
            let started = Instant::now();
            let rows = sqlx::query(&self.queries.members)
                .fetch_all(session.conn()?)
                .await?;
            session.renew(started, self.lease);
            let relays: i64 = rows
                .iter()
                .map(|row| row.try_get::<i64, _>("relays"))
                .sum::<Result<i64, _>>()?;
            let share = self.lanes.div_ceil(relays.max(1) as u32) as usize;
            let keeping = session.owned.len() - session.draining.len();
            if keeping > share {
                let extra: Vec<i32> = session
                    .owned
                    .iter()
                    .rev()
                    .filter(|lane| !session.draining.contains(lane))
                    .take(keeping - share)
                    .copied()
                    .collect();
                tracing::info!(
                    draining = extra.len(),
                    owned = session.owned.len(),
                    relays,
                    "giving lanes back once their windows are settled"
                );
                session.draining.extend(extra);
            } else if keeping < share && session.draining.is_empty() {
                self.acquire(session, share - keeping, relays).await?;
            }
            session.last_rebalance = Some(Instant::now());
        }
        self.release_drained(session, busy).await
    }

    async fn acquire(
        &self,
        session: &mut Session,
        wanted: usize,
        relays: i64,
    ) -> Result<(), Error> {
        let owned: Vec<i32> = session.owned.iter().copied().collect();
        let started = Instant::now();
        let taken: Vec<i32> = sqlx::query_scalar(&self.queries.acquire_lanes)
            .bind(self.lanes as i32)
            .bind(&owned)
            .bind(wanted as i64)
            .fetch_all(session.conn()?)
            .await?;
        session.renew(started, self.lease);
        if !taken.is_empty() {
            session.owned.extend(&taken);
            session.lanes_changed("acquired", taken.len());
            tracing::info!(
                taken = taken.len(),
                owned = session.owned.len(),
                relays,
                "took lanes"
            );
        }
        Ok(())
    }

    /// Releases the drained lanes that have no window in flight.
    async fn release_drained(
        &self,
        session: &mut Session,
        busy: &BTreeSet<Lane>,
    ) -> Result<(), Error> {
        let idle: Vec<i32> = session
            .draining
            .iter()
            .filter(|lane| u32::try_from(**lane).is_ok_and(|lane| !busy.contains(&lane)))
            .copied()
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        sqlx::query(&self.queries.release_lanes)
            .bind(&idle)
            .execute(session.conn()?)
            .await?;
        session.renew(started, self.lease);
        for lane in &idle {
            session.owned.remove(lane);
            session.draining.remove(lane);
        }
        session.lanes_changed("released", idle.len());
        tracing::info!(
            released = idle.len(),
            owned = session.owned.len(),
            "gave lanes back"
        );
        Ok(())
    }
}
