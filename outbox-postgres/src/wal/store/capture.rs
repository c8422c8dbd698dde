//! The capture session: taking the capture lock when it is free, ending the slot's previous reader
//! (one of this program only), starting the stream, and the heartbeat that keeps the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Mutex;

use super::{PgWalStore, State};
use crate::error::Error;
use crate::lease::{heartbeat_period, session_limits};
use crate::relay_store::refuse_poolers;
use crate::wal::queries::WalQueries;
use crate::wal::slot;
use crate::wal::stream::Stream;

impl PgWalStore {
    /// Opens the capture session, takes the capture lock when it is free, and starts the stream.
    /// Returns whether this relay reads the slot.
    pub(super) async fn ensure_reading(&self, state: &mut State) -> Result<bool, Error> {
        let lease = self.config.lease;
        if state.holding && !state.fence_holds() {
            // Paused past the fence (or the heartbeat could not renew it): the lock may be
            // someone else's by now.
            state.disconnect("the lease expired before it was renewed", &self.reading);
        }
        if state.capture.is_none() {
            let mut conn: PgConnection = Connection::connect_with(&*self.connect).await?;
            refuse_poolers(&mut conn, &self.connect).await?;
            sqlx::Executor::execute(&mut conn, sqlx::raw_sql(&session_limits(lease))).await?;
            state.capture = Some(conn);
            state.holding = false;
        }
        if !state.holding {
            let started = Instant::now();
            let conn = state.capture.as_mut().ok_or(Error::SessionLost)?;
            let taken: bool = sqlx::query_scalar(&self.queries.try_lock)
                .fetch_one(&mut *conn)
                .await?;
            if !taken {
                return Ok(false);
            }
            slot::check_slot(conn, &self.config.tables, &self.config.slot).await?;
            state.holding = true;
            state.lease.start(started, lease);
            state.session += 1;
            tokio::spawn(heartbeat(
                Arc::downgrade(&self.state),
                state.session,
                lease,
                self.queries.clone(),
                self.reading.clone(),
            ));
            tracing::info!(slot = %self.config.slot, "capture lock taken; this relay reads the slot");
        }
        if state.stream.is_none() {
            self.take_slot(state).await?;
            let stream = Stream::open(
                &self.target,
                &self.config.slot,
                (lease / 10).min(Duration::from_secs(1)),
                lease / 2,
                self.arrived.clone(),
            )
            .await?;
            state.end_stream("a new stream starts");
            state.stream = Some(stream);
            state.confirmed = 0;
            self.reading.store(true, Ordering::Relaxed);
            outbox_core::metrics::wal_reading(true);
            tracing::info!(slot = %self.config.slot, epoch = state.epoch, "replication stream started");
        }
        Ok(true)
    }

    /// Ends the walsender still attached to the slot, if it is this program's (a paused or dead
    /// predecessor, or this relay's own broken stream), and waits until the slot is free.
    async fn take_slot(&self, state: &mut State) -> Result<(), Error> {
        let conn = state.capture.as_mut().ok_or(Error::SessionLost)?;
        let deadline = Instant::now() + self.config.lease / 2;
        loop {
            let reader = slot::reader(conn, &self.config.slot).await?;
            slot::refuse_foreign_reader(&self.config.slot, &reader)?;
            let Some((pid, _)) = reader else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(Error::Unsupported(format!(
                    "the previous reader of slot `{}` (pid {pid}) did not end",
                    self.config.slot
                )));
            }
            tracing::info!(pid, "ending the slot's previous reader");
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&mut *conn)
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Keeps the capture session `session` busy and the fence renewed, and reports the slot's progress
/// in the registry. Ends with the session.
async fn heartbeat(
    state: std::sync::Weak<Mutex<State>>,
    session: u64,
    lease: Duration,
    queries: Arc<WalQueries>,
    reading: Arc<AtomicBool>,
) {
    let every = heartbeat_period(lease);
    loop {
        tokio::time::sleep(every).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut state = state.lock().await;
        if !state.holding || state.capture.is_none() || state.session != session {
            return;
        }
        let oldest = state
            .queue
            .oldest_pending_commit()
            .and_then(chrono::DateTime::from_timestamp_micros);
        let started = Instant::now();
        let Some(conn) = state.capture.as_mut() else {
            return;
        };
        let beat = sqlx::query(&queries.heartbeat)
            .bind(oldest)
            .fetch_optional(&mut *conn)
            .await;
        match beat {
            Ok(row) => {
                state.renew(started, lease);
                let lag_bytes = row
                    .and_then(|row| row.try_get::<Option<i64>, _>("lag_bytes").ok().flatten())
                    .unwrap_or(0);
                let lag_seconds = oldest.map_or(0.0, |at| {
                    (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
                });
                outbox_core::metrics::wal_lag(lag_bytes.max(0) as u64, lag_seconds);
            }
            Err(error) => {
                state.disconnect(
                    &outbox_core::relay::error_chain(&Error::Database(error)),
                    &reading,
                );
                return;
            }
        }
    }
}
