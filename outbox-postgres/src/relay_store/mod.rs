//! The relay's side of the outbox on PostgreSQL: lanes, the publish horizon, claim and settle.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `config.rs` | [`PgRelayStoreConfig`] |
//! | `session.rs` | the session that holds the lanes: open, renew the fence, heartbeat, drop, close |
//! | `lanes.rs` | taking lanes, draining and releasing the ones given up |
//! | `preflight.rs` | refusing a pooler that breaks the session, and a schema that breaks the horizon |
//! | `claim.rs` | the horizon and the claim of lane windows; purging retained rows; corrupt rows |
//! | `settle.rs` | writing back the outcome of windows in one statement |
//! | `wake.rs` | wake-ups through `LISTEN` |

mod claim;
mod config;
mod lanes;
mod preflight;
mod session;
mod settle;
mod wake;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox_core::{ClaimRequest, LaneStore, Lease, Settled, Settlement, WakeUps, Window};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Mutex;

pub use config::PgRelayStoreConfig;
pub(crate) use config::{check_lanes, check_lease};
pub(crate) use preflight::refuse_poolers;

use crate::error::Error;
use crate::queries::Queries;
use crate::session_options::SessionOptions;
use session::Session;

/// The relay store on PostgreSQL.
///
/// A relay works on one dedicated connection (its *session*), outside the pool. On it, the relay holds
/// a shared advisory lock that makes it count as a running relay, and one exclusive advisory lock per
/// lane it owns. Claims and settlements run on the same session, so a relay can only change rows
/// while it holds their lanes: if the session dies, PostgreSQL releases its locks, another relay may
/// take the lanes over, and this relay's pending settlements are dropped (their messages are
/// published again by the new owner: a duplicate, never a loss). Lanes are rebalanced so that each of
/// `n` relays owns at most `ceil(lanes / n)`; a lane given up is drained first (see `lanes.rs`).
///
/// Wake-ups come from `LISTEN` on the outbox's channel, on a connection of the pool.
///
/// Published messages are deleted, unless a [retention](PgRelayStoreConfig::retention) is set:
/// then they are marked published, and purged by the relay once older than the retention.
#[derive(Debug)]
pub struct PgRelayStore {
    connect: SessionOptions,
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
    listener: Mutex<Option<PgListener>>,
}

impl PgRelayStore {
    /// A relay store over the outbox in `pool`'s database.
    pub fn new(pool: PgPool, config: PgRelayStoreConfig) -> Self {
        let owned_count = Arc::new(AtomicUsize::new(0));
        Self {
            connect: SessionOptions::of(&pool),
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
            listener: Mutex::new(None),
        }
    }

    /// Checks, on a connection of its own, what every session of the relay checks before it takes
    /// anything: that the database is reached without a pooler in transaction or statement mode,
    /// and that the schema numbers rows under the writer lock, one number at a time. Call it at
    /// start-up to fail with a clear error instead of retrying claims that cannot succeed.
    ///
    /// # Errors
    /// [`Error::Unsupported`] saying what is wrong and how to fix it, [`Error::Database`] when the
    /// database cannot be reached.
    pub async fn check(&self) -> Result<(), Error> {
        let mut conn: PgConnection = sqlx::Connection::connect_with(&*self.connect).await?;
        let checked = preflight::run(&mut conn, &self.connect, &self.queries).await;
        if let Err(error) = sqlx::Connection::close(conn).await {
            tracing::debug!(%error, "closing the check's connection failed");
        }
        checked
    }

    /// The lanes this relay owns right now.
    pub async fn owned_lanes(&self) -> Vec<i32> {
        self.session.lock().await.owned.iter().copied().collect()
    }

    /// A handle that reads how many lanes this relay owns, without waiting for the store (for
    /// readiness checks).
    pub fn owned_lane_count(&self) -> OwnedLaneCount {
        OwnedLaneCount(self.owned_count.clone())
    }
}

/// How many lanes a relay owns right now; see [`PgRelayStore::owned_lane_count`].
#[derive(Debug, Clone, Default)]
pub struct OwnedLaneCount(Arc<AtomicUsize>);

impl OwnedLaneCount {
    /// The number of lanes owned.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl LaneStore for PgRelayStore {
    type Error = Error;

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Window>, Error> {
        let mut session = self.session.lock().await;
        let result = self.claim_in(&mut session, &request).await;
        if let Err(error) = &result {
            session.failed(error);
        }
        result
    }

    async fn settle(&self, settlement: &Settlement) -> Result<Settled, Error> {
        let mut session = self.session.lock().await;
        let result = self.settle_in(&mut session, settlement).await;
        if let Err(error) = &result {
            session.failed(error);
        }
        result
    }
}

impl WakeUps for PgRelayStore {
    async fn wait_for_work(&self, max_wait: Duration) {
        self.wait(max_wait).await;
    }
}

impl Lease for PgRelayStore {
    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    async fn close(&self) {
        // The wake-up connection goes back to the pool, so that the pool can close.
        self.listener.lock().await.take();
        self.session.lock().await.close().await;
    }
}
