//! Relays under test: the real engine (`outbox_core::Relay`) over `PgRelayStore` and
//! `KafkaPublisher`, with the settings the `outbox-relay` program uses by default, running in this
//! process and watched through [`crate::observe`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use outbox_core::{CancellationToken, Relay, RelayStats};
use outbox_kafka::KafkaPublisher;
use outbox_postgres::{PgRelayStore, PgRelayStoreConfig};

use crate::env::Bench;
use crate::observe::{AckClock, Clock, CountingStore};

/// Lanes of every relay (the default).
pub const LANES: usize = 64;

/// One relay running in this process.
pub struct RunningRelay {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<RelayStats>,
    store: Arc<PgRelayStore>,
    /// Messages published and settled so far.
    pub settled: Arc<AtomicU64>,
    /// When each message's batch was acknowledged.
    pub acks: Clock,
}

impl RunningRelay {
    /// Starts a relay with `batch_size` and `poll_interval`, everything else at its default.
    ///
    /// # Errors
    /// When a setting is refused or the producer cannot be created.
    pub fn start(
        bench: &Bench,
        batch_size: usize,
        poll_interval: Duration,
    ) -> anyhow::Result<Self> {
        let config = bench
            .engine
            .clone()
            .batch_size(batch_size)?
            .poll_interval(poll_interval)?;
        let store = Arc::new(PgRelayStore::new(
            bench.pool.clone(),
            PgRelayStoreConfig::default(),
        ));
        let settled = Arc::new(AtomicU64::new(0));
        let acks = Clock::default();
        let relay = Relay::new(
            CountingStore::new(store.clone(), settled.clone()),
            AckClock::new(KafkaPublisher::new(&bench.kafka)?, acks.clone()),
            config,
        )?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { relay.run(token).await });
        Ok(Self {
            shutdown,
            task,
            store,
            settled,
            acks,
        })
    }

    /// Lanes it owns now.
    pub async fn lanes(&self) -> usize {
        self.store.owned_lanes().await.len()
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

/// Starts `count` relays and waits until the lanes are spread evenly among them.
///
/// # Errors
/// When a relay cannot start, or the lanes are not balanced within 30 s.
pub async fn start_balanced(
    bench: &Bench,
    count: usize,
    batch_size: usize,
    poll_interval: Duration,
) -> anyhow::Result<Vec<RunningRelay>> {
    let relays = (0..count)
        .map(|_| RunningRelay::start(bench, batch_size, poll_interval))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let share = LANES / count;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut owned = Vec::with_capacity(count);
        for relay in &relays {
            owned.push(relay.lanes().await);
        }
        if owned.iter().all(|&lanes| lanes == share) {
            return Ok(relays);
        }
        if Instant::now() > deadline {
            stop_all(relays).await;
            bail!("{count} relays did not balance their lanes within 30 s: {owned:?}");
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
