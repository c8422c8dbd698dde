//! The publish horizon: the highest `seq` below which no message can still appear.
//!
//! Sequence numbers are handed out when a row is inserted, not when its transaction commits. Two
//! writers can therefore commit out of order: the row numbered 11 may be visible while the row
//! numbered 10 is still in an open transaction. Publishing 11 first would reorder them.
//!
//! Every enqueuing transaction holds a shared advisory lock (the *writer lock*) from before its first
//! row is numbered until it ends. The relay reads, in this order, (1) the highest number handed out
//! so far, `M`, and (2) the set `W` of transactions holding the writer lock. Every row numbered `<= M`
//! belongs to a transaction that either had ended before (2) or is in `W`. Once every transaction of
//! `W` has ended, all rows `<= M` are committed or gone for good, so `M` is a safe horizon: claiming
//! only rows `<= M` in `seq` order never lets a lower number appear after a higher one was published.
//!
//! Unrelated long transactions do not hold the horizon back; only open enqueuing transactions do.

use std::collections::{HashSet, VecDeque};

/// Most observations kept while waiting for writers to end; older ones are superseded.
const MAX_PENDING: usize = 256;

/// Observations waiting for their writers to end, and the horizon they established.
#[derive(Debug, Default)]
pub(crate) struct Horizon {
    pending: VecDeque<(i64, HashSet<String>)>,
    safe: i64,
}

impl Horizon {
    /// Adds the observation (`max_seq`, `writers`) and returns the horizon: the newest observation
    /// all of whose writers have ended, as far as `writers` (the current set) shows.
    pub(crate) fn observe(&mut self, max_seq: i64, writers: HashSet<String>) -> i64 {
        self.pending.push_back((max_seq, writers));
        let current = &self
            .pending
            .back()
            .map(|(_, w)| w.clone())
            .unwrap_or_default();
        if let Some(index) = self
            .pending
            .iter()
            .rposition(|(_, waiting)| waiting.is_disjoint(current))
        {
            self.safe = self.safe.max(self.pending[index].0);
            self.pending.drain(..=index);
        }
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
        }
        self.safe
    }
}

/// Parses the comma-separated writer list of the horizon query.
pub(crate) fn parse_writers(list: &str) -> HashSet<String> {
    list.split(',')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writers(list: &str) -> HashSet<String> {
        parse_writers(list)
    }

    #[test]
    fn with_no_open_writer_everything_handed_out_is_safe() {
        let mut horizon = Horizon::default();
        assert_eq!(horizon.observe(10, writers("")), 10);
        assert_eq!(horizon.observe(15, writers("")), 15);
    }

    #[test]
    fn the_horizon_waits_for_writers_that_were_open_when_numbers_were_read() {
        let mut horizon = Horizon::default();
        assert_eq!(
            horizon.observe(10, writers("3/7")),
            0,
            "3/7 may hold a number <= 10"
        );
        assert_eq!(
            horizon.observe(12, writers("3/7,4/2")),
            0,
            "3/7 is still open"
        );
        assert_eq!(
            horizon.observe(20, writers("4/2")),
            10,
            "3/7 ended: 10 is safe, 12 waits for 4/2"
        );
        assert_eq!(horizon.observe(25, writers("5/1")), 20, "4/2 ended");
        assert_eq!(horizon.observe(25, writers("")), 25);
    }

    #[test]
    fn the_horizon_never_moves_back_and_memory_stays_bounded() {
        let mut horizon = Horizon::default();
        assert_eq!(horizon.observe(10, writers("")), 10);
        for n in 0..10_000 {
            assert_eq!(horizon.observe(5, writers("9/9")), 10, "round {n}");
        }
        assert!(horizon.pending.len() <= MAX_PENDING);
    }
}
