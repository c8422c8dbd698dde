use std::sync::{Arc, OnceLock, Weak};

use outbox_core::Inbox;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::offsets::TopicPartition;

use super::partition::run_partition;
use super::{KafkaConsumer, Shared, lock};

/// The consumer's context: splits each assigned partition onto a queue and task of its own, and
/// stops the task when the partition is revoked.
pub(super) struct RunnerContext<I: Inbox + 'static> {
    pub(super) shared: Arc<Shared<I>>,
    pub(super) consumer: OnceLock<Weak<KafkaConsumer<I>>>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl<I: Inbox + 'static> ClientContext for RunnerContext<I> {
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.errors.record(&error, reason);
    }
}

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
