//! The relay engine: claim, publish, wait for acknowledgements, settle.
//!
//! The engine is generic over a [`RelayStore`] and a [`Publisher`]. One pass claims a batch in
//! publish order, hands the whole batch to the publisher, waits for every acknowledgement and writes
//! the outcome back: acknowledged messages are removed, failed ones are scheduled for a retry or moved
//! to the dead-letter table. A message leaves the outbox only after the broker acknowledged it, so a
//! crash anywhere in the pass leads to re-publication, never to loss.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;
use crate::metrics;
use crate::publisher::Publisher;
use crate::retry::{Decision, RetryPolicy};
use crate::store::{DeadLetter, RelayStore, Retry, Settlement, StoredMessage};
use crate::trace;

/// Settings of the relay engine. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    batch_size: usize,
    poll_interval: Duration,
    retry: RetryPolicy,
    shutdown_grace: Duration,
    store_backoff: Duration,
    pipeline: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
            store_backoff: Duration::from_millis(500),
            pipeline: true,
        }
    }
}

impl RelayConfig {
    /// Most messages claimed and published in one pass. Default 500; 1 to 100,000.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn batch_size(mut self, batch_size: usize) -> Result<Self, Error> {
        if !(1..=100_000).contains(&batch_size) {
            return Err(Error::Config(format!(
                "batch size {batch_size} is outside 1..=100000"
            )));
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// Longest sleep when the outbox is empty and no wake-up arrives. Default 1 s; 1 ms to 1 h.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn poll_interval(mut self, interval: Duration) -> Result<Self, Error> {
        if interval < Duration::from_millis(1) || interval > Duration::from_secs(3600) {
            return Err(Error::Config(format!(
                "poll interval {interval:?} is outside 1ms..=1h"
            )));
        }
        self.poll_interval = interval;
        Ok(self)
    }

    /// Backoff and dead-letter threshold for failed messages. Default [`RetryPolicy::default`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// On shutdown, how long the in-flight batch may take to be acknowledged before it is abandoned
    /// (abandoned messages stay in the outbox and are published again later). Default 10 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Whether to claim the next batch while the broker is still acknowledging the current one.
    /// Default on. The prefetched batch leaves out the in-flight messages and every lane with a
    /// retry pending, and is published only if the current batch settled without a failure;
    /// otherwise it is dropped and claimed again.
    pub fn pipeline(mut self, pipeline: bool) -> Self {
        self.pipeline = pipeline;
        self
    }

    /// The configured batch size.
    pub fn get_batch_size(&self) -> usize {
        self.batch_size
    }

    /// The configured poll interval.
    pub fn get_poll_interval(&self) -> Duration {
        self.poll_interval
    }
}

/// Counters of one relay run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Messages acknowledged by the broker and settled.
    pub published: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
    /// Messages moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Batches abandoned on shutdown or because the outcome could not be written back.
    pub abandoned_batches: u64,
}

/// The relay engine. See the module documentation.
#[derive(Debug)]
pub struct Relay<S, P> {
    store: S,
    publisher: P,
    config: RelayConfig,
}

impl<S: RelayStore, P: Publisher> Relay<S, P> {
    /// Builds a relay over `store` and `publisher`.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Self {
        Self {
            store,
            publisher,
            config,
        }
    }

    /// Runs until `shutdown` is cancelled. Store failures (the database restarting, a lost
    /// connection) are logged and retried; they never end the run.
    pub async fn run(&self, shutdown: CancellationToken) -> RelayStats {
        let mut stats = RelayStats::default();
        let mut prefetched = Vec::new();
        while !shutdown.is_cancelled() {
            if !prefetched.is_empty() {
                let batch = std::mem::take(&mut prefetched);
                prefetched = self.pass(batch, &shutdown, &mut stats).await;
                continue;
            }
            let claimed = tokio::select! {
                () = shutdown.cancelled() => break,
                claimed = self.store.claim(self.config.batch_size) => claimed,
            };
            let batch = match claimed {
                Ok(batch) => batch,
                Err(error) => {
                    metrics::database_error("claim");
                    tracing::warn!(error = %error_chain(&error), "claiming from the outbox failed; retrying");
                    sleep_unless_cancelled(self.config.store_backoff, &shutdown).await;
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.store.wait_for_work(self.config.poll_interval) => {}
                }
                continue;
            }
            prefetched = self.pass(batch, &shutdown, &mut stats).await;
        }
        self.store.close().await;
        tracing::info!(?stats, "relay stopped");
        stats
    }

    /// Publishes one claimed batch and settles it; returns the next batch when it could be claimed
    /// while this one was in flight and this one settled cleanly.
    async fn pass(
        &self,
        batch: Vec<StoredMessage>,
        shutdown: &CancellationToken,
        stats: &mut RelayStats,
    ) -> Vec<StoredMessage> {
        let fence = self.store.fence();
        let in_flight: Vec<i64> = batch.iter().map(|stored| stored.seq).collect();
        tracing::debug!(
            messages = batch.len(),
            first_seq = in_flight.first().copied().unwrap_or_default(),
            last_seq = in_flight.last().copied().unwrap_or_default(),
            "publishing a batch"
        );
        metrics::batch(batch.len());
        let span = tracing::info_span!("outbox.publish", messages = batch.len());
        trace::link_to_messages(&span, &batch);
        let publishing = self.publisher.publish(&batch, &fence).instrument(span);
        let prefetch = async {
            if !self.config.pipeline {
                return Vec::new();
            }
            self.store
                .claim_after(self.config.batch_size, &in_flight)
                .await
                .unwrap_or_else(|error| {
                    tracing::debug!(error = %error_chain(&error), "claiming ahead failed; claiming after settling instead");
                    Vec::new()
                })
        };
        let both = futures::future::join(publishing, prefetch);
        tokio::pin!(both);
        let (outcomes, next) = tokio::select! {
            done = &mut both => done,
            () = grace_after(shutdown, self.config.shutdown_grace) => {
                tracing::warn!(messages = batch.len(), "shutdown grace elapsed; abandoning the in-flight batch (it will be published again)");
                stats.abandoned_batches += 1;
                metrics::abandoned();
                return Vec::new();
            }
        };
        let fenced = outcomes
            .iter()
            .any(|outcome| matches!(outcome, Err(error) if error.kind() == crate::PublishErrorKind::Fenced));
        if fenced || !fence.is_valid() {
            tracing::warn!(
                messages = batch.len(),
                "lease expired while publishing; leaving the batch to the lanes' next owner"
            );
            stats.abandoned_batches += 1;
            metrics::abandoned();
            sleep_unless_cancelled(self.config.store_backoff, shutdown).await;
            return Vec::new();
        }
        let settlement = self.settlement(&batch, outcomes);
        for attempt in 1..=3u32 {
            match self.store.settle(&settlement).await {
                Ok(changed) => {
                    let expected = settlement.published.len()
                        + settlement.retries.len()
                        + settlement.dead_letters.len();
                    if changed < expected as u64 {
                        tracing::warn!(
                            changed,
                            expected,
                            "some settled messages were no longer ours; another relay owns their lane now"
                        );
                    }
                    metrics::settled(&batch, &settlement);
                    stats.published += settlement.published.len() as u64;
                    stats.retried += settlement.retries.len() as u64;
                    stats.dead_lettered += settlement.dead_letters.len() as u64;
                    tracing::debug!(
                        published = settlement.published.len(),
                        retries = settlement.retries.len(),
                        dead_letters = settlement.dead_letters.len(),
                        "batch settled"
                    );
                    let clean = settlement.retries.is_empty()
                        && settlement.dead_letters.is_empty()
                        && changed == expected as u64;
                    return if clean { next } else { Vec::new() };
                }
                Err(error) => {
                    metrics::database_error("settle");
                    tracing::warn!(attempt, error = %error_chain(&error), "writing back a published batch failed");
                    sleep_unless_cancelled(self.config.store_backoff * attempt, shutdown).await;
                }
            }
        }
        tracing::error!(
            messages = batch.len(),
            "could not write back a published batch; its messages will be published again"
        );
        stats.abandoned_batches += 1;
        metrics::abandoned();
        Vec::new()
    }

    fn settlement(
        &self,
        batch: &[StoredMessage],
        outcomes: Vec<Result<(), crate::PublishError>>,
    ) -> Settlement {
        let mut settlement = Settlement::default();
        for (stored, outcome) in batch.iter().zip(outcomes) {
            let error = match outcome {
                Ok(()) => {
                    settlement.published.push(stored.seq);
                    continue;
                }
                Err(error) => error,
            };
            // An outage (or a lost fence) is no attempt of the message's own: its count stays, so
            // that a long outage never uses up the dead-letter budget of what waited through it.
            let failed = if error.kind().counts_as_attempt() {
                stored.attempts.saturating_add(1)
            } else {
                stored.attempts
            };
            let text = error.describe();
            let decision = self
                .config
                .retry
                .decide(stored.attempts.saturating_add(1), &error);
            metrics::failed(&stored.message.topic, error.kind());
            match decision {
                Decision::RetryAfter(delay) => {
                    tracing::warn!(id = %stored.message.id, topic = %stored.message.topic, attempts = failed, ?delay, error = %text, "publish failed; will retry");
                    let not_before = Utc::now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    settlement.retries.push(Retry {
                        seq: stored.seq,
                        attempts: failed,
                        not_before,
                        error: text,
                    });
                }
                Decision::DeadLetter => {
                    tracing::error!(id = %stored.message.id, topic = %stored.message.topic, attempts = failed, error = %text, "publish failed for good; moving the message to the dead letters");
                    settlement.dead_letters.push(DeadLetter {
                        seq: stored.seq,
                        attempts: failed,
                        error: text,
                    });
                }
            }
        }
        settlement
    }
}

/// Completes `grace` after `shutdown` was cancelled; never before.
async fn grace_after(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}

async fn sleep_unless_cancelled(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

/// Renders an error with its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::PublishErrorKind;
    use crate::message::Message;
    use crate::testing::{MemoryPublisher, MemoryStore};

    fn message(key: &str, n: usize) -> Message {
        Message::builder("t")
            .key(key)
            .json(&n)
            .expect("valid message")
    }

    fn fast_config() -> RelayConfig {
        RelayConfig::default()
            .batch_size(7)
            .expect("valid")
            .poll_interval(Duration::from_millis(5))
            .expect("valid")
            .retry(
                RetryPolicy::default()
                    .max_attempts(3)
                    .expect("valid")
                    .backoff(Duration::from_millis(1), Duration::from_millis(2))
                    .expect("valid"),
            )
    }

    async fn run_until(
        relay: &Relay<MemoryStore, MemoryPublisher>,
        store: &MemoryStore,
        done: impl Fn(&MemoryStore) -> bool,
    ) -> RelayStats {
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        let watcher = async {
            while !done(store) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stopper.cancel();
        };
        let (stats, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(relay.run(shutdown), watcher)
        })
        .await
        .expect("relay finished in time");
        stats
    }

    /// Runs a relay with `config` over 50 messages of two keys; asserts everything was published,
    /// in enqueue order, and the outbox emptied.
    async fn assert_publishes_everything_in_order(config: RelayConfig) {
        let store = MemoryStore::new();
        let publisher = MemoryPublisher::new();
        store.enqueue((0..50).map(|n| message(if n % 3 == 0 { "a" } else { "b" }, n)));
        let relay = Relay::new(store.clone(), publisher.clone(), config);
        let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
        let order: Vec<Vec<u8>> = publisher
            .published()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        let expected: Vec<Vec<u8>> = (0..50).map(|n: usize| n.to_string().into_bytes()).collect();
        assert_eq!(order, expected);
        assert_eq!(stats.published, 50);
    }

    #[tokio::test]
    async fn publishes_every_message_in_enqueue_order_and_empties_the_outbox() {
        assert_publishes_everything_in_order(fast_config()).await;
    }

    #[tokio::test]
    async fn a_pipelined_relay_publishes_every_message_in_enqueue_order() {
        assert_publishes_everything_in_order(fast_config().pipeline(true)).await;
    }

    #[tokio::test]
    async fn transient_failures_hold_the_key_back_then_succeed() {
        let store = MemoryStore::new();
        let failures = Arc::new(AtomicU32::new(0));
        let seen = failures.clone();
        let publisher = MemoryPublisher::failing(move |stored| {
            (stored.seq == 1 && seen.fetch_add(1, Ordering::SeqCst) < 2)
                .then_some(PublishErrorKind::Transient)
        });
        store.enqueue([message("a", 0)]);
        let relay = Relay::new(store.clone(), publisher.clone(), fast_config());
        let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
        assert_eq!(
            failures.load(Ordering::SeqCst),
            3,
            "two failures, then success"
        );
        assert_eq!(stats.retried, 2);
        assert_eq!(publisher.published().len(), 1);
        assert!(store.dead_letters().is_empty());
    }

    #[tokio::test]
    async fn permanent_failures_become_dead_letters_and_the_rest_flows() {
        let store = MemoryStore::new();
        let publisher = MemoryPublisher::failing(|stored| {
            (stored.seq == 3).then_some(PublishErrorKind::MessageTooLarge)
        });
        store.enqueue((0..10).map(|n| message("a", n)));
        let relay = Relay::new(store.clone(), publisher.clone(), fast_config());
        let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
        let dead = store.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0.seq, 3);
        assert_eq!(dead[0].1.attempts, 1);
        assert!(
            dead[0].1.error.contains("MessageTooLarge"),
            "{}",
            dead[0].1.error
        );
        assert_eq!(publisher.published().len(), 9);
        assert_eq!(stats.dead_lettered, 1);
    }

    #[tokio::test]
    async fn transient_failures_past_the_limit_become_dead_letters() {
        let store = MemoryStore::new();
        let publisher = MemoryPublisher::failing(|_| Some(PublishErrorKind::Transient));
        store.enqueue([message("a", 0)]);
        let relay = Relay::new(store.clone(), publisher, fast_config());
        run_until(&relay, &store, |s| s.pending().is_empty()).await;
        let dead = store.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1.attempts, 3, "max_attempts");
    }

    #[tokio::test]
    async fn an_outage_longer_than_the_attempt_budget_uses_none_of_it() {
        let store = MemoryStore::new();
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        // Ten outages (more than the 3 attempts allowed), then one transient failure, then success.
        let publisher =
            MemoryPublisher::failing(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
                0..10 => Some(PublishErrorKind::Unavailable),
                10 => Some(PublishErrorKind::Transient),
                _ => None,
            });
        store.enqueue([message("a", 0)]);
        let relay = Relay::new(store.clone(), publisher.clone(), fast_config());
        run_until(&relay, &store, |s| s.pending().is_empty()).await;
        assert!(
            store.dead_letters().is_empty(),
            "a transient failure after an outage is the first attempt, not the eleventh: {:?}",
            store.dead_letters()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 12);
        assert_eq!(publisher.published().len(), 1);
    }

    #[tokio::test]
    async fn a_batch_whose_outcome_cannot_be_written_back_is_published_again_not_lost() {
        let store = MemoryStore::new();
        let publisher = MemoryPublisher::new();
        store.enqueue((0..5).map(|n| message("a", n)));
        store.fail_next_settles(3);
        let relay = Relay::new(store.clone(), publisher.clone(), fast_config());
        let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
        assert_eq!(stats.abandoned_batches, 1);
        assert_eq!(
            publisher.published().len(),
            10,
            "each message twice: at least once, never lost"
        );
    }

    #[tokio::test]
    async fn a_relay_whose_lease_expired_sends_nothing_more_and_settles_nothing() {
        let store = MemoryStore::new();
        store.enqueue((0..20).map(|n| message("a", n)));
        let lease = store.fence();
        let publisher = MemoryPublisher::failing(move |stored| {
            // The lease runs out while the fifth message is being handed over.
            if stored.seq == 5 {
                lease.expire();
            }
            None
        });
        let relay = Relay::new(
            store.clone(),
            publisher.clone(),
            fast_config().batch_size(10).expect("valid"),
        );
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        let (stats, ()) = tokio::join!(relay.run(shutdown), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stopper.cancel();
        });
        assert_eq!(
            publisher.published().len(),
            5,
            "messages 1-5 went out before the lease expired, none after"
        );
        assert_eq!(
            store.pending().len(),
            20,
            "nothing settled: the next owner publishes the batch again"
        );
        assert!(stats.abandoned_batches >= 1);
        assert_eq!(stats.published, 0);
    }

    #[tokio::test]
    async fn shutdown_while_idle_returns_promptly() {
        let relay = Relay::new(
            MemoryStore::new(),
            MemoryPublisher::new(),
            RelayConfig::default(),
        );
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let stats = tokio::time::timeout(Duration::from_secs(1), relay.run(shutdown))
            .await
            .expect("prompt");
        assert_eq!(stats, RelayStats::default());
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        assert!(RelayConfig::default().batch_size(0).is_err());
        assert!(
            RelayConfig::default()
                .poll_interval(Duration::ZERO)
                .is_err()
        );
    }
}
