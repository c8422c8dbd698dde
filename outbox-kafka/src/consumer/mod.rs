//! The inbox consumer: a consumer-group runner that applies each record once per consumer name.
//!
//! For every record: decode the CloudEvents headers, route it by `ce_type` to its handler, open a
//! database transaction, record (consumer name, `ce_id`) in the inbox, run the handler in that same
//! transaction only if the id is new, commit, and only then store the record's offset for the next
//! Kafka commit. Partitions run in parallel, each on its own task reading its own queue, one record
//! at a time; a record's offset is stored only once it is finished (applied, absorbed as a
//! duplicate, skipped or dead-lettered), so a commit never passes a record that was not.
//!
//! `docs/consumers.md` states the contract and every window in which a duplicate or a reorder can
//! happen.

mod builder;
mod partition;
mod process;
mod rebalance;
mod retention;
mod stats;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use outbox_core::sync::lock;
use outbox_core::{CancellationToken, Inbox, RetryPolicy};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::client_errors::ClientErrors;
use crate::dead_letter::DeadLetterProducer;
use crate::error::Error;
use crate::handler::Router;
use crate::offsets::Assignments;

use rebalance::RunnerContext;
use retention::purge_loop;
use stats::Counters;

pub use builder::InboxConsumerBuilder;
pub use retention::InboxRetention;
pub use stats::{ConsumerStats, InHand, RECORD_STARTED, StatsHandle};

/// How long shutdown waits for partition workers to stop before aborting them.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the runner's tasks share.
struct Shared<I: Inbox> {
    inbox: I,
    name: String,
    router: Router<I::Tx>,
    retry: RetryPolicy,
    /// How long one attempt of a handler may take before it is cut off and rolled back.
    handler_timeout: Duration,
    dead_letters: DeadLetterProducer,
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
    counters: Arc<Counters>,
    assignments: Mutex<Assignments>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Cancelled on shutdown: workers finish the record in hand, take no new one, and cut
    /// backoffs short.
    draining: CancellationToken,
    /// What the client reported; a refusal stops the run.
    errors: ClientErrors,
    /// The bootstrap servers, for messages.
    brokers: String,
}

type KafkaConsumer<I> = StreamConsumer<RunnerContext<I>>;

/// A Kafka consumer-group runner that applies each message once per consumer name through an
/// [`Inbox`], routing records to typed handlers by `ce_type`.
///
/// ```no_run
/// # use outbox_kafka::{ClientConfig, InboxConsumer, InboxRetention, Received};
/// # use outbox_core::CancellationToken;
/// # use std::time::Duration;
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: uuid::Uuid }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = ClientConfig::new();
/// config.set("bootstrap.servers", "localhost:9092").set("group.id", "shipping");
/// let inbox = outbox_postgres::PgInbox::new(pool);
/// let consumer = InboxConsumer::builder(&config, inbox, "shipping")
///     .topics(["orders"])
///     .on("OrderPlaced", |tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, event: OrderPlaced, _received: &Received| {
///         Box::pin(async move {
///             sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
///                 .bind(event.order_id)
///                 .execute(&mut **tx)
///                 .await?;
///             Ok(())
///         })
///     })
///     .inbox_retention(InboxRetention::keep(Duration::from_secs(14 * 86_400)))
///     .build()?;
/// consumer.run(CancellationToken::new()).await?;
/// # Ok(())
/// # }
/// ```
pub struct InboxConsumer<I: Inbox + 'static> {
    consumer: Arc<KafkaConsumer<I>>,
    shared: Arc<Shared<I>>,
    topics: Vec<String>,
    retention: Option<InboxRetention>,
}

impl<I: Inbox + 'static> std::fmt::Debug for InboxConsumer<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("name", &self.shared.name)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl<I: Inbox + 'static> InboxConsumer<I> {
    /// A handle on the counters, readable while [`run`](Self::run) runs.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.shared.counters.clone())
    }

    /// Consumes until `shutdown` is cancelled: subscribes, processes every assigned partition on a
    /// task of its own, purges the inbox if retention is configured. On shutdown each partition
    /// finishes the record in hand (a record waiting to be retried is left for redelivery), takes
    /// no new one, and the offsets of finished records are committed before the counters are
    /// returned.
    ///
    /// Dropping the future instead (aborting its task) stops the partition tasks at once; what
    /// they had not finished is redelivered.
    ///
    /// # Errors
    /// [`Error::Kafka`] when subscribing fails or the consumer hits a fatal error,
    /// [`Error::Refused`] when the brokers refuse the consumer as configured (its credentials, its
    /// TLS handshake, its SASL mechanism),
    /// [`Error::UnroutedRecord`] if a record arrives for a partition the runner could not give a
    /// queue of its own (its offset is not committed).
    pub async fn run(self, shutdown: CancellationToken) -> Result<ConsumerStats, Error> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        let guard = StopOnDrop(self.shared.clone());
        let purge = self
            .retention
            .map(|retention| tokio::spawn(purge_loop(retention, self.shared.clone())));
        tracing::info!(consumer = %self.shared.name, topics = ?self.topics, "consumer started");
        let outcome = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                // The brokers will not take this consumer as configured: saying so beats waiting.
                reason = self.shared.errors.refused() => {
                    tracing::error!(consumer = %self.shared.name, %reason, "the Kafka brokers refused the consumer");
                    break Err(Error::Refused { brokers: self.shared.brokers.clone(), reason });
                }
                // Serves the group's events (rebalances, errors); records come through the
                // partition queues.
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        tracing::error!(
                            topic = message.topic(),
                            partition = message.partition(),
                            offset = message.offset(),
                            "a record arrived outside its partition queue; stopping without committing it"
                        );
                        break Err(Error::UnroutedRecord {
                            topic: message.topic().to_owned(),
                            partition: message.partition(),
                            offset: message.offset(),
                        });
                    }
                    Err(error) => {
                        if let Some((code, reason)) = self.consumer.client().fatal_error() {
                            tracing::error!(?code, %reason, "fatal Kafka consumer error");
                            break Err(Error::Kafka(KafkaError::MessageConsumptionFatal(code)));
                        }
                        tracing::warn!(consumer = %self.shared.name, %error, "Kafka consumer error");
                    }
                },
            }
        };
        if let Some(purge) = purge {
            purge.abort();
        }
        stop_workers(&self.shared).await;
        drop(guard);
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match committed {
            Ok(Ok(())) => tracing::debug!("final offset commit done"),
            Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(error)) => {
                // Nothing stored, or the group is rebalancing: the records are redelivered.
                tracing::info!(%error, "final offset commit did not happen");
            }
            Err(error) => tracing::warn!(%error, "final offset commit task failed"),
        }
        let stats = self.shared.counters.snapshot();
        // Leaving the group waits for the broker: off the async threads.
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        tracing::info!(consumer = %self.shared.name, ?stats, "consumer stopped");
        outcome.map(|()| stats)
    }
}

/// Stops the partition workers when `run` is dropped before it finished.
struct StopOnDrop<I: Inbox + 'static>(Arc<Shared<I>>);

impl<I: Inbox + 'static> Drop for StopOnDrop<I> {
    fn drop(&mut self) {
        lock(&self.0.assignments).close();
        for worker in lock(&self.0.workers).drain(..) {
            worker.abort();
        }
    }
}

/// Lets every worker finish the record in hand and waits for them (aborting any still running
/// after a while), gives every partition up, then waits for attempts still in flight to end with
/// their commit or rollback.
async fn stop_workers<I: Inbox + 'static>(shared: &Shared<I>) {
    shared.draining.cancel();
    let workers: Vec<JoinHandle<()>> = lock(&shared.workers).drain(..).collect();
    let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
    if tokio::time::timeout(STOP_TIMEOUT, futures::future::join_all(workers))
        .await
        .is_err()
    {
        tracing::warn!("partition workers did not stop within {STOP_TIMEOUT:?}; aborting them");
        for abort in aborts {
            abort.abort();
        }
    }
    lock(&shared.assignments).close();
    let attempts = shared.in_flight.acquire_many(shared.max_in_flight);
    if tokio::time::timeout(STOP_TIMEOUT, attempts).await.is_err() {
        tracing::warn!("handlers still running after {STOP_TIMEOUT:?}; stopping without them");
    }
}
