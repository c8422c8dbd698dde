//! The consumer's dead-letter topic: records that could not be applied, with why.
//!
//! A dead-lettered record keeps its key, its value and all its headers byte for byte (`ce_*`,
//! `traceparent`, the writer's own), minus any `dlq-*` headers of an earlier dead-lettering, and
//! gets these:
//!
//! | header | value |
//! | --- | --- |
//! | `dlq-reason` | `handler-failed`, `undecodable` or `unknown-type` ([`DeadLetterReason`]) |
//! | `dlq-error` | the error, with its chain of causes |
//! | `dlq-attempts` | how many times the handler ran (`0` when it never did) |
//! | `dlq-original-topic`, `dlq-original-partition`, `dlq-original-offset` | where it was read |
//! | `dlq-consumer` | the consumer name (the inbox name) |
//! | `dlq-group` | the consumer group (`group.id`) |
//! | `dlq-time` | when it was dead-lettered, RFC 3339 |
//!
//! The topic is `{topic}.dlq` unless configured
//! ([`InboxConsumerBuilder::dead_letter_topic`](crate::InboxConsumerBuilder::dead_letter_topic)).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::received::RawRecord;

/// Why a record was dead-lettered.
pub const DLQ_REASON: &str = "dlq-reason";
/// The error, with its chain of causes.
pub const DLQ_ERROR: &str = "dlq-error";
/// How many times the handler ran.
pub const DLQ_ATTEMPTS: &str = "dlq-attempts";
/// The topic the record was read from.
pub const DLQ_ORIGINAL_TOPIC: &str = "dlq-original-topic";
/// The partition the record was read from.
pub const DLQ_ORIGINAL_PARTITION: &str = "dlq-original-partition";
/// The record's offset.
pub const DLQ_ORIGINAL_OFFSET: &str = "dlq-original-offset";
/// The consumer name (the inbox name).
pub const DLQ_CONSUMER: &str = "dlq-consumer";
/// The consumer group.
pub const DLQ_GROUP: &str = "dlq-group";
/// When the record was dead-lettered, RFC 3339.
pub const DLQ_TIME: &str = "dlq-time";

/// What every dead-letter header name starts with.
const PREFIX: &str = "dlq-";

/// The placeholder of a dead-letter topic template, replaced with the record's topic.
pub const TOPIC_PLACEHOLDER: &str = "{topic}";

/// The default dead-letter topic: the record's topic with `.dlq` appended.
pub const DEFAULT_TOPIC: &str = "{topic}.dlq";

/// Why a record went to the dead-letter topic (the `dlq-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The handler failed on every attempt.
    HandlerFailed,
    /// The record could not be decoded: no usable `ce_id`, or a payload that does not decode as
    /// the declared event type. Never retried.
    Undecodable,
    /// No handler is declared for its `ce_type` and unknown types are dead-lettered.
    UnknownType,
}

impl DeadLetterReason {
    /// The header value: `handler-failed`, `undecodable` or `unknown-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandlerFailed => "handler-failed",
            Self::Undecodable => "undecodable",
            Self::UnknownType => "unknown-type",
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one record is dead-lettered.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub reason: DeadLetterReason,
    pub error: String,
    pub attempts: u32,
}

/// Who dead-letters.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub consumer: String,
    pub group: String,
}

/// The headers of the dead-letter record of `record`.
pub(crate) fn headers(
    record: &RawRecord,
    failure: &Failure,
    origin: &Origin,
    now: DateTime<Utc>,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = record
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with(PREFIX))
        .cloned()
        .collect();
    let added = [
        (DLQ_REASON, failure.reason.as_str().to_owned()),
        (DLQ_ERROR, failure.error.clone()),
        (DLQ_ATTEMPTS, failure.attempts.to_string()),
        (DLQ_ORIGINAL_TOPIC, record.topic.clone()),
        (DLQ_ORIGINAL_PARTITION, record.partition.to_string()),
        (DLQ_ORIGINAL_OFFSET, record.offset.to_string()),
        (DLQ_CONSUMER, origin.consumer.clone()),
        (DLQ_GROUP, origin.group.clone()),
        (
            DLQ_TIME,
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ];
    headers.extend(
        added
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Some(value.into_bytes()))),
    );
    headers
}

/// The dead-letter topic of records read from `topic`.
pub(crate) fn topic_for(template: &str, topic: &str) -> String {
    template.replace(TOPIC_PLACEHOLDER, topic)
}

/// Producer settings that only make sense for a consumer; removed from the consumer's settings
/// to make the dead-letter producer's.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.remote.assignor",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.error.backoff.ms",
    "fetch.queue.backoff.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "isolation.level",
    "check.crcs",
    "consume.callback.max.messages",
    "coordinator.query.interval.ms",
];

/// Defaults of the dead-letter producer: keys partitioned as the Java client does, and a delivery
/// timeout of 10 s (the runner retries).
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "10000"),
];

/// The producer settings derived from the consumer's: connection and security settings kept,
/// consumer settings removed, then hardened as every producer of the workspace is.
pub(crate) fn producer_config(consumer: &ClientConfig) -> Result<ClientConfig, crate::Error> {
    let mut config = consumer.clone();
    for key in CONSUMER_ONLY {
        config.remove(key);
    }
    crate::producer_config::harden(&config, PRODUCER_DEFAULTS)
}

/// A dead-letter producer configuration given by the user, hardened all the same: idempotent,
/// `acks=all`, a keyed partitioner.
pub(crate) fn custom_producer_config(config: &ClientConfig) -> Result<ClientConfig, crate::Error> {
    crate::producer_config::harden(config, PRODUCER_DEFAULTS)
}

/// Sends dead-letter records.
pub(crate) struct DeadLetterProducer {
    producer: FutureProducer,
    template: String,
    origin: Origin,
}

impl DeadLetterProducer {
    pub fn new(
        config: &ClientConfig,
        template: String,
        origin: Origin,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: config.create()?,
            template,
            origin,
        })
    }

    /// The dead-letter topic of `topic`.
    pub fn topic(&self, topic: &str) -> String {
        topic_for(&self.template, topic)
    }

    /// Sends the dead-letter record of `record` and waits for the broker's acknowledgement.
    /// Returns where it landed.
    pub async fn send(
        &self,
        record: &RawRecord,
        failure: &Failure,
    ) -> Result<(i32, i64), KafkaError> {
        let topic = self.topic(&record.topic);
        let headers = headers(record, failure, &self.origin, Utc::now());
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (key, value) in &headers {
            owned = owned.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            });
        }
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(owned);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        match self.producer.send(out, Duration::from_secs(10)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((error, _)) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::received::tests::raw;

    fn text(headers: &[(String, Option<Vec<u8>>)], name: &str) -> Option<String> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn dead_letter_records_keep_the_original_headers_and_say_why_and_where_from() {
        let mut record = raw(
            &[
                ("ce_id", "0190b5a0-0000-7000-8000-000000000001"),
                ("ce_type", "OrderPlaced"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                // From an earlier dead-lettering (a replayed record): replaced, not repeated.
                ("dlq-error", "old error"),
            ],
            "{}",
        );
        record
            .headers
            .push(("binary".into(), Some(vec![0, 159, 146, 150])));
        record.headers.push(("empty".into(), None));
        let failure = Failure {
            reason: DeadLetterReason::HandlerFailed,
            error: "downstream unavailable: connection refused".into(),
            attempts: 5,
        };
        let origin = Origin {
            consumer: "shipping".into(),
            group: "shipping-group".into(),
        };
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("valid time")
            .with_timezone(&Utc);
        let headers = headers(&record, &failure, &origin, now);

        assert_eq!(text(&headers, "ce_type").as_deref(), Some("OrderPlaced"));
        assert!(text(&headers, "traceparent").is_some());
        assert!(headers.contains(&("binary".into(), Some(vec![0, 159, 146, 150]))));
        assert!(headers.contains(&("empty".into(), None)));
        let expected = [
            (DLQ_REASON, "handler-failed"),
            (DLQ_ERROR, "downstream unavailable: connection refused"),
            (DLQ_ATTEMPTS, "5"),
            (DLQ_ORIGINAL_TOPIC, "orders"),
            (DLQ_ORIGINAL_PARTITION, "2"),
            (DLQ_ORIGINAL_OFFSET, "7"),
            (DLQ_CONSUMER, "shipping"),
            (DLQ_GROUP, "shipping-group"),
            (DLQ_TIME, "2026-01-02T03:04:05.000Z"),
        ];
        for (name, value) in expected {
            assert_eq!(text(&headers, name).as_deref(), Some(value), "{name}");
        }
        let errors = headers.iter().filter(|(n, _)| n == DLQ_ERROR).count();
        assert_eq!(errors, 1, "the earlier dlq-error is replaced");
    }

    #[test]
    fn the_topic_template_names_the_dead_letter_topic() {
        assert_eq!(topic_for(DEFAULT_TOPIC, "orders"), "orders.dlq");
        assert_eq!(topic_for("dead-letters", "orders"), "dead-letters");
        assert_eq!(
            topic_for("dlq.{topic}.shipping", "orders"),
            "dlq.orders.shipping"
        );
    }

    #[test]
    fn the_producer_keeps_connection_settings_and_drops_consumer_ones() {
        let mut consumer = ClientConfig::new();
        consumer
            .set("bootstrap.servers", "kafka:9092")
            .set("security.protocol", "SASL_SSL")
            .set("group.id", "shipping")
            .set("fetch.wait.max.ms", "50")
            .set("enable.auto.offset.store", "false");
        let producer = producer_config(&consumer).expect("a safe configuration");
        assert_eq!(producer.get("bootstrap.servers"), Some("kafka:9092"));
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        for gone in ["group.id", "fetch.wait.max.ms", "enable.auto.offset.store"] {
            assert_eq!(producer.get(gone), None, "{gone}");
        }
    }

    #[test]
    fn a_custom_dead_letter_producer_is_hardened_and_weakening_settings_are_refused() {
        let mut custom = ClientConfig::new();
        custom
            .set("bootstrap.servers", "kafka:9092")
            .set("request.required.acks", "-1");
        let producer = custom_producer_config(&custom).expect("safe");
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("partitioner"), Some("murmur2_random"));
        for (key, value) in [
            ("acks", "1"),
            ("enable.idempotence", "false"),
            ("partitioner", "random"),
        ] {
            let mut weak = custom.clone();
            weak.set(key, value);
            let error = custom_producer_config(&weak)
                .expect_err("weakening")
                .to_string();
            assert!(error.contains(key), "{error}");
        }
    }
}
