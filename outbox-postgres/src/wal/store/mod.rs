//! The relay store of WAL capture: one reader of the replication slot, fenced by a lease.
//!
//! A relay reads the slot only while it holds the slot's *capture lock*, an exclusive session
//! advisory lock on a connection of its own (the capture session). That session is leased as a
//! table-mode session is (`crate::lease`: the server ends it when idle for a lease, a heartbeat
//! renews the fence every quarter lease, the fence closes a fifth of a lease before the server
//! could end a silent session). So a relay that dies loses the lock at once, one that is paused
//! loses it within a lease, and one that resumes finds its fence closed: it sends and confirms
//! nothing more.
//!
//! A relay that takes the lock over ends the walsender of the previous reader (only one of this
//! program, by its `application_name`) and starts replication from the slot's confirmed position:
//! duplicates come only from what was published after that position was last confirmed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{ClaimRequest, LaneStore, Lease, Settled, Settlement, WakeUps, Window};
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tokio::sync::{Mutex, Notify};

use super::config::PgWalStoreConfig;
use super::queries::WalQueries;
use super::queue::Queue;
use super::slot::{self, SlotName};
use super::stream::{ReplicationTarget, Stream};
use crate::error::Error;
use crate::lease::SessionLease;
use crate::relay_store::refuse_poolers;
use crate::rows::Columns;
use crate::session_options::SessionOptions;

mod capture;
mod events;

/// The relay store of WAL capture. See the module documentation.
#[derive(Debug)]
pub struct PgWalStore {
    connect: SessionOptions,
    target: ReplicationTarget,
    queries: Arc<WalQueries>,
    config: PgWalStoreConfig,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    reading: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    /// The capture session; `holding` says whether it holds the capture lock.
    capture: Option<PgConnection>,
    holding: bool,
    /// The capture session's fence: open while it holds the capture lock.
    lease: SessionLease,
    /// Counts capture sessions that took the lock; each has one heartbeat.
    session: u64,
    /// Counts streams; windows name the one they were claimed on.
    epoch: u64,
    stream: Option<Stream>,
    queue: Queue,
    /// Commit time of the transaction being read (microseconds since the Unix epoch).
    commit_micros: i64,
    /// The position last handed to the stream as confirmed.
    confirmed: u64,
}

impl State {
    fn renew(&mut self, started: Instant, lease: Duration) {
        self.lease.renew(started, lease);
    }

    fn fence_holds(&self) -> bool {
        self.lease.holds()
    }

    /// Ends the stream: its unsettled messages are read again by the next one.
    fn end_stream(&mut self, why: &str) {
        if let Some(stream) = self.stream.take() {
            tracing::warn!(
                why,
                unsettled = self.queue.len(),
                "replication stream ended; reading again from the slot's confirmed position"
            );
            drop(stream);
        }
        self.queue = Queue::new(self.queue.lanes());
        self.epoch += 1;
    }

    /// Gives the capture lock up (by closing its session) and ends the stream.
    fn disconnect(&mut self, why: &str, reading: &AtomicBool) {
        self.lease.end();
        self.end_stream(why);
        if self.capture.take().is_some() && self.holding {
            tracing::warn!(
                why,
                "capture session lost; the slot is left to the next relay"
            );
        }
        self.holding = false;
        reading.store(false, Ordering::Relaxed);
        outbox_core::metrics::wal_reading(false);
    }
}

impl PgWalStore {
    /// A store that reads the slot of `config` through a replication connection to `database_url`
    /// (the pool's database), and uses `pool`'s connection settings for its capture session.
    ///
    /// # Errors
    /// [`Error::Config`] when `database_url` cannot be read.
    pub fn new(pool: &PgPool, database_url: &str, config: PgWalStoreConfig) -> Result<Self, Error> {
        Ok(Self {
            connect: SessionOptions::of(pool),
            target: ReplicationTarget::from_url(database_url)?,
            queries: Arc::new(WalQueries::new(&config.tables, &config.slot)),
            state: Arc::new(Mutex::new(State {
                queue: Queue::new(config.lanes),
                ..State::default()
            })),
            config,
            arrived: Arc::new(Notify::new()),
            reading: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Checks, on a connection of its own, what capture needs before anything is read: no pooler
    /// in the way, `wal_level = logical`, a role that may replicate, and a slot of this outbox;
    /// then that a replication connection can be made (TLS, login, `pg_hba.conf`) without
    /// touching the slot.
    ///
    /// # Errors
    /// [`Error::Unsupported`] saying what is wrong and how to fix it;
    /// [`Error::ReplicationConnection`] when the server refuses the replication connection.
    pub async fn check(&self) -> Result<(), Error> {
        let mut conn: PgConnection = Connection::connect_with(&*self.connect).await?;
        let checked = async {
            refuse_poolers(&mut conn, &self.connect).await?;
            slot::check_slot(&mut conn, &self.config.tables, &self.config.slot).await?;
            let reader = slot::reader(&mut conn, &self.config.slot).await?;
            slot::refuse_foreign_reader(&self.config.slot, &reader)
        }
        .await;
        if let Err(error) = conn.close().await {
            tracing::debug!(%error, "closing the check's connection failed");
        }
        checked?;
        self.target.probe(self.config.lease / 2).await
    }

    /// The replication slot this store reads.
    pub fn slot(&self) -> &SlotName {
        &self.config.slot
    }

    /// A handle that tells whether this relay reads the slot now (for readiness and tests).
    pub fn reading(&self) -> Reading {
        Reading(self.reading.clone())
    }

    /// Hands the confirmable position to the stream, while the fence holds.
    fn confirm(&self, state: &mut State) {
        let confirmable = state.queue.confirmable();
        if confirmable > state.confirmed
            && state.fence_holds()
            && let Some(stream) = &state.stream
        {
            stream.confirm(confirmable);
            state.confirmed = confirmable;
        }
    }

    async fn claim_in(
        &self,
        state: &mut State,
        request: &ClaimRequest<'_>,
    ) -> Result<Vec<Window>, Error> {
        if !self.ensure_reading(state).await? {
            return Ok(Vec::new());
        }
        self.pull(state).await?;
        let fence = state.lease.fence();
        Ok(state
            .queue
            .claim(request, Instant::now())
            .into_iter()
            .map(|(lane, messages)| Window {
                lane,
                token: state.epoch,
                fence: fence.clone(),
                messages,
            })
            .collect())
    }

    async fn settle_in(
        &self,
        state: &mut State,
        settlement: &Settlement,
    ) -> Result<Settled, Error> {
        if settlement.token != state.epoch || state.stream.is_none() || !state.fence_holds() {
            // Read on a stream that is gone, or the slot may have a new reader: the next stream
            // reads these messages again from the confirmed position.
            return Ok(Settled::default());
        }
        if !settlement.dead_letters.is_empty() {
            self.store_dead_letters(state, settlement).await?;
        }
        let [published, retried, dead_lettered] = state.queue.settle(settlement, Instant::now());
        self.confirm(state);
        Ok(Settled {
            published,
            retried,
            dead_lettered,
        })
    }

    async fn store_dead_letters(
        &self,
        state: &mut State,
        settlement: &Settlement,
    ) -> Result<(), Error> {
        let dead = &settlement.dead_letters;
        let messages: Vec<outbox_core::Message> = dead
            .iter()
            .filter_map(|d| state.queue.message(d.seq).map(|s| s.message.clone()))
            .collect();
        if messages.len() != dead.len() {
            return Err(Error::Config(
                "a dead letter names a message that is not in the queue".into(),
            ));
        }
        let c = Columns::untraced(&messages);
        let started = Instant::now();
        let conn = state.capture.as_mut().ok_or(Error::SessionLost)?;
        c.bind(sqlx::query(&self.queries.dead_letter))
            .bind(dead.iter().map(|d| d.attempts as i32).collect::<Vec<_>>())
            .bind(dead.iter().map(|d| d.error.clone()).collect::<Vec<_>>())
            .execute(conn)
            .await?;
        state.renew(started, self.config.lease);
        Ok(())
    }

    fn failed(&self, state: &mut State, error: &Error) {
        if error.loses_session() {
            state.disconnect(&outbox_core::relay::error_chain(error), &self.reading);
        } else if matches!(error, Error::Replication { .. }) {
            state.end_stream(&outbox_core::relay::error_chain(error));
        }
    }
}

/// Whether the relay reads the slot now; see [`PgWalStore::reading`].
#[derive(Debug, Clone, Default)]
pub struct Reading(Arc<AtomicBool>);

impl Reading {
    /// `true` while this relay holds the capture lock and its stream runs.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl LaneStore for PgWalStore {
    type Error = Error;

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Window>, Error> {
        let mut state = self.state.lock().await;
        let result = self.claim_in(&mut state, &request).await;
        if let Err(error) = &result {
            self.failed(&mut state, error);
        }
        result
    }

    async fn settle(&self, settlement: &Settlement) -> Result<Settled, Error> {
        let mut state = self.state.lock().await;
        let result = self.settle_in(&mut state, settlement).await;
        if let Err(error) = &result {
            self.failed(&mut state, error);
        }
        result
    }
}

impl WakeUps for PgWalStore {
    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.arrived.notified()).await;
    }
}

impl Lease for PgWalStore {
    fn lease(&self) -> Option<Duration> {
        Some(self.config.lease)
    }

    /// Ends the stream after a last confirmation, advances the slot to what was confirmed (the
    /// stream's last status update may not have been sent), and gives the capture lock up.
    async fn close(&self) {
        let mut state = self.state.lock().await;
        let confirmed = state.confirmed;
        let holds = state.fence_holds();
        if let Some(stream) = state.stream.take() {
            stream.close(true).await;
        }
        if holds
            && confirmed > 0
            && let Some(conn) = state.capture.as_mut()
        {
            let lsn = pgwire_replication::Lsn(confirmed).to_pg_string();
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match sqlx::query(&self.queries.advance)
                    .bind(&lsn)
                    .execute(&mut *conn)
                    .await
                {
                    Ok(_) => break,
                    // The walsender may still be leaving the slot.
                    Err(error) if Instant::now() < deadline => {
                        tracing::debug!(%error, "advancing the slot; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not advance the slot on shutdown; the next reader repeats from the last confirmed position");
                        break;
                    }
                }
            }
        }
        state.lease.end();
        if let Some(conn) = state.capture.take()
            && let Err(error) = conn.close().await
        {
            tracing::warn!(%error, "closing the capture session failed; the server releases the slot when it notices");
        }
        state.holding = false;
        self.reading.store(false, Ordering::Relaxed);
        outbox_core::metrics::wal_reading(false);
        tracing::info!("capture stopped; the slot is free");
    }
}
