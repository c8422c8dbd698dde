//! The Kafka publisher: an idempotent producer that takes whole lane windows and acknowledges
//! them later.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use futures::future::join_all;
use outbox_core::{
    Acknowledgements, Fence, PublishError, PublishErrorKind, Publisher, StoredMessage,
};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::client_errors::ClientErrors;
use crate::error::{Error, classify};
use crate::producer_config;
use crate::producer_context::ProducerContext;
use crate::record;
use crate::topic_route::TopicRoute;

/// Publishes outbox messages to Kafka with `enable.idempotence=true` and `acks=all`.
///
/// The user's [`ClientConfig`] passes through; settings that would weaken the guarantee are refused
/// (see [`KafkaPublisher::new`]). Records follow the
/// CloudEvents Kafka binding (see [`crate::record`]).
pub struct KafkaPublisher {
    producer: ProducerSlot,
    brokers: String,
    route: TopicRoute,
    send_timeout: Duration,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

/// The relay's producer: its context watches the topics' partition counts and keeps the client's
/// errors.
pub type Producer = FutureProducer<ProducerContext>;

/// The producer in use, replaced after a fatal error, and the configuration to make a new one from.
#[derive(Clone)]
struct ProducerSlot {
    producer: Arc<std::sync::RwLock<Producer>>,
    config: Arc<ClientConfig>,
    errors: Arc<ClientErrors>,
}

impl ProducerSlot {
    fn get(&self) -> Producer {
        outbox_core::sync::read(&self.producer).clone()
    }

    /// Replaces `failed` with a fresh producer if it raised a fatal error (and nobody replaced it
    /// yet): an idempotent producer that hit one (a sequence or epoch it cannot recover from) fails
    /// every later send until it is recreated. Nothing is lost: the failed messages are retried.
    /// (After a delivery timeout librdkafka bumps the producer epoch itself and goes on.)
    fn renew_after_fatal_error(&self, failed: &Producer) {
        let Some(fatal) = failed.client().fatal_error() else {
            return;
        };
        let mut current = outbox_core::sync::write(&self.producer);
        if current.client().native_ptr() != failed.client().native_ptr() {
            return;
        }
        match self
            .config
            .create_with_context(ProducerContext::reporting_to(self.errors.clone()))
        {
            Ok(fresh) => {
                tracing::warn!(?fatal, "replacing the Kafka producer after a fatal error");
                *current = fresh;
            }
            Err(error) => {
                tracing::error!(%error, "could not create a fresh Kafka producer; keeping the old one")
            }
        }
    }
}

impl KafkaPublisher {
    /// Creates the producer from `config` (which must name `bootstrap.servers`).
    ///
    /// # Errors
    /// [`Error::UnsafeConfig`] for settings that break at-least-once or ordering
    /// (`enable.idempotence=false`, `acks` other than `all`, under either of its names, or the
    /// `random` partitioner), [`Error::Config`] for a send timeout of 0 or aliases that disagree,
    /// [`Error::Kafka`] when librdkafka rejects the configuration.
    pub fn new(config: &ClientConfig) -> Result<Self, Error> {
        let (config, send_timeout) = producer_config::prepare(config)?;
        let errors = Arc::new(ClientErrors::default());
        let brokers = config
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            producer: ProducerSlot {
                producer: Arc::new(std::sync::RwLock::new(
                    config.create_with_context(ProducerContext::reporting_to(errors.clone()))?,
                )),
                config: Arc::new(config),
                errors,
            },
            brokers,
            route: TopicRoute::default(),
            send_timeout,
        })
    }

    /// Publishes to the topics `route` names instead of each message's own topic.
    #[must_use]
    pub fn with_topic_route(mut self, route: TopicRoute) -> Self {
        self.route = route;
        self
    }

    /// Waits until a broker answers a metadata request.
    ///
    /// # Errors
    /// [`Error::Refused`] as soon as the brokers refuse the client (its credentials, its TLS
    /// handshake, its SASL mechanism): retrying would not help. [`Error::Unreachable`] naming the
    /// brokers and the client's last error when none answered within `timeout`.
    pub async fn check_reachable(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let producer = self.producer();
            // Short requests, so that a refusal reported meanwhile ends the wait.
            let slice = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(500));
            let result = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(None, slice).map(|_| ())
            })
            .await
            .unwrap_or_else(|_| Err(KafkaError::Canceled));
            let source = match result {
                Ok(()) => return Ok(()),
                Err(source) => source,
            };
            let errors = &self.producer.errors;
            if let Some(reason) = errors.refusal() {
                return Err(Error::Refused {
                    brokers: self.brokers.clone(),
                    reason,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unreachable {
                    brokers: self.brokers.clone(),
                    timeout,
                    last_error: errors
                        .last_error()
                        .unwrap_or_else(|| "none reported".to_owned()),
                    source: Box::new(source),
                });
            }
        }
    }

    /// Waits for everything queued to be sent (used on shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer().flush(timeout) {
            tracing::warn!(%error, "flushing the producer did not finish");
        }
    }

    /// The producer in use (a cheap handle).
    pub fn producer(&self) -> Producer {
        self.producer.get()
    }
}

impl Publisher for KafkaPublisher {
    async fn send(&self, messages: &[StoredMessage], fence: &Fence) -> Acknowledgements {
        let producer = self.producer();
        let mut queued = Vec::with_capacity(messages.len());
        // Once the fence has been seen expired nothing more of the window goes out, even if a late
        // heartbeat reopens it: a hole in the middle of a lane would reorder it.
        let mut fenced = false;
        for stored in messages {
            fenced = fenced || !fence.is_valid();
            if fenced {
                queued.push(Err(fenced_error()));
                continue;
            }
            let handed = self.enqueue(&producer, stored, fence).await;
            fenced = matches!(&handed, Err(error) if error.kind() == PublishErrorKind::Fenced);
            queued.push(handed);
        }
        let slot = self.producer.clone();
        async move {
            let outcomes = join_all(queued.into_iter().map(|queued| async move {
                let future = queued?;
                match future.await {
                    Ok(Ok(_delivery)) => Ok(()),
                    Ok(Err((error, _message))) => Err(PublishError::new(classify(&error), error)),
                    Err(_canceled) => Err(PublishError::new(
                        PublishErrorKind::Unavailable,
                        KafkaError::Canceled,
                    )),
                }
            }))
            .await;
            slot.renew_after_fatal_error(&producer);
            outcomes
        }
        .boxed()
    }

    fn send_timeout(&self) -> Option<Duration> {
        Some(self.send_timeout)
    }
}

fn fenced_error() -> PublishError {
    PublishError::new(
        PublishErrorKind::Fenced,
        "lease expired before the message was sent",
    )
}

impl KafkaPublisher {
    /// Hands one record to librdkafka, waiting while its queue is full; gives up as soon as the
    /// fence expires while it waits.
    async fn enqueue(
        &self,
        producer: &Producer,
        stored: &StoredMessage,
        fence: &Fence,
    ) -> Result<rdkafka::producer::DeliveryFuture, PublishError> {
        let message = &stored.message;
        let topic = self
            .route
            .route(&message.topic)
            .map_err(|reason| PublishError::new(PublishErrorKind::UnknownTopic, reason))?;
        let headers = record::headers(message);
        // No timestamp: librdkafka stamps the send time. The creation time travels as `ce_time`;
        // as the record's timestamp it would let time-based retention delete a backlog drained
        // after an outage soon after it was acknowledged, and brokers bounding timestamps
        // (`message.timestamp.before.max.ms`) refuse it.
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
            .payload(message.payload.as_slice())
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        loop {
            match producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if !fence.is_valid() {
                        return Err(fenced_error());
                    }
                }
                Err((error, _)) => return Err(PublishError::new(classify(&error), error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use outbox_core::Message;

    use super::*;

    #[tokio::test]
    async fn a_send_waiting_for_room_in_the_queue_stops_when_the_fence_expires() {
        // No broker answers, and librdkafka's queue holds one message: the second waits for room
        // until the first times out, a minute from now, unless the fence ends the wait.
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("queue.buffering.max.messages", "1")
            .set("message.timeout.ms", "60000");
        let publisher = KafkaPublisher::new(&config).expect("valid producer settings");
        let stored = |seq: i64| StoredMessage {
            seq,
            attempts: 0,
            message: Message::builder("t")
                .key("k")
                .json(&seq)
                .expect("valid message"),
        };
        let fence = Fence::expired();
        fence.extend_to(std::time::Instant::now() + Duration::from_millis(300));
        let started = Instant::now();
        let acks = tokio::time::timeout(
            Duration::from_secs(20),
            publisher.send(&[stored(1), stored(2), stored(3)], &fence),
        )
        .await
        .expect("the hand-over ends soon after the fence expired");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        drop(acks);
        // The acknowledgements of what was not handed over are in at once.
        let outcomes = publisher
            .send(&[stored(4)], &fence)
            .await
            .now_or_never()
            .expect("nothing was handed over");
        assert_eq!(
            outcomes
                .iter()
                .map(|o| o.as_ref().err().map(PublishError::kind))
                .collect::<Vec<_>>(),
            [Some(PublishErrorKind::Fenced)]
        );
    }
}
