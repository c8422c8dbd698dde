//! Relays under test: the real engine (`outbox_core::Relay`) over `PgRelayStore` (table mode) or
//! `PgWalStore` (WAL mode) and `KafkaPublisher`, with the settings the `outbox-relay` program uses
//! by default, running in this process and watched through [`crate::observe`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use outbox_core::{CancellationToken, Relay, RelayConfig, RelayStats, RelayStore};
use outbox_kafka::KafkaPublisher;
use outbox_postgres::wal::Reading;
use outbox_postgres::{PgRelayStore, PgRelayStoreConfig, PgWalStore};

use crate::capture::Capture;
use crate::env::Bench;
use crate::observe::{AckClock, Clock, CountingStore};

/// Lanes of every relay (the default).
pub const LANES: usize = 64;

/// Longest a WAL relay may take to read up to the end of the WAL before it counts as started.
const WAL_CATCH_UP: Duration = Duration::from_secs(120);

/// What tells whether a relay is ready: the lanes it owns, or whether it reads the slot.
enum Store {
    Table(Arc<PgRelayStore>),
    Wal(Reading),
}

/// The publisher of every relay: the relay's own, timestamping acknowledgements.
type WatchedPublisher = AckClock<KafkaPublisher>;

/// One relay running in this process.
pub struct RunningRelay {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<RelayStats>,
    store: Store,
    /// Messages published and settled so far.
    pub settled: Arc<AtomicU64>,
    /// When each message's batch was acknowledged.
    pub acks: Clock,
    /// When each message was handed to the publisher.
    pub handed: Clock,
}

impl RunningRelay {
    /// Starts a relay of `capture` with `batch_size` and `poll_interval`, everything else at its
    /// default.
    ///
    /// # Errors
    /// When a setting is refused, the producer cannot be created, or (WAL mode) the slot cannot be
    /// read.
    pub async fn start(
        bench: &Bench,
        capture: Capture,
        batch_size: usize,
        poll_interval: Duration,
    ) -> anyhow::Result<Self> {
        let config = bench
            .engine
            .clone()
            .batch_size(batch_size)?
            .poll_interval(poll_interval)?;
        let settled = Arc::new(AtomicU64::new(0));
        let (acks, handed) = (Clock::default(), Clock::default());
        let publisher = AckClock::new(
            KafkaPublisher::new(&bench.kafka)?,
            acks.clone(),
            handed.clone(),
        );
        let shutdown = CancellationToken::new();
        let (store, task) = match capture {
            Capture::Table => {
                let store = Arc::new(PgRelayStore::new(
                    bench.pool.clone(),
                    PgRelayStoreConfig::default(),
                ));
                let task = spawn(store.clone(), &settled, publisher, config, &shutdown)?;
                (Store::Table(store), task)
            }
            Capture::Wal => {
                let store = PgWalStore::new(&bench.pool, &bench.url, bench.wal_store()?)?;
                store.check().await?;
                let reading = store.reading();
                let task = spawn(Arc::new(store), &settled, publisher, config, &shutdown)?;
                (Store::Wal(reading), task)
            }
        };
        Ok(Self {
            shutdown,
            task,
            store,
            settled,
            acks,
            handed,
        })
    }

    /// Lanes it owns now (table mode), or all of them while it reads the slot (WAL mode).
    pub async fn lanes(&self) -> usize {
        match &self.store {
            Store::Table(store) => store.owned_lanes().await.len(),
            Store::Wal(reading) => {
                if reading.get() {
                    LANES
                } else {
                    0
                }
            }
        }
    }

    /// Stops it (its session closes and its lanes are released).
    ///
    /// # Errors
    /// When it does not stop within 30 s.
    pub async fn stop(self) -> anyhow::Result<RelayStats> {
        self.shutdown.cancel();
        Ok(tokio::time::timeout(Duration::from_secs(30), self.task).await??)
    }
}

/// Runs `relay` over `store` (counting its settlements into `settled`) until `shutdown`.
fn spawn<S: RelayStore + 'static>(
    store: Arc<S>,
    settled: &Arc<AtomicU64>,
    publisher: WatchedPublisher,
    config: RelayConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<RelayStats>> {
    let relay = Relay::new(
        CountingStore::new(store, settled.clone()),
        publisher,
        config,
    )?;
    let token = shutdown.clone();
    Ok(tokio::spawn(async move { relay.run(token).await }))
}

/// Starts `count` relays of `capture` and waits until they are ready: in table mode, the lanes
/// spread evenly among them; in WAL mode (one relay: a slot has one reader), the relay reading
/// the slot, which was first moved to the end of the WAL, and having confirmed up to there.
///
/// # Errors
/// When a relay cannot start, or is not ready within 30 s (WAL mode: 120 s).
pub async fn start_balanced(
    bench: &Bench,
    capture: Capture,
    count: usize,
    batch_size: usize,
    poll_interval: Duration,
) -> anyhow::Result<Vec<RunningRelay>> {
    let mut caught_up_to = None;
    if capture == Capture::Wal {
        if count != 1 {
            bail!("a replication slot has one reader: WAL mode runs one relay, not {count}");
        }
        crate::slot::skip_to_now(bench).await?;
        caught_up_to = Some(crate::slot::current_lsn(&bench.pool).await?);
    }
    let mut relays = Vec::with_capacity(count);
    for _ in 0..count {
        match RunningRelay::start(bench, capture, batch_size, poll_interval).await {
            Ok(relay) => relays.push(relay),
            Err(error) => {
                stop_all(relays).await;
                return Err(error);
            }
        }
    }
    let share = LANES / count;
    let within = if capture == Capture::Wal {
        WAL_CATCH_UP
    } else {
        Duration::from_secs(30)
    };
    let deadline = Instant::now() + within;
    loop {
        let mut owned = Vec::with_capacity(count);
        for relay in &relays {
            owned.push(relay.lanes().await);
        }
        let caught_up = match &caught_up_to {
            Some(lsn) => crate::slot::confirmed_at_least(bench, lsn).await?,
            None => true,
        };
        if caught_up && owned.iter().all(|&lanes| lanes == share) {
            return Ok(relays);
        }
        if Instant::now() > deadline {
            stop_all(relays).await;
            bail!(
                "{count} {} relay(s) not ready within {within:?}: lanes {owned:?}, caught up {caught_up}",
                capture.label()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops every relay, reporting (not failing on) a relay that does not stop.
pub async fn stop_all(relays: Vec<RunningRelay>) {
    for relay in relays {
        if let Err(error) = relay.stop().await {
            crate::progress(format!("a relay did not stop cleanly: {error}"));
        }
    }
}

/// Messages settled by all of `relays`.
pub fn settled(relays: &[RunningRelay]) -> u64 {
    relays
        .iter()
        .map(|relay| relay.settled.load(Ordering::Relaxed))
        .sum()
}

/// Waits until `relays` settled `target` messages; returns when that was seen (checked every
/// 2 ms).
///
/// # Errors
/// When it takes longer than `timeout`.
pub async fn wait_settled(
    relays: &[RunningRelay],
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = settled(relays);
        if done >= target {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {target} messages published after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
