//! Noticing that a topic's partition count changed.
//!
//! Keys are placed by hashing modulo the partition count, so adding partitions moves keys: records
//! of one key produced before the change sit in its old partition, later ones in its new one, and
//! a consumer may read them in either order. Kafka cannot prevent it and the relay cannot undo it;
//! it can make it visible. The producer's own view of each topic (librdkafka's statistics, the
//! metadata its partitioner uses) is compared with the last one seen: a change is logged and
//! counted, per topic.

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::statistics::Statistics;

/// Gauge, label `topic`: partitions the producer knows for the topic.
pub const TOPIC_PARTITIONS: &str = "outbox_topic_partitions";
/// Counter, label `topic`: changes of the topic's partition count seen by the producer; each one
/// moves keys to other partitions.
pub const PARTITION_CHANGES: &str = "outbox_topic_partition_changes_total";

/// Reads the statistics librdkafka emits every `statistics.interval.ms` (through the producer's
/// context, [`crate::ProducerContext`]).
#[derive(Debug, Default)]
pub struct PartitionWatch {
    known: Mutex<HashMap<String, usize>>,
}

impl PartitionWatch {
    /// Takes in one statistics report: per topic, the partitions the producer's metadata lists.
    fn observe<'a>(&self, topics: impl IntoIterator<Item = (&'a str, usize)>) {
        let mut known = outbox_core::sync::lock(&self.known);
        for (topic, partitions) in topics {
            if partitions == 0 {
                // Metadata not there yet (the topic is being looked up): nothing to compare.
                continue;
            }
            metrics::gauge!(TOPIC_PARTITIONS, "topic" => topic.to_owned()).set(partitions as f64);
            match known.insert(topic.to_owned(), partitions) {
                Some(before) if before != partitions => {
                    metrics::counter!(PARTITION_CHANGES, "topic" => topic.to_owned()).increment(1);
                    tracing::warn!(
                        topic,
                        before,
                        partitions,
                        "the topic's partition count changed: keys now map to other partitions, so a key's records from before and after the change are in different partitions and may be consumed out of order"
                    );
                }
                _ => {}
            }
        }
    }

    /// Takes in one statistics report.
    pub fn stats(&self, statistics: Statistics) {
        self.observe(statistics.topics.iter().map(|(name, topic)| {
            // -1 is librdkafka's internal partition for records not assigned yet.
            let partitions = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && !p.unknown)
                .count();
            (name.as_str(), partitions)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_count_is_recorded_and_an_unchanged_or_unknown_one_is_not() {
        let watch = PartitionWatch::default();
        watch.observe([("orders", 2), ("audit", 1)]);
        watch.observe([("orders", 2), ("audit", 0)]);
        assert_eq!(watch.known.lock().expect("not poisoned")["audit"], 1);
        watch.observe([("orders", 4)]);
        assert_eq!(watch.known.lock().expect("not poisoned")["orders"], 4);
    }
}
