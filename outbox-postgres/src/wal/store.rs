//! The relay store of WAL capture: one reader of the replication slot, fenced by a lease.
//!
//! A relay reads the slot only while it holds the slot's *capture lock*, an exclusive session
//! advisory lock on a connection of its own (the capture session). That session has the same limits
//! as a table-mode session (the server ends it when idle for a lease) and a heartbeat renews the
//! fence every quarter lease; the fence closes a fifth of a lease before the server could end a
//! silent session. So a relay that dies loses the lock at once, one that is paused loses it within
//! a lease, and one that resumes finds its fence closed: it sends and confirms nothing more.
//!
//! A relay that takes the lock over ends the walsender of the previous reader (only one of this
//! program, by its `application_name`) and starts replication from the slot's confirmed position:
//! duplicates come only from what was published after that position was last confirmed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{
    ClaimRequest, Fence, LaneStore, Lease, Settled, Settlement, StoredMessage, WakeUps, Window,
};
use pgwire_replication::ReplicationEvent;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::{Mutex, Notify};

use super::config::PgWalStoreConfig;
use super::envelope;
use super::queries::WalQueries;
use super::queue::Queue;
use super::slot;
use super::stream::{Next, ReplicationTarget, Stream};
use crate::error::Error;
use crate::relay_store::{refuse_poolers, session_limits};
use crate::rows::Columns;
use crate::session_options::SessionOptions;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Events taken from the stream in one claim at most, so that a claim returns promptly.
const EVENTS_PER_CLAIM: usize = 4096;

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
    fence: Option<Fence>,
    last_ok: Option<Instant>,
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
        self.last_ok = Some(started);
        if let Some(fence) = &self.fence {
            fence.extend_to(outbox_core::fence::deadline(started, lease));
        }
    }

    fn fence_holds(&self) -> bool {
        self.fence.as_ref().is_some_and(Fence::is_valid)
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
        if let Some(fence) = self.fence.take() {
            fence.expire();
        }
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
    /// in the way, `wal_level = logical`, a role that may replicate, and a slot of this outbox.
    ///
    /// # Errors
    /// [`Error::Unsupported`] saying what is wrong and how to fix it.
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
        checked
    }

    /// A handle that tells whether this relay reads the slot now (for readiness and tests).
    pub fn reading(&self) -> Reading {
        Reading(self.reading.clone())
    }

    /// Opens the capture session, takes the capture lock when it is free, and starts the stream.
    /// Returns whether this relay reads the slot.
    async fn ensure_reading(&self, state: &mut State) -> Result<bool, Error> {
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
            state.fence = Some(Fence::expired());
            state.renew(started, lease);
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

    /// Moves what the stream decoded into the queue, while the queue has room.
    async fn pull(&self, state: &mut State) -> Result<(), Error> {
        for _ in 0..EVENTS_PER_CLAIM {
            if state.queue.len() >= self.config.buffer_messages
                || state.queue.bytes() >= self.config.buffer_bytes
            {
                break;
            }
            let Some(stream) = state.stream.as_mut() else {
                break;
            };
            match stream.next() {
                Next::Event(event) => self.apply(state, event).await?,
                Next::Empty => break,
                Next::Ended(error) => {
                    let why =
                        error.map_or_else(|| "the server ended it".to_owned(), |e| e.to_string());
                    state.end_stream(&why);
                    break;
                }
            }
        }
        self.confirm(state);
        Ok(())
    }

    async fn apply(&self, state: &mut State, event: ReplicationEvent) -> Result<(), Error> {
        match event {
            ReplicationEvent::Begin {
                commit_time_micros, ..
            } => {
                state.commit_micros = commit_time_micros.saturating_add(PG_EPOCH_MICROS);
                state.queue.begin(state.commit_micros);
            }
            ReplicationEvent::Message {
                lsn,
                prefix,
                content,
                transactional,
            } => {
                if prefix != self.config.prefix {
                    outbox_core::metrics::wal_skipped("foreign_prefix");
                    tracing::debug!(%prefix, lsn = %lsn, "skipping a logical message of another prefix");
                    return Ok(());
                }
                let decoded = envelope::decode(&content)
                    .map_err(|e| e.to_string())
                    .and_then(|message| {
                        message
                            .validate()
                            .map(|()| message)
                            .map_err(|e| format!("unpublishable: {e}"))
                    });
                let commit = if transactional {
                    state.commit_micros
                } else {
                    chrono::Utc::now().timestamp_micros()
                };
                match decoded {
                    Ok(message) => {
                        let lane = outbox_core::lane::slot_for(message.key.as_deref(), &message.id)
                            % self.config.lanes;
                        let stored = StoredMessage {
                            seq: 0,
                            attempts: 0,
                            message,
                        };
                        state.queue.push(stored, lane, lsn.0, commit);
                    }
                    Err(reason) => self.park_malformed(state, lsn.0, &content, &reason).await?,
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => state.queue.commit(end_lsn.0),
            ReplicationEvent::KeepAlive { wal_end, .. } => state.queue.caught_up(wal_end.0),
            ReplicationEvent::XLogData { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// Keeps an unreadable message of this outbox's prefix in the dead letters, raw, with the
    /// reason; an id derived from its position keeps a replayed stream from parking it twice.
    async fn park_malformed(
        &self,
        state: &mut State,
        lsn: u64,
        content: &[u8],
        reason: &str,
    ) -> Result<(), Error> {
        outbox_core::metrics::wal_skipped("malformed");
        let lsn_text = pgwire_replication::Lsn(lsn).to_pg_string();
        tracing::warn!(lsn = %lsn_text, bytes = content.len(), %reason, "a logical message of this outbox cannot be read; keeping it in the dead letters");
        let id = uuid::Uuid::from_u64_pair(MALFORMED_ID_TAG, lsn);
        let started = Instant::now();
        let conn = state.capture.as_mut().ok_or(Error::SessionLost)?;
        sqlx::query(&self.queries.park_malformed)
            .bind(id)
            .bind(content)
            .bind(format!("malformed logical message at {lsn_text}: {reason}"))
            .execute(conn)
            .await?;
        state.renew(started, self.config.lease);
        Ok(())
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
        let fence = state.fence.clone().unwrap_or_else(Fence::expired);
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

/// The first half of the id given to an unreadable message (the second is its WAL position).
const MALFORMED_ID_TAG: u64 = 0x6f75_7462_6f78_0001;

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
        if let Some(fence) = state.fence.take() {
            fence.expire();
        }
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

/// Keeps the capture session `session` busy and the fence renewed, and reports the slot's progress
/// in the registry. Ends with the session.
async fn heartbeat(
    state: std::sync::Weak<Mutex<State>>,
    session: u64,
    lease: Duration,
    queries: Arc<WalQueries>,
    reading: Arc<AtomicBool>,
) {
    let every = lease / 4;
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
