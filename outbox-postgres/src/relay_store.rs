//! The relay's side of the outbox on PostgreSQL: lanes, the publish horizon, claim and settle.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{Fence, RelayStore, Settlement, StoredMessage};
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::horizon::{Horizon, parse_writers};
use crate::queries::{MEMBER_BASE, Queries};
use crate::rows::{self, CorruptRow};
use crate::tables::Tables;

/// Settings of a [`PgRelayStore`].
#[derive(Debug, Clone)]
pub struct PgRelayStoreConfig {
    tables: Tables,
    lanes: u32,
    rebalance_interval: Duration,
    lease: Duration,
    retention: Option<Duration>,
    purge_batch: u32,
    purge_interval: Duration,
}

/// The longest retention accepted: a century.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

impl Default for PgRelayStoreConfig {
    fn default() -> Self {
        Self {
            tables: Tables::default(),
            lanes: 64,
            rebalance_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            retention: None,
            purge_batch: 1000,
            purge_interval: Duration::from_secs(5),
        }
    }
}

impl PgRelayStoreConfig {
    /// Where the outbox lives. Default [`Tables::default`].
    pub fn tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// Number of lanes: the unit of ordering and of ownership among relays. Default 64. A power of
    /// two from 1 to 1024; every relay of one outbox must use the same number: a relay next to one
    /// with another count claims nothing and reports [`Error::LaneCountMismatch`] until that one stops.
    ///
    /// # Errors
    /// [`Error::Config`] for any other value.
    pub fn lanes(mut self, lanes: u32) -> Result<Self, Error> {
        if !lanes.is_power_of_two() || lanes > outbox_core::lane::SLOTS {
            return Err(Error::Config(format!(
                "lanes must be a power of two from 1 to {}, got {lanes}",
                outbox_core::lane::SLOTS
            )));
        }
        self.lanes = lanes;
        Ok(self)
    }

    /// The configured number of lanes.
    pub fn get_lanes(&self) -> u32 {
        self.lanes
    }

    /// How often a relay recounts the relays and takes or gives back lanes. Default 1 s.
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.rebalance_interval = interval;
        self
    }

    /// How long a relay that stopped answering (a paused process, a dead host) keeps its lanes
    /// before PostgreSQL ends its session and another relay takes them over. Default 10 s; at least
    /// 1 s. The relay renews it every quarter of the lease, and stops sending once a fifth of it is
    /// left without renewal.
    ///
    /// # Errors
    /// [`Error::Config`] below 1 s.
    pub fn lease(mut self, lease: Duration) -> Result<Self, Error> {
        if lease < Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "lease must be at least 1s, got {lease:?}"
            )));
        }
        self.lease = lease;
        Ok(self)
    }

    /// How long published messages are kept. Default `None`: a message is deleted as soon as the
    /// broker acknowledged it.
    ///
    /// With `Some(retention)`, an acknowledged message stays in the outbox, for audit and replay,
    /// with `published_at` set; it is never claimed again and holds back neither the publish horizon
    /// nor its lane. The relay purges the messages published longer than `retention` ago itself,
    /// [`purge_batch`](Self::purge_batch) rows per statement, one statement at most every
    /// [`purge_interval`](Self::purge_interval) (or at every claim while a backlog lasts). Needs
    /// migration 2. Give every relay of one outbox the same retention: only relays with a retention
    /// purge, and a relay without one leaves the retained rows where they are. While a message is
    /// kept its id stays taken: enqueuing another message with the same id fails.
    ///
    /// # Errors
    /// [`Error::Config`] for a retention of zero (use `None` to delete on publish) or of more than
    /// 100 years.
    pub fn retention(mut self, retention: Option<Duration>) -> Result<Self, Error> {
        if let Some(kept) = retention {
            if kept.is_zero() || kept > MAX_RETENTION {
                return Err(Error::Config(format!(
                    "retention must be more than 0 and at most 100 years (or none, to delete published messages), got {kept:?}"
                )));
            }
        }
        self.retention = retention;
        Ok(self)
    }

    /// With a [`retention`](Self::retention): most rows one purge statement deletes. Default 1000.
    ///
    /// # Errors
    /// [`Error::Config`] for 0.
    pub fn purge_batch(mut self, rows: u32) -> Result<Self, Error> {
        if rows == 0 {
            return Err(Error::Config("purge batch must be at least 1".into()));
        }
        self.purge_batch = rows;
        Ok(self)
    }

    /// With a [`retention`](Self::retention): how long a relay waits between two purge statements
    /// when the last one found less than a full batch. Default 5 s; longer than a day counts as a
    /// day.
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval.min(Duration::from_secs(24 * 60 * 60));
        self
    }
}

/// The relay store on PostgreSQL.
///
/// A relay works on one dedicated connection (its *session*), outside the pool. On it, the relay holds
/// a shared advisory lock that makes it count as a running relay, and one exclusive advisory lock per
/// lane it owns. Claims and settlements run on the same session, so a relay can only change rows
/// while it holds their lanes: if the session dies, PostgreSQL releases its locks, another relay may
/// take the lanes over, and this relay's pending settlement is dropped (its messages are published
/// again by the new owner: a duplicate, never a loss). Lanes are rebalanced so that each of `n`
/// relays owns at most `ceil(lanes / n)`.
///
/// Wake-ups come from `LISTEN` on the outbox's channel, on a connection of the pool.
///
/// Published messages are deleted, unless a [retention](PgRelayStoreConfig::retention) is set:
/// then they are marked published, and purged by the relay once older than the retention.
#[derive(Debug)]
pub struct PgRelayStore {
    connect: PgConnectOptions,
    pool: PgPool,
    queries: Arc<Queries>,
    channel: String,
    lanes: u32,
    rebalance_interval: Duration,
    lease: Duration,
    retention: Option<Duration>,
    purge_batch: u32,
    purge_interval: Duration,
    session: Arc<Mutex<Session>>,
    owned_count: Arc<AtomicUsize>,
    fence: std::sync::Mutex<Fence>,
    listener: Mutex<Option<PgListener>>,
}

#[derive(Debug, Default)]
struct Session {
    conn: Option<PgConnection>,
    /// Valid while `conn` holds the lanes; expired when the session is lost.
    fence: Option<Fence>,
    /// Start of the last round trip that succeeded on `conn`.
    last_ok: Option<Instant>,
    epoch: u64,
    claimed_epoch: u64,
    owned: BTreeSet<i32>,
    horizon: Horizon,
    last_rebalance: Option<Instant>,
    /// With retention: no purge before this time.
    next_purge: Option<Instant>,
    /// `owned.len()`, readable without the session lock.
    owned_count: Arc<AtomicUsize>,
}

impl PgRelayStore {
    /// A relay store over the outbox in `pool`'s database.
    pub fn new(pool: PgPool, config: PgRelayStoreConfig) -> Self {
        let owned_count = Arc::new(AtomicUsize::new(0));
        Self {
            connect: (*pool.connect_options())
                .clone()
                .application_name("outbox-relay"),
            queries: Arc::new(Queries::new(&config.tables)),
            channel: config.tables.channel(),
            pool,
            lanes: config.lanes,
            rebalance_interval: config.rebalance_interval,
            lease: config.lease,
            retention: config.retention,
            purge_batch: config.purge_batch,
            purge_interval: config.purge_interval,
            session: Arc::new(Mutex::new(Session {
                owned_count: owned_count.clone(),
                ..Session::default()
            })),
            owned_count,
            fence: std::sync::Mutex::new(Fence::expired()),
            listener: Mutex::new(None),
        }
    }

    /// The lanes this relay owns right now.
    pub async fn owned_lanes(&self) -> Vec<i32> {
        self.session.lock().await.owned.iter().copied().collect()
    }

    /// A handle that reads how many lanes this relay owns, without waiting for the store (for
    /// readiness checks).
    pub fn lanes_owned(&self) -> LanesOwned {
        LanesOwned(self.owned_count.clone())
    }

    async fn connect(&self, session: &mut Session) -> Result<(), Error> {
        let started = Instant::now();
        let mut conn = PgConnection::connect_with(&self.connect).await?;
        let others = sqlx::query(&self.queries.members)
            .fetch_all(&mut conn)
            .await?;
        for row in others {
            let theirs: i32 = row.try_get("lanes")?;
            if theirs != self.lanes as i32 {
                return Err(Error::LaneCountMismatch {
                    ours: self.lanes,
                    theirs: theirs.max(0) as u32,
                });
            }
        }
        sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
            .bind(self.queries.namespace)
            .bind(MEMBER_BASE + self.lanes as i32)
            .execute(&mut conn)
            .await?;
        // The server ends the session, and so releases its lanes, once it has been idle for a lease.
        let set_timeout = format!("SET idle_session_timeout = {}", self.lease.as_millis());
        sqlx::Executor::execute(&mut conn, sqlx::raw_sql(&set_timeout)).await?;
        let fence = Fence::expired();
        *self
            .fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fence.clone();
        session.fence = Some(fence);
        session.renew(started, self.lease);
        session.conn = Some(conn);
        session.epoch += 1;
        tokio::spawn(heartbeat(
            Arc::downgrade(&self.session),
            session.epoch,
            self.lease,
        ));
        session.lanes_changed("lost", session.owned.len());
        session.owned.clear();
        session.horizon = Horizon::default();
        session.last_rebalance = None;
        tracing::info!(epoch = session.epoch, "relay session opened");
        Ok(())
    }

    async fn rebalance(&self, session: &mut Session) -> Result<(), Error> {
        let Some(conn) = session.conn.as_mut() else {
            return Ok(());
        };
        let relays: i64 = sqlx::query(&self.queries.members)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get::<i64, _>("relays"))
            .sum::<Result<i64, _>>()?;
        let relays = relays.max(1) as u32;
        let share = self.lanes.div_ceil(relays) as usize;
        if session.owned.len() > share {
            let extra: Vec<i32> = session
                .owned
                .iter()
                .rev()
                .take(session.owned.len() - share)
                .copied()
                .collect();
            sqlx::query(&self.queries.release_lanes)
                .bind(&extra)
                .execute(&mut *conn)
                .await?;
            for lane in &extra {
                session.owned.remove(lane);
            }
            session.lanes_changed("released", extra.len());
            tracing::info!(
                released = extra.len(),
                owned = session.owned.len(),
                relays,
                "gave lanes back"
            );
        } else if session.owned.len() < share {
            let owned: Vec<i32> = session.owned.iter().copied().collect();
            let taken: Vec<i32> = sqlx::query_scalar(&self.queries.acquire_lanes)
                .bind(self.lanes as i32)
                .bind(&owned)
                .bind((share - owned.len()) as i64)
                .fetch_all(&mut *conn)
                .await?;
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
        }
        session.last_rebalance = Some(Instant::now());
        Ok(())
    }

    /// Claims under the session lock; a failure drops the session (and with it the lanes).
    async fn claim_on_session(
        &self,
        limit: usize,
        in_flight: Option<&[i64]>,
    ) -> Result<Vec<StoredMessage>, Error> {
        let mut session = self.session.lock().await;
        let result = self.claim_in(&mut session, limit, in_flight).await;
        if let Err(error) = &result {
            session.disconnect(error);
        }
        result
    }

    /// Claims due messages; with `in_flight` (claiming ahead of an in-flight batch) none of those, on the current session and lanes as they are: no reconnect, no rebalance, no purge.
    async fn claim_in(
        &self,
        session: &mut Session,
        limit: usize,
        in_flight: Option<&[i64]>,
    ) -> Result<Vec<StoredMessage>, Error> {
        let started = Instant::now();
        let rebalance_due = session
            .last_rebalance
            .is_none_or(|at| at.elapsed() >= self.rebalance_interval);
        if in_flight.is_some() && rebalance_due {
            // Claiming ahead would keep a busy relay from ever rebalancing (or purging): let the
            // in-flight batch settle and the next plain claim do that first.
            return Ok(Vec::new());
        }
        if in_flight.is_none() {
            if session.conn.is_none() {
                self.connect(session).await?;
            }
            if rebalance_due || session.last_rebalance.is_none() {
                self.rebalance(session).await?;
            }
            self.purge_published(session).await;
        }
        if session.owned.is_empty() {
            return Ok(Vec::new());
        }
        let Some(conn) = session.conn.as_mut() else {
            return Ok(Vec::new());
        };
        let texts: Vec<String> =
            sqlx::Executor::fetch_all(&mut *conn, sqlx::raw_sql(&self.queries.horizon))
                .await?
                .iter()
                .map(|row| {
                    row.try_get::<Option<String>, _>(0)
                        .map(Option::unwrap_or_default)
                })
                .collect::<Result<_, _>>()?;
        let max_seq = texts
            .first()
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0);
        let writers = parse_writers(texts.get(1).map_or("", String::as_str));
        let safe = session.horizon.observe(max_seq, writers);
        let owned: Vec<i32> = session.owned.iter().copied().collect();
        let rows = sqlx::query(&self.queries.claim)
            .bind(safe)
            .bind(self.lanes as i32)
            .bind(&owned)
            .bind(limit as i64)
            .bind(in_flight.unwrap_or_default())
            .bind(in_flight.is_some())
            .fetch_all(&mut *conn)
            .await?;
        let mut batch = Vec::with_capacity(rows.len());
        let mut corrupt = Vec::new();
        for row in &rows {
            match rows::decode(row) {
                Ok(message) => batch.push(message),
                Err(bad) => corrupt.push(bad),
            }
        }
        if !corrupt.is_empty() {
            self.park_corrupt(conn, corrupt).await?;
        }
        session.claimed_epoch = session.epoch;
        session.renew(started, self.lease);
        Ok(batch)
    }

    /// With a retention, and once the purge interval has passed: deletes one batch of the messages
    /// published longer than the retention ago. Runs before the claim on the session, so one
    /// statement of at most `purge_batch` rows is all it delays a claim by. A failure is only logged
    /// (a broken session fails the claim that follows).
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

    async fn settle_in(
        &self,
        conn: &mut PgConnection,
        settlement: &Settlement,
    ) -> Result<u64, Error> {
        let statements = usize::from(!settlement.published.is_empty())
            + usize::from(!settlement.retries.is_empty())
            + usize::from(!settlement.dead_letters.is_empty());
        if statements <= 1 {
            return self.write_settlement(conn, settlement).await;
        }
        let mut tx = conn.begin().await?;
        let changed = self.write_settlement(&mut tx, settlement).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn write_settlement(
        &self,
        conn: &mut PgConnection,
        settlement: &Settlement,
    ) -> Result<u64, Error> {
        let mut changed = 0;
        if !settlement.published.is_empty() {
            let published = if self.retention.is_some() {
                &self.queries.mark_published
            } else {
                &self.queries.delete
            };
            changed += sqlx::query(published)
                .bind(&settlement.published)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }
        if !settlement.retries.is_empty() {
            let r = &settlement.retries;
            changed += sqlx::query(&self.queries.retry)
                .bind(r.iter().map(|x| x.seq).collect::<Vec<_>>())
                .bind(r.iter().map(|x| x.attempts as i32).collect::<Vec<_>>())
                .bind(r.iter().map(|x| x.not_before).collect::<Vec<_>>())
                .bind(r.iter().map(|x| x.error.clone()).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }
        if !settlement.dead_letters.is_empty() {
            let d = &settlement.dead_letters;
            changed += sqlx::query(&self.queries.dead_letter)
                .bind(d.iter().map(|x| x.seq).collect::<Vec<_>>())
                .bind(d.iter().map(|x| x.attempts as i32).collect::<Vec<_>>())
                .bind(d.iter().map(|x| x.error.clone()).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }
        Ok(changed)
    }
}

/// How many lanes a relay owns right now; see [`PgRelayStore::lanes_owned`].
#[derive(Debug, Clone, Default)]
pub struct LanesOwned(Arc<AtomicUsize>);

impl LanesOwned {
    /// The number of lanes owned.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Session {
    /// Records a successful round trip that started at `started`: the lanes are ours until the
    /// server could end the idle session, less a safety margin.
    fn renew(&mut self, started: Instant, lease: Duration) {
        self.last_ok = Some(started);
        if let Some(fence) = &self.fence {
            fence.extend_to(started + lease - lease / 5);
        }
    }

    /// Drops the session; PostgreSQL releases its locks when the connection closes.
    fn disconnect(&mut self, error: &Error) {
        if let Some(fence) = self.fence.take() {
            fence.expire();
        }
        if self.conn.take().is_some() {
            tracing::warn!(error = %outbox_core::relay::error_chain(error), released = self.owned.len(), "relay session lost; its lanes are released");
        }
        let lost = self.owned.len();
        self.owned.clear();
        self.lanes_changed("lost", lost);
    }

    /// Publishes the number of owned lanes after `lanes` of them changed hands.
    fn lanes_changed(&self, change: &'static str, lanes: usize) {
        self.owned_count.store(self.owned.len(), Ordering::Relaxed);
        outbox_core::metrics::lanes_changed(self.owned.len(), change, lanes);
    }
}

impl RelayStore for PgRelayStore {
    type Error = Error;

    async fn claim(&self, limit: usize) -> Result<Vec<StoredMessage>, Error> {
        self.claim_on_session(limit, None).await
    }

    async fn claim_after(
        &self,
        limit: usize,
        in_flight: &[i64],
    ) -> Result<Vec<StoredMessage>, Error> {
        self.claim_on_session(limit, Some(in_flight)).await
    }

    async fn settle(&self, settlement: &Settlement) -> Result<u64, Error> {
        let mut session = self.session.lock().await;
        if session.epoch != session.claimed_epoch {
            return Ok(0);
        }
        let Some(conn) = session.conn.as_mut() else {
            return Ok(0);
        };
        let started = Instant::now();
        let result = self.settle_in(conn, settlement).await;
        match &result {
            Ok(_) => session.renew(started, self.lease),
            Err(error) => session.disconnect(error),
        }
        result
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut listener = self.listener.lock().await;
        if listener.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut fresh) => match fresh.listen(&self.channel).await {
                    Ok(()) => *listener = Some(fresh),
                    Err(error) => tracing::warn!(%error, "LISTEN failed; polling"),
                },
                Err(error) => {
                    tracing::warn!(%error, "could not open the wake-up connection; polling")
                }
            }
        }
        let Some(active) = listener.as_mut() else {
            tokio::time::sleep_until(deadline).await;
            return;
        };
        match tokio::time::timeout_at(deadline, active.try_recv()).await {
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) => tokio::time::sleep_until(deadline).await,
            Ok(Err(error)) => {
                tracing::warn!(%error, "wake-up connection failed; polling");
                *listener = None;
                tokio::time::sleep_until(deadline).await;
            }
        }
    }

    fn fence(&self) -> Fence {
        self.fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn close(&self) {
        // The wake-up connection goes back to the pool, so that the pool can close.
        self.listener.lock().await.take();
        let mut session = self.session.lock().await;
        let released = session.owned.len();
        session.owned.clear();
        session.lanes_changed("released", released);
        if let Some(fence) = session.fence.take() {
            fence.expire();
        }
        if let Some(conn) = session.conn.take() {
            if let Err(error) = conn.close().await {
                tracing::warn!(%error, "closing the relay session failed; the server releases its lanes when it notices");
            }
            tracing::info!("relay session closed; lanes released");
        }
    }
}

/// Keeps the session of `epoch` busy enough that the server does not end it while the relay is
/// healthy (waiting for broker acknowledgements, or idle). Ends with the session.
async fn heartbeat(session: std::sync::Weak<Mutex<Session>>, epoch: u64, lease: Duration) {
    let every = lease / 4;
    loop {
        tokio::time::sleep(every).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        let mut session = session.lock().await;
        if session.epoch != epoch || session.conn.is_none() {
            return;
        }
        if session.last_ok.is_some_and(|at| at.elapsed() < every) {
            continue;
        }
        let started = Instant::now();
        let Some(conn) = session.conn.as_mut() else {
            return;
        };
        match conn.ping().await {
            Ok(_) => session.renew(started, lease),
            Err(error) => {
                session.disconnect(&Error::Database(error));
                return;
            }
        }
    }
}
