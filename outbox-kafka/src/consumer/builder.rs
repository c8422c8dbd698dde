use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use outbox_core::{CancellationToken, Inbox, RetryPolicy};
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::client_errors::ClientErrors;
use crate::dead_letter::{self, DeadLetterProducer, Origin};

/// The default of [`InboxConsumerBuilder::handler_timeout`].
const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(60);
use crate::error::Error;
use crate::handler::{Handler, HandlerFuture, Raw, Router, Typed, UnknownTypes};
use crate::received::Received;

use super::rebalance::RunnerContext;
use super::retention::InboxRetention;
use super::{InboxConsumer, KafkaConsumer, Shared};

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
    handler_timeout: Duration,
    dead_letter_topic: String,
    dead_letter_config: Option<ClientConfig>,
    max_in_flight: usize,
    retention: Option<InboxRetention>,
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
    /// forced. `auto.offset.reset` defaults to `earliest` and `partition.assignment.strategy` to
    /// `cooperative-sticky` (incremental rebalancing; every member of a group must use the same
    /// kind of strategy, so set it explicitly to join a group of eager members). Every other
    /// setting passes through
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
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            retention: None,
        }
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
    /// consumer-only ones. Either way the producer is idempotent with `acks=all` and a keyed
    /// partitioner; [`build`](Self::build) refuses settings that would weaken them.
    pub fn dead_letter_producer(mut self, config: ClientConfig) -> Self {
        self.dead_letter_config = Some(config);
        self
    }

    /// How long one attempt of a handler may take. Default 60 s. An attempt that takes longer is
    /// cut off: its future is dropped, its transaction rolled back (the connection goes back to the
    /// pool), and it counts as a failed attempt ([`ConsumerStats::timeouts`](crate::ConsumerStats::timeouts)),
    /// retried and in the end dead-lettered like a handler error. A hung handler would otherwise
    /// stall its partition for good with a connection held.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Handlers running at once, over all partitions (at least 1). Default 8. Each holds a
    /// database connection while it runs, so keep it at or below the pool size.
    pub fn max_in_flight(mut self, handlers: usize) -> Self {
        self.max_in_flight = handlers;
        self
    }

    /// Purges this consumer's inbox rows older than the retention's period, in batches, at its
    /// interval ([`Inbox::purge`]); other consumer names' rows are theirs to purge. Off unless set.
    pub fn inbox_retention(mut self, retention: InboxRetention) -> Self {
        self.retention = Some(retention);
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
        if self.handler_timeout.is_zero() {
            return config_error("the handler timeout must be above zero".into());
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
        if let Some(retention) = &self.retention {
            retention.validate()?;
        }

        let mut config = self.config;
        config
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true");
        if config.get("auto.offset.reset").is_none() {
            config.set("auto.offset.reset", "earliest");
        }
        // Incremental rebalancing: a member joining or leaving moves only the partitions that
        // change owner; the others keep flowing. Every member of a group must use the same kind
        // of strategy, so a group that runs an eager one today sets it here explicitly.
        if config.get("partition.assignment.strategy").is_none() {
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        let producer_config = match &self.dead_letter_config {
            Some(custom) => dead_letter::custom_producer_config(custom)?,
            None => dead_letter::producer_config(&config)?,
        };
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
            handler_timeout: self.handler_timeout,
            dead_letters,
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            max_in_flight: u32::try_from(self.max_in_flight).unwrap_or(u32::MAX),
            counters: Arc::default(),
            assignments: Mutex::default(),
            workers: Mutex::default(),
            draining: CancellationToken::new(),
            errors: ClientErrors::default(),
            brokers: config
                .get("bootstrap.servers")
                .unwrap_or_default()
                .to_owned(),
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
