use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::offsets::TopicPartition;

/// Gauge, labels `consumer`, `topic`, `partition`: when the record the partition is processing
/// was taken up, in seconds since the Unix epoch; 0 while the partition waits for records. A
/// partition stalled on one record shows as `time() - outbox_consumer_record_started_seconds`
/// growing.
pub const RECORD_STARTED: &str = "outbox_consumer_record_started_seconds";

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
    /// Records skipped because no handler takes their `ce_type`
    /// ([`UnknownTypes::Ignore`](crate::UnknownTypes::Ignore)).
    pub ignored: u64,
    /// Inbox rows deleted by the retention purge.
    pub purged: u64,
    /// Attempts cut off by the handler timeout (each also counted in `failures`).
    pub timeouts: u64,
}

/// The record a partition is processing, and for how long it has been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InHand {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// How long ago the partition took it up (retries and backoffs included).
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) applied: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) dead_letter_errors: AtomicU64,
    pub(super) ignored: AtomicU64,
    pub(super) purged: AtomicU64,
    pub(super) timeouts: AtomicU64,
    /// Per partition, the record in hand and since when.
    pub(super) in_hand: Mutex<BTreeMap<TopicPartition, (i64, Instant)>>,
}

impl Counters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ConsumerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConsumerStats {
            applied: get(&self.applied),
            duplicates: get(&self.duplicates),
            failures: get(&self.failures),
            dead_lettered: get(&self.dead_lettered),
            dead_letter_errors: get(&self.dead_letter_errors),
            ignored: get(&self.ignored),
            purged: get(&self.purged),
            timeouts: get(&self.timeouts),
        }
    }

    /// Records that `partition` took up the record at `offset`.
    pub(super) fn took_up(&self, consumer: &str, partition: &TopicPartition, offset: i64) {
        let started = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        record_started(consumer, partition).set(started);
        self.in_hand_map()
            .insert(partition.clone(), (offset, Instant::now()));
    }

    /// Records that `partition` is done with its record in hand (finished, or given up).
    pub(super) fn put_down(&self, consumer: &str, partition: &TopicPartition) {
        record_started(consumer, partition).set(0.0);
        self.in_hand_map().remove(partition);
    }

    fn in_hand_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicPartition, (i64, Instant)>> {
        outbox_core::sync::lock(&self.in_hand)
    }
}

fn record_started(consumer: &str, partition: &TopicPartition) -> metrics::Gauge {
    metrics::gauge!(
        RECORD_STARTED,
        "consumer" => consumer.to_owned(),
        "topic" => partition.topic.clone(),
        "partition" => partition.partition.to_string()
    )
}

/// Reads a running consumer's counters.
#[derive(Debug, Clone)]
pub struct StatsHandle(pub(super) Arc<Counters>);

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> ConsumerStats {
        self.0.snapshot()
    }

    /// The records the partitions are processing right now, longest first: a partition stalled on
    /// a record (a hung handler, a record retried for long) stands out at the top. Also exported
    /// as the gauge [`RECORD_STARTED`].
    pub fn in_hand(&self) -> Vec<InHand> {
        let mut in_hand: Vec<InHand> = self
            .0
            .in_hand_map()
            .iter()
            .map(|(partition, (offset, since))| InHand {
                topic: partition.topic.clone(),
                partition: partition.partition,
                offset: *offset,
                elapsed: since.elapsed(),
            })
            .collect();
        in_hand.sort_by_key(|r| std::cmp::Reverse(r.elapsed));
        in_hand
    }
}
