//! Wrappers that watch the real relay engine without changing it: a store that counts settled
//! messages, and a publisher that timestamps acknowledgements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use outbox_core::{
    Acknowledgements, ClaimRequest, Fence, LaneStore, Lease, Publisher, Settled, Settlement,
    StoredMessage, WakeUps, Window,
};
use uuid::Uuid;

/// A store that counts the messages whose publication was settled (deleted).
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

impl<S: LaneStore> LaneStore for CountingStore<S> {
    type Error = S::Error;

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Window>, Self::Error> {
        self.inner.claim(request).await
    }

    async fn settle(&self, settlement: &Settlement) -> Result<Settled, Self::Error> {
        let settled = self.inner.settle(settlement).await?;
        self.settled
            .fetch_add(settled.published.len() as u64, Ordering::Relaxed);
        Ok(settled)
    }
}

impl<S: WakeUps> WakeUps for CountingStore<S> {
    async fn wait_for_work(&self, max_wait: Duration) {
        self.inner.wait_for_work(max_wait).await;
    }
}

impl<S: Lease> Lease for CountingStore<S> {
    fn lease(&self) -> Option<Duration> {
        self.inner.lease()
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

/// A [`Publisher`] that records when each message was handed to it (claimed and sent) and when
/// the broker acknowledged it: when the acknowledgements of its window are all in (an upper bound
/// for each message of the window; windows are small at fixed loads).
#[derive(Debug)]
pub struct AckClock<P> {
    inner: P,
    acks: Clock,
    handed: Clock,
}

impl<P> AckClock<P> {
    /// Wraps `inner`, recording acknowledgements into `acks` and hand-overs into `handed`.
    pub fn new(inner: P, acks: Clock, handed: Clock) -> Self {
        Self {
            inner,
            acks,
            handed,
        }
    }
}

impl<P: Publisher> Publisher for AckClock<P> {
    async fn send(&self, messages: &[StoredMessage], fence: &Fence) -> Acknowledgements {
        let ids: Vec<Uuid> = messages.iter().map(|m| m.message.id).collect();
        {
            let now = Instant::now();
            self.handed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(ids.iter().map(|id| (*id, now)));
        }
        let pending = self.inner.send(messages, fence).await;
        let clock = self.acks.clone();
        async move {
            let outcomes = pending.await;
            let now = Instant::now();
            let mut acks = clock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (id, outcome) in ids.into_iter().zip(&outcomes) {
                if outcome.is_ok() {
                    acks.push((id, now));
                }
            }
            outcomes
        }
        .boxed()
    }

    fn send_timeout(&self) -> Option<Duration> {
        self.inner.send_timeout()
    }
}
