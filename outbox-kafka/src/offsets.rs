//! Which partitions a runner owns, and which offset of each it may commit.
//!
//! Every assignment of a partition gets a new *generation*; a worker names its generation when it
//! reports progress, so a worker of a revoked assignment can never store an offset, even if the
//! partition came back to this runner in the meantime. Within a generation one record is in
//! flight at a time and the committable offset is the one after the last record that finished:
//! never past a record that did not.

use std::collections::HashMap;

use outbox_core::CancellationToken;

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What a worker gets for one assignment of its partition.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    /// The assignment's generation, named in every progress report.
    pub generation: u64,
    /// Cancelled when the partition is revoked or the runner stops.
    pub stop: CancellationToken,
}

/// One assignment of a partition: its ticket, the offset in flight and the committable one.
#[derive(Debug)]
struct Held {
    ticket: Ticket,
    in_flight: Option<i64>,
    committable: Option<i64>,
}

/// The partitions a runner owns.
#[derive(Debug, Default)]
pub(crate) struct Assignments {
    held: HashMap<TopicPartition, Held>,
    next_generation: u64,
    closed: bool,
}

impl Assignments {
    /// Takes `partition` on; a worker that still held it is stopped. `None` once closed.
    pub fn assign(&mut self, partition: TopicPartition) -> Option<Ticket> {
        if self.closed {
            return None;
        }
        self.next_generation += 1;
        let ticket = Ticket {
            generation: self.next_generation,
            stop: CancellationToken::new(),
        };
        let held = Held {
            ticket: ticket.clone(),
            in_flight: None,
            committable: None,
        };
        if let Some(previous) = self.held.insert(partition, held) {
            previous.ticket.stop.cancel();
        }
        Some(ticket)
    }

    /// Gives `partition` up: its worker is told to stop and can no longer store offsets. Returns
    /// whether it was owned.
    pub fn revoke(&mut self, partition: &TopicPartition) -> bool {
        match self.held.remove(partition) {
            Some(held) => {
                held.ticket.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Gives every partition up and refuses new ones (the runner is stopping).
    pub fn close(&mut self) {
        self.closed = true;
        for (_, held) in self.held.drain() {
            held.ticket.stop.cancel();
        }
    }

    /// The partitions owned now.
    pub fn owned(&self) -> Vec<TopicPartition> {
        let mut owned: Vec<_> = self.held.keys().cloned().collect();
        owned.sort();
        owned
    }

    /// Notes that the worker of `generation` starts on `offset`. `false` when the assignment is
    /// gone or another record is still in flight: the worker must not process it.
    pub fn start(&mut self, partition: &TopicPartition, generation: u64, offset: i64) -> bool {
        match self.assignment(partition, generation) {
            Some(held) if held.in_flight.is_none() => {
                held.in_flight = Some(offset);
                true
            }
            _ => false,
        }
    }

    /// Notes that the record at `offset` is done (applied, absorbed as a duplicate, skipped or
    /// dead-lettered). Returns the offset to store for the next commit (the one after it) when
    /// that moves the partition forward; `None` when the assignment is gone or `offset` is not the
    /// record in flight.
    pub fn finish(
        &mut self,
        partition: &TopicPartition,
        generation: u64,
        offset: i64,
    ) -> Option<i64> {
        let held = self.assignment(partition, generation)?;
        if held.in_flight != Some(offset) {
            return None;
        }
        held.in_flight = None;
        let next = offset.saturating_add(1);
        if held
            .committable
            .is_some_and(|committable| committable >= next)
        {
            return None;
        }
        held.committable = Some(next);
        Some(next)
    }

    /// Notes that the worker of `generation` gave up on `offset` without finishing it (stopped):
    /// nothing is stored for it.
    pub fn abandon(&mut self, partition: &TopicPartition, generation: u64, offset: i64) {
        if let Some(held) = self.assignment(partition, generation)
            && held.in_flight == Some(offset)
        {
            held.in_flight = None;
        }
    }

    fn assignment(&mut self, partition: &TopicPartition, generation: u64) -> Option<&mut Held> {
        self.held
            .get_mut(partition)
            .filter(|held| held.ticket.generation == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: i32) -> TopicPartition {
        TopicPartition::new("orders", partition)
    }

    #[test]
    fn the_committable_offset_follows_finished_records_only() {
        let mut assignments = Assignments::default();
        let ticket = assignments.assign(p(0)).expect("open");
        assert!(assignments.start(&p(0), ticket.generation, 10));
        // A second record cannot start while the first is in flight, and finishing a record that
        // is not the one in flight stores nothing: the commit never passes record 10.
        assert!(!assignments.start(&p(0), ticket.generation, 11));
        assert_eq!(assignments.finish(&p(0), ticket.generation, 11), None);
        assert_eq!(assignments.finish(&p(0), ticket.generation, 10), Some(11));
        assert!(assignments.start(&p(0), ticket.generation, 11));
        assert_eq!(assignments.finish(&p(0), ticket.generation, 11), Some(12));
        // Finishing the same record twice stores nothing more.
        assert_eq!(assignments.finish(&p(0), ticket.generation, 11), None);
    }

    #[test]
    fn abandoned_records_store_nothing() {
        let mut assignments = Assignments::default();
        let ticket = assignments.assign(p(0)).expect("open");
        assert!(assignments.start(&p(0), ticket.generation, 3));
        assignments.abandon(&p(0), ticket.generation, 3);
        assert_eq!(assignments.finish(&p(0), ticket.generation, 3), None);
    }

    #[test]
    fn a_revoked_assignment_stores_nothing_even_when_the_partition_comes_back() {
        let mut assignments = Assignments::default();
        let old = assignments.assign(p(1)).expect("open");
        assert!(assignments.start(&p(1), old.generation, 5));
        assert!(assignments.revoke(&p(1)));
        assert!(old.stop.is_cancelled(), "the old worker is told to stop");
        assert_eq!(assignments.finish(&p(1), old.generation, 5), None);

        let new = assignments.assign(p(1)).expect("open");
        assert_ne!(new.generation, old.generation);
        // The old worker's late report is refused; the new worker's counts.
        assert_eq!(assignments.finish(&p(1), old.generation, 5), None);
        assert!(!assignments.start(&p(1), old.generation, 6));
        assert!(assignments.start(&p(1), new.generation, 5));
        assert_eq!(assignments.finish(&p(1), new.generation, 5), Some(6));
    }

    #[test]
    fn partitions_are_tracked_independently() {
        let mut assignments = Assignments::default();
        let a = assignments.assign(p(0)).expect("open");
        let b = assignments.assign(p(1)).expect("open");
        assert!(assignments.start(&p(0), a.generation, 100));
        assert!(assignments.start(&p(1), b.generation, 7));
        assert_eq!(assignments.finish(&p(1), b.generation, 7), Some(8));
        assert_eq!(assignments.owned(), [p(0), p(1)]);
        assert!(!assignments.revoke(&p(2)));
    }

    #[test]
    fn reassigning_an_owned_partition_stops_its_worker() {
        let mut assignments = Assignments::default();
        let first = assignments.assign(p(0)).expect("open");
        let second = assignments.assign(p(0)).expect("open");
        assert!(first.stop.is_cancelled());
        assert!(!second.stop.is_cancelled());
    }

    #[test]
    fn a_closed_runner_takes_no_partition_and_stops_its_workers() {
        let mut assignments = Assignments::default();
        let ticket = assignments.assign(p(0)).expect("open");
        assignments.close();
        assert!(ticket.stop.is_cancelled());
        assert!(assignments.assign(p(0)).is_none());
        assert!(assignments.owned().is_empty());
    }
}
