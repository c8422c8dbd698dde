//! Settings of the relay store.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::Error;
use crate::tables::Tables;

/// Settings of a [`PgRelayStore`](super::PgRelayStore).
#[derive(Debug, Clone)]
pub struct PgRelayStoreConfig {
    pub(super) tables: Tables,
    pub(super) lanes: u32,
    pub(super) rebalance_interval: Duration,
    pub(super) lease: Duration,
    pub(super) retention: Option<Duration>,
    pub(super) purge_batch: u32,
    pub(super) purge_interval: Duration,
}

impl PgRelayStoreConfig {
    /// What [`lease`](Self::lease) accepts (and the WAL store's lease): 1 s to 1 h.
    pub const LEASE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);
    /// What [`retention`](Self::retention) accepts besides `None`: 1 ms to a century.
    pub const RETENTION: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(100 * 365 * 24 * 60 * 60);
}

/// A lane count: a power of two from 1 to [`outbox_core::lane::SLOTS`].
pub(crate) fn check_lanes(lanes: u32) -> Result<u32, Error> {
    if !lanes.is_power_of_two() || lanes > outbox_core::lane::SLOTS {
        return Err(Error::Config(format!(
            "lanes must be a power of two from 1 to {}, got {lanes}",
            outbox_core::lane::SLOTS
        )));
    }
    Ok(lanes)
}

/// A lease in [`PgRelayStoreConfig::LEASE`].
pub(crate) fn check_lease(lease: Duration) -> Result<Duration, Error> {
    if !PgRelayStoreConfig::LEASE.contains(&lease) {
        return Err(Error::Config(format!(
            "lease must be from 1s to 1h, got {lease:?}"
        )));
    }
    Ok(lease)
}

impl Default for PgRelayStoreConfig {
    fn default() -> Self {
        Self {
            tables: Tables::default(),
            lanes: 64,
            rebalance_interval: Duration::from_secs(1),
            lease: Duration::from_secs(25),
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
        self.lanes = check_lanes(lanes)?;
        Ok(self)
    }

    /// How often a relay recounts the relays and takes or gives back lanes. Default 1 s.
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.rebalance_interval = interval;
        self
    }

    /// How long a relay that stopped answering (a paused process, a dead host) keeps its lanes
    /// before PostgreSQL ends its session and another relay takes them over. Default 25 s; at least
    /// 1 s. The relay renews it every quarter of the lease, and stops sending once a fifth of it is
    /// left without renewal; the publisher's send timeout must fit in that fifth (5 s of the
    /// default), see [`outbox_core::fence`]. A relay that crashes or is killed loses its session,
    /// and with it its lanes, at once; the lease only bounds a relay that hangs or is cut off. The relay's session also ends when it stays a lease inside a
    /// transaction, and its statements give up after half a lease (a lock after a quarter), so that a
    /// relay stuck on the database never keeps its lanes.
    ///
    /// # Errors
    /// [`Error::Config`] outside [`Self::LEASE`].
    pub fn lease(mut self, lease: Duration) -> Result<Self, Error> {
        self.lease = check_lease(lease)?;
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
    /// [`Error::Config`] for a retention outside [`Self::RETENTION`] (use `None` to delete on
    /// publish).
    pub fn retention(mut self, retention: Option<Duration>) -> Result<Self, Error> {
        if let Some(kept) = retention
            && !Self::RETENTION.contains(&kept)
        {
            return Err(Error::Config(format!(
                "retention must be from 1ms to 100 years (or none, to delete published messages), got {kept:?}"
            )));
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
