use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
        }
    }
}

/// Reads a running consumer's counters.
#[derive(Debug, Clone)]
pub struct StatsHandle(pub(super) Arc<Counters>);

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> ConsumerStats {
        self.0.snapshot()
    }
}
