//! Errors of the Kafka adapter.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Errors raised by the publisher and the inbox consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Kafka client could not be created or a Kafka call failed.
    #[error("kafka error")]
    Kafka(#[from] KafkaError),

    /// The client configuration would break the delivery guarantee.
    #[error("unsafe producer setting `{key}={value}`: {why}")]
    UnsafeConfig {
        /// The setting.
        key: String,
        /// Its value.
        value: String,
        /// Why the relay refuses it.
        why: &'static str,
    },

    /// A topic template that cannot produce valid topic names.
    #[error("invalid topic template `{template}`: {reason}")]
    InvalidTopicRoute {
        /// The template as given.
        template: String,
        /// What is wrong, and what is allowed.
        reason: String,
    },

    /// No broker answered within the timeout.
    #[error(
        "no Kafka broker answered at `{brokers}` within {timeout:?} (the client's last error: {last_error})"
    )]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long it waited.
        timeout: std::time::Duration,
        /// The last error the client reported, as librdkafka described it.
        last_error: String,
        /// The last error.
        #[source]
        source: Box<KafkaError>,
    },

    /// The brokers refused the client as configured: its credentials, its TLS handshake (a
    /// certificate its CA does not vouch for) or its SASL mechanism. Retrying would not help.
    #[error("the Kafka brokers at `{brokers}` refused the connection: {reason}")]
    Refused {
        /// The bootstrap servers.
        brokers: String,
        /// What the client reported, as librdkafka described it.
        reason: String,
    },

    /// A consumed record does not carry what the inbox needs (a `ce_id` header holding a UUID).
    #[error("record {topic}/{partition}@{offset} has no usable ce_id header: {reason}")]
    UndecodableRecord {
        /// The record's topic.
        topic: String,
        /// The record's partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },

    /// The inbox consumer is configured in a way that cannot work.
    #[error("invalid consumer configuration: {0}")]
    Config(String),

    /// A record arrived on the consumer's main queue instead of its partition's own queue (the
    /// partition could not be given one); the consumer stops without committing it.
    #[error("record {topic}/{partition}@{offset} arrived outside its partition queue")]
    UnroutedRecord {
        /// The record's topic.
        topic: String,
        /// The record's partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
    },

    /// The inbox (the database) failed.
    #[error("inbox failed")]
    Inbox(#[source] outbox_core::BoxError),
}

/// Classifies a produce error for the relay: retry, or dead letter.
pub fn classify(error: &KafkaError) -> outbox_core::PublishErrorKind {
    use RDKafkaErrorCode as C;
    use outbox_core::PublishErrorKind as K;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize) => {
            K::MessageTooLarge
        }
        Some(
            C::UnknownTopic | C::UnknownTopicOrPartition | C::InvalidTopic | C::UnknownTopicId,
        ) => K::UnknownTopic,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication,
        ) => K::Unauthorized,
        Some(
            C::InvalidRecord
            | C::InvalidMessage
            | C::InvalidArgument
            | C::UnsupportedForMessageFormat,
        ) => K::Rejected,
        Some(
            C::MessageTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::RequestTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::QueueFull
            | C::OperationTimedOut
            // The broker failed, not the record (UNKNOWN_SERVER_ERROR, storage errors).
            | C::Unknown
            | C::KafkaStorageError,
        ) => K::Unavailable,
        _ => K::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::PublishErrorKind as K;

    #[test]
    fn produce_errors_are_classified() {
        let produce = |code| KafkaError::MessageProduction(code);
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
            K::MessageTooLarge
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::UnknownTopicOrPartition)),
            K::UnknownTopic
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::TopicAuthorizationFailed)),
            K::Unauthorized
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::InvalidRecord)),
            K::Rejected
        );
        for outage in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::Unknown,
        ] {
            assert_eq!(classify(&produce(outage)), K::Unavailable, "{outage:?}");
        }
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::OutOfOrderSequenceNumber)),
            K::Transient
        );
    }
}
