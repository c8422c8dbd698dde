//! The inbox-backed consumer: each record's effect is applied once per consumer name.
//!
//! For every record: open a database transaction, record (consumer name, `ce_id`) in the inbox, run
//! the handler in that same transaction only if the id is new, commit, and only then store the
//! record's offset for the next Kafka commit. A crash before the database commit leaves neither the
//! effect nor the inbox row; a crash after it but before the offset commit leads to a redelivery that
//! the inbox absorbs. A handler error rolls the transaction back (inbox row included) and the same
//! record is tried again after a backoff; the partition does not move past it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use outbox_core::headers::{CE_ID, CE_SOURCE, CE_TIME, CE_TYPE, CONTENT_TYPE};
use outbox_core::{BoxError, CancellationToken, Inbox, RetryPolicy};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use uuid::Uuid;

use crate::error::Error;

/// A consumed record, decoded from the CloudEvents headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message id (`ce_id`).
    pub id: Uuid,
    /// The topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub payload: Vec<u8>,
    /// `ce_type`.
    pub event_type: Option<String>,
    /// `ce_source`.
    pub source: Option<String>,
    /// `ce_time`.
    pub time: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// Every other header (user headers, `traceparent`, `tracestate`), as text.
    pub headers: BTreeMap<String, String>,
}

impl Received {
    /// Decodes a record.
    ///
    /// # Errors
    /// [`Error::UndecodableRecord`] when it has no `ce_id` header holding a UUID.
    pub fn from_record(record: &BorrowedMessage<'_>) -> Result<Self, Error> {
        let undecodable = |reason: String| Error::UndecodableRecord {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
            reason,
        };
        let mut id = None;
        let mut received = Received {
            id: Uuid::nil(),
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
            key: record.key().map(<[u8]>::to_vec),
            payload: record.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            event_type: None,
            source: None,
            time: None,
            content_type: None,
            headers: BTreeMap::new(),
        };
        if let Some(headers) = record.headers() {
            for header in headers.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                match header.key {
                    CE_ID => id = Some(value),
                    CE_TYPE => received.event_type = Some(value),
                    CE_SOURCE => received.source = Some(value),
                    CE_TIME => received.time = Some(value),
                    CONTENT_TYPE => received.content_type = Some(value),
                    _ => {
                        received.headers.insert(header.key.to_owned(), value);
                    }
                }
            }
        }
        let id = id.ok_or_else(|| undecodable("no ce_id header".into()))?;
        received.id = Uuid::parse_str(&id)
            .map_err(|e| undecodable(format!("ce_id `{id}` is not a UUID: {e}")))?;
        Ok(received)
    }

    /// The payload, decoded as JSON.
    ///
    /// # Errors
    /// The JSON error when the payload does not decode as `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// A boxed future borrowing the transaction and the record, as handlers return.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// Applies a record's effect through the inbox transaction.
///
/// Closures of the shape `|tx, received| Box::pin(async move { ... })` implement it.
pub trait Handler<Tx>: Send + Sync {
    /// Applies `received` through `tx`. An error rolls back the transaction and the record is tried
    /// again later.
    fn handle<'a>(&'a self, tx: &'a mut Tx, received: &'a Received) -> HandlerFuture<'a>;
}

impl<Tx, F> Handler<Tx> for F
where
    F: for<'a> Fn(&'a mut Tx, &'a Received) -> HandlerFuture<'a> + Send + Sync,
{
    fn handle<'a>(&'a self, tx: &'a mut Tx, received: &'a Received) -> HandlerFuture<'a> {
        self(tx, received)
    }
}

/// Turns a closure into a [`Handler`], letting the compiler infer the borrowed signature:
///
/// ```
/// # use outbox_kafka::{handler_fn, Received};
/// # struct Tx;
/// let applied = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
/// let handler = handler_fn(move |_tx: &mut Tx, received: &Received| {
///     let applied = applied.clone();
///     let id = received.id;
///     Box::pin(async move {
///         applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         println!("applied {id}");
///         Ok(())
///     })
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<Tx, F>(f: F) -> F
where
    F: for<'a> Fn(&'a mut Tx, &'a Received) -> HandlerFuture<'a> + Send + Sync,
{
    f
}

/// Counters of one consumer run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Records whose effect was applied (first delivery).
    pub applied: u64,
    /// Redeliveries the inbox recognized; their handler did not run.
    pub duplicates: u64,
    /// Handler or database failures, each followed by a retry of the same record.
    pub failures: u64,
}

/// A Kafka consumer that applies each message once per consumer name through an [`Inbox`].
pub struct InboxConsumer<I> {
    consumer: StreamConsumer,
    inbox: I,
    name: String,
    retry: RetryPolicy,
}

impl<I> std::fmt::Debug for InboxConsumer<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<I: Inbox> InboxConsumer<I> {
    /// Subscribes to `topics` with `config` (which must name `bootstrap.servers` and `group.id`).
    /// `name` is the consumer name in the inbox: deduplication is per name, so two services reading
    /// the same topic each apply every message once.
    ///
    /// Offsets are stored only after the database commit and committed in the background
    /// (`enable.auto.offset.store=false`); those two settings are forced.
    ///
    /// # Errors
    /// [`Error::Kafka`] when the consumer cannot be created or subscribed.
    pub fn new(
        config: &ClientConfig,
        topics: &[&str],
        inbox: I,
        name: impl Into<String>,
    ) -> Result<Self, Error> {
        let mut config = config.clone();
        config
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true");
        if config.get("auto.offset.reset").is_none() {
            config.set("auto.offset.reset", "earliest");
        }
        let consumer: StreamConsumer = config.create()?;
        consumer.subscribe(topics)?;
        let retry = RetryPolicy::default()
            .backoff(Duration::from_millis(100), Duration::from_secs(10))
            .unwrap_or_default();
        Ok(Self {
            consumer,
            inbox,
            name: name.into(),
            retry,
        })
    }

    /// Backoff between attempts at a failing record. Default 100 ms doubling to 10 s, with jitter.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Consumes until `shutdown` is cancelled, then commits the stored offsets.
    ///
    /// # Errors
    /// [`Error::UndecodableRecord`] for a record without a usable `ce_id` (nothing after it is
    /// consumed, and its offset is not committed), [`Error::Kafka`] when the consumer fails.
    pub async fn run<H: Handler<I::Tx>>(
        &self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<ConsumerStats, Error> {
        let mut stats = ConsumerStats::default();
        let outcome = loop {
            let record = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                record = self.consumer.recv() => record,
            };
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    continue;
                }
            };
            let received = match Received::from_record(&record) {
                Ok(received) => received,
                Err(error) => break Err(error),
            };
            if !self.apply(&handler, &received, &shutdown, &mut stats).await {
                break Ok(());
            }
            self.consumer.store_offset_from_message(&record)?;
        };
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored yet, or the group is rebalancing: the records are simply redelivered.
            tracing::debug!(%error, "final offset commit did not happen");
        }
        outcome.map(|()| stats)
    }

    /// Applies one record, retrying until it succeeds; `false` when shut down before it did.
    async fn apply<H: Handler<I::Tx>>(
        &self,
        handler: &H,
        received: &Received,
        shutdown: &CancellationToken,
        stats: &mut ConsumerStats,
    ) -> bool {
        let mut failed = 0;
        loop {
            match self.attempt(handler, received).await {
                Ok(true) => {
                    stats.applied += 1;
                    return true;
                }
                Ok(false) => {
                    stats.duplicates += 1;
                    tracing::info!(consumer = %self.name, id = %received.id, "duplicate delivery absorbed by the inbox");
                    return true;
                }
                Err(error) => {
                    failed += 1;
                    stats.failures += 1;
                    let delay = self.retry.delay_after(failed);
                    tracing::warn!(consumer = %self.name, id = %received.id, attempts = failed, ?delay, error = %outbox_core::relay::error_chain(&*error), "handler failed; rolled back, will retry");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One transaction: inbox row, handler, commit. `Ok(false)` for a duplicate.
    async fn attempt<H: Handler<I::Tx>>(
        &self,
        handler: &H,
        received: &Received,
    ) -> Result<bool, BoxError> {
        let mut tx = self.inbox.begin().await?;
        if !self.inbox.record(&mut tx, &self.name, received.id).await? {
            self.inbox.rollback(tx).await?;
            return Ok(false);
        }
        if let Err(error) = handler.handle(&mut tx, received).await {
            if let Err(rollback) = self.inbox.rollback(tx).await {
                tracing::warn!(error = %rollback, "rollback failed; the server discards the transaction");
            }
            return Err(error);
        }
        self.inbox.commit(tx).await?;
        Ok(true)
    }
}
