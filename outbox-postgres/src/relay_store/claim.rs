//! Claiming lane windows: the session opened if needed, lanes rebalanced, the horizon read, then
//! one statement that takes the oldest due messages of the idle lanes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use outbox_core::{ClaimRequest, Lane, Window};
use sqlx::{PgConnection, Row};

use super::session::{Session, heartbeat};
use super::{PgRelayStore, preflight};
use crate::error::Error;
use crate::horizon::parse_writers;
use crate::lease::session_limits;
use crate::queries::MEMBER_BASE;
use crate::rows::{self, CorruptRow};

impl PgRelayStore {
    /// Opens the session: the checks of [`preflight`](super::preflight) first, then the membership
    /// lock, then the check that every relay of the outbox uses this lane count (after the lock, so
    /// that two relays starting together cannot both pass it), then the session's limits.
    pub(super) async fn connect(&self, session: &mut Session) -> Result<(), Error> {
        let started = Instant::now();
        let mut conn: PgConnection = sqlx::Connection::connect_with(&*self.connect).await?;
        preflight::run(&mut conn, &self.connect, &self.queries).await?;
        sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
            .bind(self.queries.namespace)
            .bind(MEMBER_BASE + self.lanes as i32)
            .execute(&mut conn)
            .await?;
        let members: Vec<sqlx::postgres::PgRow> = sqlx::query(&self.queries.members)
            .fetch_all(&mut conn)
            .await?;
        for row in members {
            let theirs: i32 = row.try_get("lanes")?;
            if theirs != self.lanes as i32 {
                // Closing the connection releases the membership lock again.
                drop(conn);
                return Err(Error::LaneCountMismatch {
                    ours: self.lanes,
                    theirs: theirs.max(0) as u32,
                });
            }
        }
        sqlx::Executor::execute(&mut conn, sqlx::raw_sql(&session_limits(self.lease))).await?;
        session.open(conn, started, self.lease);
        tokio::spawn(heartbeat(
            Arc::downgrade(&self.session),
            session.epoch,
            self.lease,
        ));
        tracing::info!(epoch = session.epoch, "relay session opened");
        Ok(())
    }

    pub(super) async fn claim_in(
        &self,
        session: &mut Session,
        request: &ClaimRequest<'_>,
    ) -> Result<Vec<Window>, Error> {
        if session.conn.is_none() {
            self.connect(session).await?;
        }
        self.rebalance(session, request.busy).await?;
        self.purge_published(session).await;
        let idle: Vec<i32> = session
            .owned
            .iter()
            .filter(|lane| {
                !session.draining.contains(lane)
                    && u32::try_from(**lane).is_ok_and(|lane| !request.busy.contains(&lane))
            })
            .copied()
            .collect();
        if idle.is_empty() {
            return Ok(Vec::new());
        }
        let safe = self.horizon(session).await?;
        let most_lanes = session.owned.len().div_ceil(request.phases.max(1));
        let started = Instant::now();
        let rows = sqlx::query(&self.queries.claim)
            .bind(safe)
            .bind(self.lanes as i32)
            .bind(&idle)
            // Read twice what may be taken, so that the lanes taken fill their windows although the
            // lanes left out for this phase have rows in between.
            .bind(request.max_messages as i64)
            .bind(request.window as i64)
            .bind(most_lanes as i64)
            .bind(request.max_messages as i64)
            .bind(i64::try_from(request.max_bytes).unwrap_or(i64::MAX))
            .fetch_all(session.conn()?)
            .await?;
        session.renew(started, self.lease);
        let mut windows: Vec<Window> = Vec::new();
        let mut index: BTreeMap<Lane, usize> = BTreeMap::new();
        let mut corrupt = Vec::new();
        let fence = session.lease.fence();
        for row in &rows {
            let message = match rows::decode(row) {
                Ok(message) => message,
                Err(bad) => {
                    corrupt.push(bad);
                    continue;
                }
            };
            let lane = row.try_get::<i32, _>("lane")?.max(0) as Lane;
            let at = *index.entry(lane).or_insert_with(|| {
                windows.push(Window {
                    lane,
                    token: session.epoch,
                    fence: fence.clone(),
                    messages: Vec::new(),
                });
                windows.len() - 1
            });
            windows[at].messages.push(message);
        }
        if !corrupt.is_empty() {
            let started = Instant::now();
            self.park_corrupt(session.conn()?, corrupt).await?;
            session.renew(started, self.lease);
        }
        Ok(windows)
    }

    /// Reads the publish horizon (see `horizon.rs`): the highest `seq` below which no message can
    /// still appear.
    async fn horizon(&self, session: &mut Session) -> Result<i64, Error> {
        let started = Instant::now();
        let texts: Vec<String> =
            sqlx::Executor::fetch_all(&mut *session.conn()?, sqlx::raw_sql(&self.queries.horizon))
                .await?
                .iter()
                .map(|row| {
                    row.try_get::<Option<String>, _>(0)
                        .map(Option::unwrap_or_default)
                })
                .collect::<Result<_, _>>()?;
        session.renew(started, self.lease);
        let max_seq = texts
            .first()
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0);
        let writers = parse_writers(texts.get(1).map_or("", String::as_str));
        let now = Instant::now();
        let safe = session.horizon.observe(max_seq, writers, now);
        outbox_core::metrics::horizon_lag(session.horizon.lag(now));
        Ok(safe)
    }

    /// With a retention, and once the purge interval has passed: deletes one batch of the messages
    /// published longer than the retention ago. One statement of at most `purge_batch` rows is all
    /// it delays a claim by. A failure is only logged (a broken session fails the claim that
    /// follows).
    async fn purge_published(&self, session: &mut Session) {
        let Some(retention) = self.retention else {
            return;
        };
        if session.next_purge.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(conn) = session.conn.as_mut() else {
            return;
        };
        let started = Instant::now();
        let result = sqlx::query(&self.queries.purge_published)
            .bind(retention.as_secs_f64())
            .bind(i64::from(self.purge_batch))
            .execute(&mut *conn)
            .await;
        let backlog = match result {
            Ok(done) => {
                session.renew(started, self.lease);
                let purged = done.rows_affected();
                if purged > 0 {
                    tracing::debug!(purged, "purged published messages past their retention");
                }
                purged >= u64::from(self.purge_batch)
            }
            Err(error) => {
                tracing::warn!(%error, "purging published messages failed; trying again later");
                false
            }
        };
        // A full batch means more are due: the next claim purges again.
        session.next_purge = Some(if backlog {
            started
        } else {
            started + self.purge_interval
        });
    }

    async fn park_corrupt(
        &self,
        conn: &mut PgConnection,
        corrupt: Vec<CorruptRow>,
    ) -> Result<(), Error> {
        for bad in &corrupt {
            tracing::error!(seq = bad.seq, reason = %bad.reason, "corrupt outbox row; moving it to the dead letters");
        }
        let seqs: Vec<i64> = corrupt.iter().map(|c| c.seq).collect();
        let attempts: Vec<i32> = vec![0; corrupt.len()];
        let errors: Vec<String> = corrupt
            .into_iter()
            .map(|c| format!("corrupt row: {}", c.reason))
            .collect();
        sqlx::query(&self.queries.dead_letter)
            .bind(&seqs)
            .bind(&attempts)
            .bind(&errors)
            .execute(conn)
            .await?;
        Ok(())
    }
}
