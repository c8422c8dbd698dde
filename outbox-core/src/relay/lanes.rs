//! The engine's lane states: which lanes have a window in flight, and how much of the in-flight
//! budget is used.
//!
//! A lane is *idle* or *busy*. It turns busy when a window of it is handed to the publisher and idle
//! again only once that window is over: its outcome written back, or given up (the settlement
//! failed, or the lease was lost and the broker has answered or the send timed out). A busy lane is
//! never claimed, so a lane never has two windows, and the next window of a lane always starts
//! after the previous one's outcome is in the store.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::Lane;

/// A window's share of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Load {
    messages: usize,
    bytes: u64,
}

/// Busy lanes and the budget they use.
#[derive(Debug)]
pub(crate) struct LaneTable {
    busy: BTreeMap<Lane, Load>,
    /// The keys of `busy`, as the claim request wants them.
    lanes: BTreeSet<Lane>,
    messages: usize,
    bytes: u64,
    max_messages: usize,
    max_bytes: u64,
}

/// What is left of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Room {
    pub messages: usize,
    pub bytes: u64,
}

/// A window of a lane that already has one: the store broke its contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lane {0} already has a window in flight")]
pub(crate) struct LaneBusy(pub Lane);

impl LaneTable {
    pub(crate) fn new(max_messages: usize, max_bytes: u64) -> Self {
        Self {
            busy: BTreeMap::new(),
            lanes: BTreeSet::new(),
            messages: 0,
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// The busy lanes.
    pub(crate) fn busy(&self) -> &BTreeSet<Lane> {
        &self.lanes
    }

    /// What a claim may still take; `None` when the budget is used up.
    pub(crate) fn room(&self) -> Option<Room> {
        let messages = self.max_messages.saturating_sub(self.messages);
        let bytes = self.max_bytes.saturating_sub(self.bytes);
        (messages > 0 && bytes > 0).then_some(Room { messages, bytes })
    }

    /// Marks `lane` busy with a window of `messages` messages and `bytes` bytes.
    pub(crate) fn start(
        &mut self,
        lane: Lane,
        messages: usize,
        bytes: u64,
    ) -> Result<(), LaneBusy> {
        if self.busy.contains_key(&lane) {
            return Err(LaneBusy(lane));
        }
        self.busy.insert(lane, Load { messages, bytes });
        self.lanes.insert(lane);
        self.messages += messages;
        self.bytes += bytes;
        Ok(())
    }

    /// Marks `lane` idle again: its window is over. Returns whether it was busy.
    pub(crate) fn finish(&mut self, lane: Lane) -> bool {
        let Some(load) = self.busy.remove(&lane) else {
            return false;
        };
        self.lanes.remove(&lane);
        self.messages -= load.messages;
        self.bytes -= load.bytes;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_takes_one_window_and_the_budget_follows_the_windows() {
        let mut table = LaneTable::new(10, 1_000);
        assert_eq!(
            table.room(),
            Some(Room {
                messages: 10,
                bytes: 1_000
            })
        );
        table.start(3, 4, 400).expect("idle lane");
        assert_eq!(table.start(3, 1, 1), Err(LaneBusy(3)));
        table.start(5, 6, 100).expect("idle lane");
        assert_eq!(table.room(), None, "ten messages in flight");
        assert_eq!(table.busy().iter().copied().collect::<Vec<_>>(), [3, 5]);
        assert!(table.finish(3));
        assert!(!table.finish(3), "a lane finishes once");
        assert_eq!(
            table.room(),
            Some(Room {
                messages: 4,
                bytes: 900
            })
        );
        assert!(table.finish(5));
        assert!(table.busy().is_empty());
    }
}
