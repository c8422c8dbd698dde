use std::sync::Arc;
use std::time::Duration;

use outbox_core::Inbox;
use rdkafka::consumer::Consumer;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::{Offset, TopicPartitionList};

use crate::offsets::{Ticket, TopicPartition};
use crate::received::RawRecord;

use super::process::Outcome;
use super::rebalance::RunnerContext;
use super::{KafkaConsumer, Shared, lock};

/// How long a partition worker waits on its queue before polling it again. librdkafka wakes the
/// worker when records arrive; the poll is a fallback should a wake-up be lost.
const REPOLL: Duration = Duration::from_secs(1);

/// One partition's worker: reads its queue and processes one record at a time, until revoked.
pub(super) async fn run_partition<I: Inbox + 'static>(
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
        shared.counters.took_up(&shared.name, &partition, offset);
        // A revoked partition stops waiting for the record in hand (an attempt already running
        // still ends with its commit or rollback); the partition's next owner gets it again.
        let outcome = tokio::select! {
            biased;
            () = ticket.stop.cancelled() => Outcome::Interrupted,
            outcome = shared.process(&record) => outcome,
        };
        shared.counters.put_down(&shared.name, &partition);
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
