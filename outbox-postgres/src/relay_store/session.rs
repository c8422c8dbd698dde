//! The relay's session: the one connection that holds its lanes, kept alive and fenced under
//! the lease of `crate::lease`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::horizon::Horizon;
use crate::lease::{SessionLease, heartbeat_period};

/// The session and what it holds. Claims, settlements and lane changes all run on `conn`, so a relay
/// can only change rows while it holds their lanes.
#[derive(Debug, Default)]
pub(super) struct Session {
    pub conn: Option<PgConnection>,
    /// Its fence: open while `conn` holds the lanes; closed when the session is lost.
    pub lease: SessionLease,
    /// Counts sessions; windows name the one they were claimed on.
    pub epoch: u64,
    /// Lanes whose lock `conn` holds.
    pub owned: BTreeSet<i32>,
    /// Owned lanes being given up: claimed no more, released once no window of theirs is busy.
    pub draining: BTreeSet<i32>,
    pub horizon: Horizon,
    pub last_rebalance: Option<Instant>,
    /// With retention: no purge before this time.
    pub next_purge: Option<Instant>,
    /// `owned.len()`, readable without the session lock.
    pub owned_count: Arc<AtomicUsize>,
}

impl Session {
    /// The open connection.
    pub fn conn(&mut self) -> Result<&mut PgConnection, Error> {
        self.conn.as_mut().ok_or(Error::SessionLost)
    }

    /// Installs a fresh connection that already holds the membership lock; the lanes start empty.
    pub fn open(&mut self, conn: PgConnection, started: Instant, lease: Duration) {
        let lost = self.owned.len();
        self.owned.clear();
        self.draining.clear();
        self.lanes_changed("lost", lost);
        self.lease.start(started, lease);
        self.conn = Some(conn);
        self.epoch += 1;
        self.horizon = Horizon::default();
        self.last_rebalance = None;
    }

    /// Records a successful round trip that started at `started`: the lanes are ours until the
    /// server could end the idle session, less a safety margin.
    pub fn renew(&mut self, started: Instant, lease: Duration) {
        self.lease.renew(started, lease);
    }

    /// Drops the session after `error` when the error means the connection is gone or its state
    /// unknown; PostgreSQL then releases its locks. A statement that merely failed (a timeout, a
    /// constraint) leaves the session and its lanes as they are.
    pub fn failed(&mut self, error: &Error) {
        if error.loses_session() {
            self.disconnect(error);
        }
    }

    /// Drops the session; PostgreSQL releases its locks when the connection closes.
    pub fn disconnect(&mut self, error: &Error) {
        self.lease.end();
        if self.conn.take().is_some() {
            tracing::warn!(error = %outbox_core::relay::error_chain(error), released = self.owned.len(), "relay session lost; its lanes are released");
        }
        let lost = self.owned.len();
        self.owned.clear();
        self.draining.clear();
        self.lanes_changed("lost", lost);
    }

    /// Closes the session on shutdown, releasing its lanes at once.
    pub async fn close(&mut self) {
        let released = self.owned.len();
        self.owned.clear();
        self.draining.clear();
        self.lanes_changed("released", released);
        self.lease.end();
        if let Some(conn) = self.conn.take() {
            if let Err(error) = conn.close().await {
                tracing::warn!(%error, "closing the relay session failed; the server releases its lanes when it notices");
            }
            tracing::info!("relay session closed; lanes released");
        }
    }

    /// Publishes the number of owned lanes after `lanes` of them changed hands.
    pub fn lanes_changed(&self, change: &'static str, lanes: usize) {
        self.owned_count.store(self.owned.len(), Ordering::Relaxed);
        outbox_core::metrics::lanes_changed(self.owned.len(), change, lanes);
    }
}

/// Keeps the session of `epoch` busy enough that the server does not end it while the relay is
/// healthy (waiting for broker acknowledgements, or idle). Ends with the session.
pub(super) async fn heartbeat(
    session: std::sync::Weak<Mutex<Session>>,
    epoch: u64,
    lease: Duration,
) {
    let every = heartbeat_period(lease);
    loop {
        tokio::time::sleep(every).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        let mut session = session.lock().await;
        if session.epoch != epoch || session.conn.is_none() {
            return;
        }
        if session.lease.renewed_within(every) {
            continue;
        }
        let started = Instant::now();
        let Some(conn) = session.conn.as_mut() else {
            return;
        };
        match conn.ping().await {
            Ok(()) => session.renew(started, lease),
            Err(error) => {
                session.disconnect(&Error::Database(error));
                return;
            }
        }
    }
}
