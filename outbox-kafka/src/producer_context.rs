//! The producer's librdkafka context: what the client reports besides deliveries — the topics'
//! partition counts ([`PartitionWatch`]) and its errors ([`ClientErrors`]).

use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::client_errors::ClientErrors;
use crate::partition_watch::PartitionWatch;

/// The context of the relay's producer.
#[derive(Debug, Default)]
pub struct ProducerContext {
    partitions: PartitionWatch,
    errors: Arc<ClientErrors>,
}

impl ProducerContext {
    /// A context that reports the client's errors to `errors`, which outlives the producer (a
    /// replaced producer reports to the same one).
    pub(crate) fn reporting_to(errors: Arc<ClientErrors>) -> Self {
        Self {
            partitions: PartitionWatch::default(),
            errors,
        }
    }
}

impl ClientContext for ProducerContext {
    fn stats(&self, statistics: Statistics) {
        self.partitions.stats(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.record(&error, reason);
    }
}
