//! Wrappers that watch the real relay engine without changing it: a store that counts settled
//! messages, and a publisher that timestamps acknowledgements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::{Fence, PublishError, Publisher, RelayStore, Settlement, StoredMessage};
use uuid::Uuid;

/// A [`RelayStore`] that counts the messages whose publication was settled (deleted).
#[derive(Debug)]
pub struct CountingStore<S> {
    inner: Arc<S>,
    settled: Arc<AtomicU64>,
}

impl<S> CountingStore<S> {
    /// Wraps `inner`; `settled` grows by every settled publication.
    pub fn new(inner: Arc<S>, settled: Arc<AtomicU64>) -> Self {
        Self { inner, settled }
    }
}

impl<S: RelayStore> RelayStore for CountingStore<S> {
    type Error = S::Error;

    async fn claim(&self, limit: usize) -> Result<Vec<StoredMessage>, Self::Error> {
        self.inner.claim(limit).await
    }

    async fn claim_after(
        &self,
        limit: usize,
        in_flight: &[i64],
    ) -> Result<Vec<StoredMessage>, Self::Error> {
        self.inner.claim_after(limit, in_flight).await
    }

    async fn settle(&self, settlement: &Settlement) -> Result<u64, Self::Error> {
        let changed = self.inner.settle(settlement).await?;
        self.settled
            .fetch_add(settlement.published.len() as u64, Ordering::Relaxed);
        Ok(changed)
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        self.inner.wait_for_work(max_wait).await;
    }

    fn fence(&self) -> Fence {
        self.inner.fence()
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

/// Message ids with the instant something happened to them (acknowledged, received).
pub type Clock = Arc<Mutex<Vec<(Uuid, Instant)>>>;

/// Takes what `clock` holds, leaving it empty.
pub fn drain_clock(clock: &Clock) -> Vec<(Uuid, Instant)> {
    std::mem::take(
        &mut *clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// A [`Publisher`] that records when the broker acknowledged each message: when the engine's
/// `publish` returns, that is, when the last acknowledgement of the batch arrived (an upper bound
/// for each message of the batch; batches are small at fixed loads).
#[derive(Debug)]
pub struct AckClock<P> {
    inner: P,
    acks: Clock,
}

impl<P> AckClock<P> {
    /// Wraps `inner`, recording into `acks`.
    pub fn new(inner: P, acks: Clock) -> Self {
        Self { inner, acks }
    }
}

impl<P: Publisher> Publisher for AckClock<P> {
    async fn publish(
        &self,
        batch: &[StoredMessage],
        fence: &Fence,
    ) -> Vec<Result<(), PublishError>> {
        let outcomes = self.inner.publish(batch, fence).await;
        let now = Instant::now();
        let mut acks = self
            .acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (stored, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_ok() {
                acks.push((stored.message.id, now));
            }
        }
        outcomes
    }
}
