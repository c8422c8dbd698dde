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
use std::time::{Duration, Instant};

/// Most observations kept while waiting for writers to end; older ones are superseded.
const MAX_PENDING: usize = 256;

/// Observations waiting for their writers to end, and the horizon they established.
#[derive(Debug, Default)]
pub(crate) struct Horizon {
    pending: VecDeque<(i64, HashSet<String>)>,
    safe: i64,
    /// When the oldest observation not yet confirmed was made (kept when it is superseded for
    /// room): how long numbers handed out have waited for open writers.
    waiting_since: Option<Instant>,
}

impl Horizon {
    /// Adds the observation (`max_seq`, `writers`), made `now`, and returns the horizon: the
    /// newest observation all of whose writers have ended, as far as `writers` (the current set)
    /// shows.
    pub(crate) fn observe(&mut self, max_seq: i64, writers: HashSet<String>, now: Instant) -> i64 {
        if self.pending.is_empty() {
            self.waiting_since = Some(now);
        }
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
            // The next observation was made after the confirmed one; its time is not kept, so the
            // lag restarts at the confirmation, a little short of the truth, never above it.
            self.waiting_since = (!self.pending.is_empty()).then_some(now);
        }
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
        }
        self.safe
    }

    /// How long the horizon has been waiting for open enqueuing transactions: zero when every
    /// number handed out is claimable.
    pub(crate) fn lag(&self, now: Instant) -> Duration {
        self.waiting_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
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
        assert_eq!(horizon.observe(10, writers(""), Instant::now()), 10);
        assert_eq!(horizon.observe(15, writers(""), Instant::now()), 15);
    }

    #[test]
    fn the_horizon_waits_for_writers_that_were_open_when_numbers_were_read() {
        let mut horizon = Horizon::default();
        assert_eq!(
            horizon.observe(10, writers("3/7"), Instant::now()),
            0,
            "3/7 may hold a number <= 10"
        );
        assert_eq!(
            horizon.observe(12, writers("3/7,4/2"), Instant::now()),
            0,
            "3/7 is still open"
        );
        assert_eq!(
            horizon.observe(20, writers("4/2"), Instant::now()),
            10,
            "3/7 ended: 10 is safe, 12 waits for 4/2"
        );
        assert_eq!(
            horizon.observe(25, writers("5/1"), Instant::now()),
            20,
            "4/2 ended"
        );
        assert_eq!(horizon.observe(25, writers(""), Instant::now()), 25);
    }

    #[test]
    fn the_lag_is_how_long_numbers_have_waited_for_open_writers() {
        let mut horizon = Horizon::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(horizon.observe(10, writers(""), at(0)), 10);
        assert_eq!(horizon.lag(at(1)), Duration::ZERO, "nothing waits");
        assert_eq!(horizon.observe(12, writers("3/7"), at(2)), 10);
        assert_eq!(horizon.observe(15, writers("3/7"), at(5)), 10);
        assert_eq!(
            horizon.lag(at(62)),
            Duration::from_secs(60),
            "since 3/7 was seen"
        );
        assert_eq!(horizon.observe(15, writers(""), at(63)), 15);
        assert_eq!(horizon.lag(at(64)), Duration::ZERO);
        // Superseded observations keep the oldest time.
        for n in 0..(MAX_PENDING as u64 + 10) {
            horizon.observe(20, writers("9/9"), at(100 + n));
        }
        assert_eq!(horizon.lag(at(1000)), Duration::from_secs(900));
    }

    #[test]
    fn the_horizon_never_moves_back_and_memory_stays_bounded() {
        let mut horizon = Horizon::default();
        assert_eq!(horizon.observe(10, writers(""), Instant::now()), 10);
        for n in 0..10_000 {
            assert_eq!(
                horizon.observe(5, writers("9/9"), Instant::now()),
                10,
                "round {n}"
            );
        }
        assert!(horizon.pending.len() <= MAX_PENDING);
    }
}
