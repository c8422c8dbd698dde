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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::relay::error_chain;
use outbox_core::{BoxError, CancellationToken, Inbox, RetryPolicy};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::dead_letter::{self, DeadLetterProducer, DeadLetterReason, Failure, Origin};
use crate::error::Error;
use crate::handler::UnknownTypes;
use crate::handler::{DecodeError, Dispatch, Handler, HandlerFuture, Raw, Route, Router, Typed};
use crate::offsets::{Assignments, Ticket, TopicPartition};
use crate::received::{RawRecord, Received};
use crate::span::handler_span;

/// How long a partition worker waits on its queue before polling it again. librdkafka wakes the
/// worker when records arrive; the poll is a fallback should a wake-up be lost.
const REPOLL: Duration = Duration::from_secs(1);

/// How long shutdown waits for partition workers to stop before aborting them.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of one consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Records whose effect was applied (the inbox had not seen them).
    pub applied: u64,
    /// Redeliveries the inbox recognized; their handler did not run.
    pub duplicates: u64,
    /// Failed attempts (handler errors, and inbox or database failures), each rolled back.
    pub failures: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Failed sends to the dead-letter topic, each retried (the partition waits).
    pub dead_letter_errors: u64,
    /// Records skipped because no handler takes their `ce_type` ([`UnknownTypes::Ignore`]).
    pub ignored: u64,
    /// Inbox rows deleted by the retention purge.
    pub purged: u64,
}

#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_errors: AtomicU64,
    ignored: AtomicU64,
    purged: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ConsumerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConsumerStats {
            applied: get(&self.applied),
            duplicates: get(&self.duplicates),
            failures: get(&self.failures),
            dead_lettered: get(&self.dead_lettered),
            dead_letter_errors: get(&self.dead_letter_errors),
            ignored: get(&self.ignored),
            purged: get(&self.purged),
        }
    }
}

/// Reads a running consumer's counters.
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> ConsumerStats {
        self.0.snapshot()
    }
}

/// How long inbox rows are kept, and how often the runner purges older ones.
///
/// The horizon **must exceed the longest redelivery window**: the topic's retention, or the longest
/// a consumer group may lag behind or be replayed. A message redelivered after its inbox row was
/// purged is applied again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRetention {
    horizon: Duration,
    interval: Duration,
    batch: u32,
}

impl InboxRetention {
    /// Keeps inbox rows for `horizon`; purges every hour in batches of 1,000 rows unless changed.
    pub fn keep(horizon: Duration) -> Self {
        Self {
            horizon,
            interval: Duration::from_secs(3600),
            batch: 1000,
        }
    }

    /// How often to purge. Default one hour; the first purge runs when the consumer starts.
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Rows deleted per statement. Default 1,000.
    pub fn batch(mut self, batch: u32) -> Self {
        self.batch = batch;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.horizon.is_zero() || self.interval.is_zero() || self.batch == 0 {
            return Err(Error::Config(format!(
                "inbox retention needs a horizon, an interval and a batch size above zero (got {:?}, {:?}, {})",
                self.horizon, self.interval, self.batch
            )));
        }
        chrono::Duration::from_std(self.horizon).map_err(|_| {
            Error::Config(format!(
                "inbox retention horizon {:?} is too long",
                self.horizon
            ))
        })?;
        Ok(())
    }
}

/// The purge behind [`InboxRetention`]: deletes rows received before the given time, at most the
/// given number per statement, and returns how many it deleted.
type PurgeFn = Arc<
    dyn Fn(DateTime<Utc>, u32) -> Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>
        + Send
        + Sync,
>;

/// Everything the runner's tasks share.
struct Shared<I: Inbox> {
    inbox: I,
    name: String,
    router: Router<I::Tx>,
    retry: RetryPolicy,
    dead_letters: DeadLetterProducer,
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
    counters: Arc<Counters>,
    assignments: Mutex<Assignments>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Cancelled on shutdown: workers finish the record in hand, take no new one, and cut
    /// backoffs short.
    draining: CancellationToken,
}

/// How the processing of a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Applied, absorbed as a duplicate, skipped or dead-lettered: its offset may be stored.
    Finished,
    /// Given up on shutdown while waiting to retry: its offset must not be stored.
    Interrupted,
}

type KafkaConsumer<I> = StreamConsumer<RunnerContext<I>>;

/// A Kafka consumer-group runner that applies each message once per consumer name through an
/// [`Inbox`], routing records to typed handlers by `ce_type`.
///
/// ```ignore
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
/// let purge = inbox.clone();
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
///     .inbox_retention(InboxRetention::keep(Duration::from_secs(14 * 86_400)), move |before, batch| {
///         let inbox = purge.clone();
///         async move { inbox.purge_older_than(before, batch).await }
///     })
///     .build()?;
/// consumer.run(CancellationToken::new()).await?;
/// # Ok(())
/// # }
/// ```
pub struct InboxConsumer<I: Inbox + 'static> {
    consumer: Arc<KafkaConsumer<I>>,
    shared: Arc<Shared<I>>,
    topics: Vec<String>,
    retention: Option<(InboxRetention, PurgeFn)>,
}

impl<I: Inbox + 'static> std::fmt::Debug for InboxConsumer<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("name", &self.shared.name)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// Builds an [`InboxConsumer`]; see [`InboxConsumer::builder`].
#[must_use = "a builder does nothing until build() is called"]
pub struct InboxConsumerBuilder<I: Inbox + 'static> {
    config: ClientConfig,
    inbox: I,
    name: String,
    topics: Vec<String>,
    router: Router<I::Tx>,
    repeated_types: Vec<String>,
    retry: RetryPolicy,
    dead_letter_topic: String,
    dead_letter_config: Option<ClientConfig>,
    max_in_flight: usize,
    retention: Option<(InboxRetention, PurgeFn)>,
}

impl<I: Inbox + 'static> std::fmt::Debug for InboxConsumerBuilder<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumerBuilder")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl<I: Inbox + 'static> InboxConsumer<I> {
    /// Starts a consumer with `config` (which must name `bootstrap.servers` and `group.id`).
    /// `name` is the consumer name in the inbox: deduplication is per name, so two services reading
    /// the same topic each apply every message once.
    ///
    /// The runner stores offsets itself, only after the database commit, and librdkafka commits
    /// them in the background: `enable.auto.offset.store=false` and `enable.auto.commit=true` are
    /// forced. `auto.offset.reset` defaults to `earliest`. Every other setting passes through
    /// (`auto.commit.interval.ms`, `session.timeout.ms`, `fetch.wait.max.ms`, ...).
    pub fn builder(
        config: &ClientConfig,
        inbox: I,
        name: impl Into<String>,
    ) -> InboxConsumerBuilder<I> {
        InboxConsumerBuilder {
            config: config.clone(),
            inbox,
            name: name.into(),
            topics: Vec::new(),
            router: Router::default(),
            repeated_types: Vec::new(),
            retry: RetryPolicy::default()
                .backoff(Duration::from_millis(100), Duration::from_secs(10))
                .unwrap_or_default(),
            dead_letter_topic: dead_letter::DEFAULT_TOPIC.to_owned(),
            dead_letter_config: None,
            max_in_flight: 8,
            retention: None,
        }
    }

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
    /// [`Error::UnroutedRecord`] if a record arrives for a partition the runner could not give a
    /// queue of its own (its offset is not committed).
    pub async fn run(self, shutdown: CancellationToken) -> Result<ConsumerStats, Error> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        let guard = StopOnDrop(self.shared.clone());
        let purge = self.retention.clone().map(|(retention, purge)| {
            tokio::spawn(purge_loop(
                retention,
                purge,
                self.shared.counters.clone(),
                self.shared.name.clone(),
            ))
        });
        tracing::info!(consumer = %self.shared.name, topics = ?self.topics, "consumer started");
        let outcome = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
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

impl<I: Inbox + 'static> InboxConsumerBuilder<I> {
    /// The topics to subscribe to (at least one).
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Handles records whose `ce_type` is `event_type` with `handler`, their payload decoded as
    /// JSON into `T`. A payload that does not decode (or whose `content-type` is not JSON) goes to
    /// the dead-letter topic at once, with reason `undecodable`.
    ///
    /// The handler runs in the inbox transaction; an error rolls it back and the record is tried
    /// again after a backoff, up to the configured attempts ([`retry`](Self::retry)).
    pub fn on<T, F>(mut self, event_type: impl Into<String>, handler: F) -> Self
    where
        T: DeserializeOwned + 'static,
        F: for<'a> Fn(&'a mut I::Tx, T, &'a Received) -> HandlerFuture<'a> + Send + Sync + 'static,
    {
        let event_type = event_type.into();
        if !self
            .router
            .on(event_type.clone(), Box::new(Typed::<T, F>::new(handler)))
        {
            self.repeated_types.push(event_type);
        }
        self
    }

    /// Handles every record no typed handler takes (whatever its `ce_type`, or none) with a raw
    /// handler: bytes and headers, no decoding. See [`handler_fn`](crate::handler_fn).
    pub fn raw<H: Handler<I::Tx> + 'static>(mut self, handler: H) -> Self {
        self.router.raw(Box::new(Raw(handler)));
        self
    }

    /// What to do with records nothing handles. Default [`UnknownTypes::Ignore`].
    pub fn unknown_types(mut self, unknown: UnknownTypes) -> Self {
        self.router.unknown(unknown);
        self
    }

    /// Attempts before a failing record goes to the dead-letter topic, and the backoff between
    /// them. Default 10 attempts, backoff from 100 ms doubling to 10 s, with jitter. Failures of
    /// the inbox itself (the database) are retried without counting.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The dead-letter topic; `{topic}` stands for the record's topic. Default `{topic}.dlq`.
    /// Create it beforehand: while it cannot be written, the partition waits and retries.
    pub fn dead_letter_topic(mut self, template: impl Into<String>) -> Self {
        self.dead_letter_topic = template.into();
        self
    }

    /// Producer settings for the dead-letter topic. Default: the consumer's settings without the
    /// consumer-only ones, with `acks=all` and the idempotent producer.
    pub fn dead_letter_producer(mut self, config: ClientConfig) -> Self {
        self.dead_letter_config = Some(config);
        self
    }

    /// Handlers running at once, over all partitions (at least 1). Default 8. Each holds a
    /// database connection while it runs, so keep it at or below the pool size.
    pub fn max_in_flight(mut self, handlers: usize) -> Self {
        self.max_in_flight = handlers;
        self
    }

    /// Purges inbox rows older than the retention's horizon, in batches, at its interval, with
    /// `purge` (for PostgreSQL, `PgInbox::purge_older_than`). Off unless set.
    pub fn inbox_retention<F, Fut, E>(mut self, retention: InboxRetention, purge: F) -> Self
    where
        F: Fn(DateTime<Utc>, u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u64, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let purge: PurgeFn = Arc::new(move |before, batch| {
            let purging = purge(before, batch);
            Box::pin(async move { purging.await.map_err(Into::into) })
        });
        self.retention = Some((retention, purge));
        self
    }

    /// Creates the Kafka consumer and the dead-letter producer.
    ///
    /// # Errors
    /// [`Error::Config`] when no topic or no handler is given, a type is declared twice, there is
    /// no `group.id`, or a setting is out of range; [`Error::Kafka`] when librdkafka refuses the
    /// configuration.
    pub fn build(self) -> Result<InboxConsumer<I>, Error> {
        let config_error = |message: String| Err(Error::Config(message));
        if self.topics.is_empty() {
            return config_error("no topic to consume".into());
        }
        if self.router.is_empty() {
            return config_error(
                "no handler: declare event types with on(), or a raw() handler".into(),
            );
        }
        if let Some(repeated) = self.repeated_types.first() {
            return config_error(format!("event type `{repeated}` has two handlers"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > Semaphore::MAX_PERMITS.min(1 << 20) {
            return config_error(format!("max_in_flight must be between 1 and {}", 1 << 20));
        }
        if self.name.is_empty() {
            return config_error("the consumer name is empty".into());
        }
        let Some(group) = self.config.get("group.id").map(str::to_owned) else {
            return config_error("the consumer configuration has no group.id".into());
        };
        for topic in &self.topics {
            let target = dead_letter::topic_for(&self.dead_letter_topic, topic);
            outbox_core::message::validate_topic(&target).map_err(|e| {
                Error::Config(format!("dead-letter topic `{target}` for `{topic}`: {e}"))
            })?;
            if &target == topic {
                return config_error(format!(
                    "the dead-letter topic of `{topic}` is `{topic}` itself"
                ));
            }
        }
        if let Some((retention, _)) = &self.retention {
            retention.validate()?;
        }

        let mut config = self.config;
        config
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true");
        if config.get("auto.offset.reset").is_none() {
            config.set("auto.offset.reset", "earliest");
        }
        let producer_config = self
            .dead_letter_config
            .unwrap_or_else(|| dead_letter::producer_config(&config));
        let origin = Origin {
            consumer: self.name.clone(),
            group,
        };
        let dead_letters =
            DeadLetterProducer::new(&producer_config, self.dead_letter_topic, origin)?;
        let shared = Arc::new(Shared {
            inbox: self.inbox,
            name: self.name,
            router: self.router,
            retry: self.retry,
            dead_letters,
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            max_in_flight: u32::try_from(self.max_in_flight).unwrap_or(u32::MAX),
            counters: Arc::default(),
            assignments: Mutex::default(),
            workers: Mutex::default(),
            draining: CancellationToken::new(),
        });
        let context = RunnerContext {
            shared: shared.clone(),
            consumer: OnceLock::new(),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| Error::Config("build the consumer inside a Tokio runtime".into()))?,
        };
        let consumer: Arc<KafkaConsumer<I>> = Arc::new(config.create_with_context(context)?);
        // The rebalance callbacks only get the base consumer; they need the stream consumer to
        // split partition queues.
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        Ok(InboxConsumer {
            consumer,
            shared,
            topics: self.topics,
            retention: self.retention,
        })
    }
}

/// Locks a mutex, ignoring poisoning (the data stays consistent: every critical section is a few
/// map operations).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

/// The consumer's context: splits each assigned partition onto a queue and task of its own, and
/// stops the task when the partition is revoked.
struct RunnerContext<I: Inbox + 'static> {
    shared: Arc<Shared<I>>,
    consumer: OnceLock<Weak<KafkaConsumer<I>>>,
    runtime: tokio::runtime::Handle,
}

impl<I: Inbox + 'static> ClientContext for RunnerContext<I> {}

impl<I: Inbox + 'static> ConsumerContext for RunnerContext<I> {
    // Runs before librdkafka applies the assignment: a partition queue split now is never
    // forwarded to the consumer's main queue, so no record of it can arrive there.
    fn pre_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) if partitions.count() > 0 => self.assign(partitions),
            Rebalance::Revoke(partitions) if partitions.count() > 0 => self.revoke(partitions),
            Rebalance::Assign(_) | Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(consumer = %self.shared.name, %error, "consumer group rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Error(_)) {
            let owned = lock(&self.shared.assignments).owned();
            let owned: Vec<String> = owned.iter().map(ToString::to_string).collect();
            tracing::info!(consumer = %self.shared.name, partitions = ?owned, "partitions rebalanced");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(consumer = %self.shared.name, ?offsets, "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(
                consumer = %self.shared.name,
                %error,
                "committing offsets failed; the next commit carries them, or the records are redelivered"
            ),
        }
    }
}

impl<I: Inbox + 'static> RunnerContext<I> {
    fn assign(&self, partitions: &TopicPartitionList) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        for element in partitions.elements() {
            let partition = TopicPartition::new(element.topic(), element.partition());
            let Some(ticket) = lock(&self.shared.assignments).assign(partition.clone()) else {
                return;
            };
            let Some(queue) = consumer.split_partition_queue(&partition.topic, partition.partition)
            else {
                tracing::error!(%partition, "cannot give the partition a queue of its own");
                lock(&self.shared.assignments).revoke(&partition);
                continue;
            };
            let worker = self.runtime.spawn(run_partition(
                self.shared.clone(),
                consumer.clone(),
                queue,
                partition,
                ticket,
            ));
            let mut workers = lock(&self.shared.workers);
            workers.retain(|worker| !worker.is_finished());
            workers.push(worker);
        }
    }

    fn revoke(&self, partitions: &TopicPartitionList) {
        let mut assignments = lock(&self.shared.assignments);
        for element in partitions.elements() {
            assignments.revoke(&TopicPartition::new(element.topic(), element.partition()));
        }
    }
}

/// One partition's worker: reads its queue and processes one record at a time, until revoked.
async fn run_partition<I: Inbox + 'static>(
    shared: Arc<Shared<I>>,
    consumer: Arc<KafkaConsumer<I>>,
    queue: StreamPartitionQueue<RunnerContext<I>>,
    partition: TopicPartition,
    ticket: Ticket,
) {
    tracing::debug!(%partition, generation = ticket.generation, "partition worker started");
    loop {
        let next = tokio::select! {
            biased;
            () = ticket.stop.cancelled() => break,
            () = shared.draining.cancelled() => break,
            next = tokio::time::timeout(REPOLL, queue.recv()) => next,
        };
        let record = match next {
            Err(_idle) => continue,
            Ok(Ok(message)) => RawRecord::from_message(&message),
            Ok(Err(error)) => {
                tracing::warn!(%partition, %error, "reading the partition failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let offset = record.offset;
        if !lock(&shared.assignments).start(&partition, ticket.generation, offset) {
            break;
        }
        // A revoked partition stops waiting for the record in hand (an attempt already running
        // still ends with its commit or rollback); the partition's next owner gets it again.
        let outcome = tokio::select! {
            biased;
            () = ticket.stop.cancelled() => Outcome::Interrupted,
            outcome = shared.process(&record) => outcome,
        };
        let mut assignments = lock(&shared.assignments);
        if outcome == Outcome::Interrupted {
            assignments.abandon(&partition, ticket.generation, offset);
            break;
        }
        if let Some(next) = assignments.finish(&partition, ticket.generation, offset) {
            let mut offsets = TopicPartitionList::new();
            let stored = offsets
                .add_partition_offset(&partition.topic, partition.partition, Offset::Offset(next))
                .and_then(|()| consumer.store_offsets(&offsets));
            if let Err(error) = stored {
                tracing::warn!(%partition, offset, %error, "storing the offset failed; the record may be redelivered");
            }
        }
    }
    tracing::debug!(%partition, generation = ticket.generation, "partition worker stopped");
}

/// How one attempt at a record ended.
enum Attempt {
    Applied,
    Duplicate,
    Undecodable(String),
    HandlerFailed(BoxError),
    InboxFailed(BoxError),
}

impl<I: Inbox + 'static> Shared<I> {
    /// Takes a record to its end: applied, absorbed as a duplicate, skipped or dead-lettered.
    /// Retries for as long as it takes, unless the runner shuts down meanwhile; the caller drops
    /// the future to give up (revocation).
    async fn process(self: &Arc<Self>, record: &RawRecord) -> Outcome {
        let received = match record.decode() {
            Ok(received) => received,
            Err(error) => {
                let failure = Failure {
                    reason: DeadLetterReason::Undecodable,
                    error: error_chain(&error),
                    attempts: 0,
                };
                return self.dead_letter(record, None, failure).await;
            }
        };
        match self.router.route(received.event_type.as_deref()) {
            Route::Ignore => {
                Counters::add(&self.counters.ignored, 1);
                tracing::debug!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    ce_id = %received.id,
                    ce_type = received.event_type.as_deref().unwrap_or(""),
                    "no handler for this event type; skipped"
                );
                Outcome::Finished
            }
            Route::DeadLetter => {
                let failure = Failure {
                    reason: DeadLetterReason::UnknownType,
                    error: format!(
                        "no handler for ce_type `{}`",
                        received.event_type.as_deref().unwrap_or("")
                    ),
                    attempts: 0,
                };
                self.dead_letter(record, Some(&received), failure).await
            }
            Route::Handle => {
                let span = handler_span(&received);
                self.apply(record, Arc::new(received))
                    .instrument(span)
                    .await
            }
        }
    }

    /// Runs the handler until it succeeds, the inbox says it is a duplicate, or the attempts are
    /// spent (then the record is dead-lettered).
    async fn apply(self: &Arc<Self>, record: &RawRecord, received: Arc<Received>) -> Outcome {
        let received = &received;
        let mut failed = 0;
        let mut outages = 0;
        loop {
            let attempt = self.attempt_to_the_end(received).await;
            let delay = match attempt {
                Attempt::Applied => return Outcome::Finished,
                Attempt::Duplicate => {
                    tracing::debug!(consumer = %self.name, "duplicate delivery absorbed by the inbox");
                    return Outcome::Finished;
                }
                Attempt::Undecodable(reason) => {
                    let failure = Failure {
                        reason: DeadLetterReason::Undecodable,
                        error: reason,
                        attempts: 0,
                    };
                    return self
                        .dead_letter(record, Some(received.as_ref()), failure)
                        .await;
                }
                Attempt::HandlerFailed(error) => {
                    failed = u32::saturating_add(failed, 1);
                    let error = error_chain(&*error);
                    if failed >= self.retry.attempts() {
                        let failure = Failure {
                            reason: DeadLetterReason::HandlerFailed,
                            error,
                            attempts: failed,
                        };
                        return self
                            .dead_letter(record, Some(received.as_ref()), failure)
                            .await;
                    }
                    let delay = self.retry.delay_after(failed);
                    tracing::warn!(consumer = %self.name, attempts = failed, ?delay, %error, "handler failed; rolled back, will retry");
                    delay
                }
                Attempt::InboxFailed(error) => {
                    outages = u32::saturating_add(outages, 1);
                    let delay = self.retry.delay_after(outages);
                    tracing::warn!(consumer = %self.name, ?delay, error = %error_chain(&*error), "the inbox failed; rolled back, will retry");
                    delay
                }
            };
            if !self.pause(delay).await {
                return Outcome::Interrupted;
            }
        }
    }

    /// Waits `delay`; `false` when the runner started shutting down meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.draining.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// One attempt on a task of its own, holding a permit: a worker that stops (its partition
    /// revoked, the runner shutting down) stops waiting for it, but the attempt itself is never cut
    /// short in the middle of its transaction. It ends with a commit or a rollback; its offset is
    /// not stored (the partition's next owner gets the record, and the inbox absorbs it if it was
    /// applied). A handler that panics counts as a failed attempt.
    async fn attempt_to_the_end(self: &Arc<Self>, received: &Arc<Received>) -> Attempt {
        let permit = match self.in_flight.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(closed) => return Attempt::InboxFailed(Box::new(closed)),
        };
        let shared = self.clone();
        let received = received.clone();
        let attempt = tokio::spawn(
            async move {
                let _permit = permit;
                match shared.router.handler(received.event_type.as_deref()) {
                    Some(handler) => shared.attempt(handler, &received).await,
                    None => Attempt::Undecodable("no handler for its type".into()),
                }
            }
            .in_current_span(),
        );
        match attempt.await {
            Ok(attempt) => attempt,
            Err(error) => {
                Counters::add(&self.counters.failures, 1);
                Attempt::HandlerFailed(format!("the handler panicked: {error}").into())
            }
        }
    }

    /// One transaction: inbox row, handler, commit; counted here, as it ends, whether or not a
    /// worker still waits for it.
    async fn attempt(&self, handler: &dyn Dispatch<I::Tx>, received: &Received) -> Attempt {
        let attempt = self.transaction(handler, received).await;
        let counter = match attempt {
            Attempt::Applied => &self.counters.applied,
            Attempt::Duplicate => &self.counters.duplicates,
            Attempt::HandlerFailed(_) | Attempt::InboxFailed(_) => &self.counters.failures,
            Attempt::Undecodable(_) => return attempt,
        };
        Counters::add(counter, 1);
        attempt
    }

    async fn transaction(&self, handler: &dyn Dispatch<I::Tx>, received: &Received) -> Attempt {
        let mut tx = match self.inbox.begin().await {
            Ok(tx) => tx,
            Err(error) => return Attempt::InboxFailed(Box::new(error)),
        };
        match self.inbox.record(&mut tx, &self.name, received.id).await {
            Ok(true) => {}
            Ok(false) => {
                self.rollback(tx).await;
                return Attempt::Duplicate;
            }
            Err(error) => {
                self.rollback(tx).await;
                return Attempt::InboxFailed(Box::new(error));
            }
        }
        let outcome = match handler.dispatch(&mut tx, received) {
            Ok(handling) => Ok(handling.await),
            Err(DecodeError(reason)) => Err(reason),
        };
        match outcome {
            Ok(Ok(())) => match self.inbox.commit(tx).await {
                Ok(()) => Attempt::Applied,
                Err(error) => Attempt::InboxFailed(Box::new(error)),
            },
            Ok(Err(error)) => {
                self.rollback(tx).await;
                Attempt::HandlerFailed(error)
            }
            Err(reason) => {
                self.rollback(tx).await;
                Attempt::Undecodable(reason)
            }
        }
    }

    async fn rollback(&self, tx: I::Tx) {
        if let Err(error) = self.inbox.rollback(tx).await {
            tracing::warn!(%error, "rollback failed; the server discards the transaction");
        }
    }

    /// Sends the record to the dead-letter topic, retrying until the broker acknowledges it: the
    /// partition does not move past a record that is neither applied nor dead-lettered.
    async fn dead_letter(
        &self,
        record: &RawRecord,
        received: Option<&Received>,
        failure: Failure,
    ) -> Outcome {
        let target = self.dead_letters.topic(&record.topic);
        let ce_id = received.map(|r| r.id.to_string()).unwrap_or_default();
        let mut failed = 0;
        loop {
            match self.dead_letters.send(record, &failure).await {
                Ok((dlq_partition, dlq_offset)) => {
                    Counters::add(&self.counters.dead_lettered, 1);
                    macro_rules! dead_lettered {
                        ($level:ident) => {
                            tracing::$level!(
                                consumer = %self.name,
                                topic = %record.topic,
                                partition = record.partition,
                                offset = record.offset,
                                ce_id,
                                reason = %failure.reason,
                                attempts = failure.attempts,
                                error = %failure.error,
                                dead_letter_topic = %target,
                                dlq_partition,
                                dlq_offset,
                                "record sent to the dead-letter topic; the partition moves on"
                            )
                        };
                    }
                    match failure.reason {
                        DeadLetterReason::UnknownType => dead_lettered!(warn),
                        _ => dead_lettered!(error),
                    }
                    return Outcome::Finished;
                }
                Err(error) => {
                    failed = u32::saturating_add(failed, 1);
                    Counters::add(&self.counters.dead_letter_errors, 1);
                    let delay = self.retry.delay_after(failed);
                    tracing::error!(
                        consumer = %self.name,
                        topic = %record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        dead_letter_topic = %target,
                        %error,
                        ?delay,
                        "sending to the dead-letter topic failed; the partition waits and retries"
                    );
                    if !self.pause(delay).await {
                        return Outcome::Interrupted;
                    }
                }
            }
        }
    }
}

/// Purges the inbox at the retention's interval until aborted.
async fn purge_loop(
    retention: InboxRetention,
    purge: PurgeFn,
    counters: Arc<Counters>,
    name: String,
) {
    let horizon = chrono::Duration::from_std(retention.horizon).unwrap_or(chrono::Duration::MAX);
    loop {
        let before = Utc::now() - horizon;
        match purge(before, retention.batch).await {
            Ok(purged) => {
                Counters::add(&counters.purged, purged);
                if purged > 0 {
                    tracing::info!(consumer = %name, purged, %before, "purged inbox rows past the retention horizon");
                }
            }
            Err(error) => {
                tracing::warn!(consumer = %name, error = %error_chain(&*error), "purging the inbox failed; trying again at the next interval");
            }
        }
        tokio::time::sleep(retention.interval).await;
    }
}
