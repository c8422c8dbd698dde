//! What was read from the replication stream and not yet settled, by lane, and the WAL position
//! that may be confirmed.
//!
//! Invariants:
//! * Messages get increasing `seq`s in stream order, which is commit order: within a lane, a claim
//!   takes the oldest messages first, so per-key order is the order of the commits.
//! * A transaction's messages arrive only after it committed (the server decodes a transaction at
//!   its commit), so everything in the queue may be published.
//! * The confirmable position is the end of the newest transaction such that it and every earlier
//!   one has no message left in the queue: confirming it never skips a message that was not
//!   acknowledged or dead-lettered. Positions inside a transaction are never confirmed (the server
//!   would resend the whole transaction anyway).
//!
//! (The file is long for its unit tests, the second half: the queue is about 290 lines.)

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use outbox_core::{ClaimRequest, Lane, Settlement, StoredMessage};

/// A WAL position.
pub(crate) type Lsn = u64;

#[derive(Debug)]
struct Entry {
    stored: StoredMessage,
    lane: Lane,
    /// Absolute index of the transaction.
    tx: u64,
    /// Not claimed again before this instant (a retry's delay).
    not_before: Option<Instant>,
}

#[derive(Debug)]
struct Tx {
    /// Messages of the transaction still in the queue.
    open: usize,
    /// Where the transaction ends in the WAL, once its commit was read.
    end: Option<Lsn>,
    /// When it committed, on the database's clock (microseconds since the Unix epoch).
    commit_micros: i64,
}

/// The queue of one replication session. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Lanes the stream is spread over.
    lanes_total: u32,
    next_seq: i64,
    entries: HashMap<i64, Entry>,
    lanes: BTreeMap<Lane, VecDeque<i64>>,
    txs: VecDeque<Tx>,
    /// Absolute index of `txs[0]`.
    first_tx: u64,
    bytes: u64,
    delayed: usize,
    /// Highest position that may be confirmed.
    confirmable: Lsn,
}

impl Queue {
    /// An empty queue over `lanes` lanes.
    pub fn new(lanes: u32) -> Self {
        Self {
            lanes_total: lanes,
            ..Self::default()
        }
    }

    /// Lanes the stream is spread over.
    pub fn lanes(&self) -> u32 {
        self.lanes_total
    }

    /// A message in the queue.
    pub fn message(&self, seq: i64) -> Option<&StoredMessage> {
        self.entries.get(&seq).map(|entry| &entry.stored)
    }

    /// Messages in the queue.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Their [`StoredMessage::size`]s summed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The position that may be confirmed: every message before it was acknowledged or
    /// dead-lettered.
    pub fn confirmable(&self) -> Lsn {
        self.confirmable
    }

    /// When the oldest transaction with a message still in the queue committed.
    pub fn oldest_pending_commit(&self) -> Option<i64> {
        self.txs
            .iter()
            .find(|tx| tx.open > 0)
            .map(|tx| tx.commit_micros)
    }

    /// A transaction begins (its messages follow).
    pub fn begin(&mut self, commit_micros: i64) {
        self.txs.push_back(Tx {
            open: 0,
            end: None,
            commit_micros,
        });
    }

    /// A message of the transaction begun last; one outside a transaction (non-transactional)
    /// counts as a transaction of its own that ends at `lsn`.
    pub fn push(&mut self, mut stored: StoredMessage, lane: Lane, lsn: Lsn, commit_micros: i64) {
        let outside = self.txs.back().is_none_or(|tx| tx.end.is_some());
        if outside {
            self.begin(commit_micros);
        }
        stored.seq = self.next_seq;
        self.next_seq += 1;
        let tx = self.first_tx + self.txs.len() as u64 - 1;
        if let Some(last) = self.txs.back_mut() {
            last.open += 1;
        }
        self.bytes += stored.size();
        self.lanes.entry(lane).or_default().push_back(stored.seq);
        self.entries.insert(
            stored.seq,
            Entry {
                stored,
                lane,
                tx,
                not_before: None,
            },
        );
        if outside {
            self.commit(lsn);
        }
    }

    /// The transaction begun last committed; it ends at `end` in the WAL.
    pub fn commit(&mut self, end: Lsn) {
        if let Some(tx) = self.txs.back_mut().filter(|tx| tx.end.is_none()) {
            tx.end = Some(end);
        }
        self.advance();
    }

    /// The server has sent everything up to `wal_end`: with nothing in the queue and no
    /// transaction open, all of it may be confirmed (so that an idle slot does not hold back WAL).
    pub fn caught_up(&mut self, wal_end: Lsn) {
        // Finished transactions are popped as they finish, so an empty list means none is open.
        if self.entries.is_empty() && self.txs.is_empty() {
            self.confirmable = self.confirmable.max(wal_end);
        }
    }

    /// Windows from the idle lanes, as [`outbox_core::LaneStore::claim`] describes them: each
    /// lane's oldest due messages, leaving out a topic of a lane whose oldest message of that topic
    /// waits for a retry; lanes in the order of their oldest message; within the budget.
    pub fn claim(
        &self,
        request: &ClaimRequest<'_>,
        now: Instant,
    ) -> BTreeMap<Lane, Vec<StoredMessage>> {
        let held: HashSet<(&str, Lane)> = if self.delayed == 0 {
            HashSet::new()
        } else {
            self.entries
                .values()
                .filter(|entry| entry.not_before.is_some_and(|at| at > now))
                .map(|entry| (entry.stored.message.topic.as_str(), entry.lane))
                .collect()
        };
        let mut heads: Vec<(i64, Lane)> = self
            .lanes
            .iter()
            .filter(|(lane, seqs)| !seqs.is_empty() && !request.busy.contains(lane))
            .filter_map(|(lane, seqs)| seqs.front().map(|seq| (*seq, *lane)))
            .collect();
        heads.sort_unstable();
        let owned = (self.lanes_total as usize).max(1);
        heads.truncate(owned.div_ceil(request.phases.max(1)));
        let mut chosen: Vec<i64> = Vec::new();
        for (_, lane) in &heads {
            let seqs = self.lanes.get(lane).into_iter().flatten();
            chosen.extend(
                seqs.filter(|seq| {
                    self.entries.get(seq).is_some_and(|entry| {
                        !held.contains(&(entry.stored.message.topic.as_str(), *lane))
                    })
                })
                .take(request.window)
                .copied(),
            );
        }
        chosen.sort_unstable();
        let (mut messages, mut bytes) = (0usize, 0u64);
        let mut windows: BTreeMap<Lane, Vec<StoredMessage>> = BTreeMap::new();
        for seq in chosen {
            let Some(entry) = self.entries.get(&seq) else {
                continue;
            };
            let size = entry.stored.size();
            if !request.admits(messages, bytes, size) {
                break;
            }
            messages += 1;
            bytes += size;
            windows
                .entry(entry.lane)
                .or_default()
                .push(entry.stored.clone());
        }
        windows
    }

    /// Applies a settlement whose dead letters are already stored; returns the seqs it changed
    /// (published, retried, dead-lettered), leaving out those no longer in the queue.
    pub fn settle(&mut self, settlement: &Settlement, now: Instant) -> [Vec<i64>; 3] {
        let published = settlement
            .published
            .iter()
            .copied()
            .filter(|seq| self.remove(*seq))
            .collect();
        let dead = settlement
            .dead_letters
            .iter()
            .map(|dead| dead.seq)
            .filter(|seq| self.remove(*seq))
            .collect();
        let mut retried = Vec::new();
        for retry in &settlement.retries {
            if let Some(entry) = self.entries.get_mut(&retry.seq) {
                entry.stored.attempts = retry.attempts;
                if entry.not_before.is_none() {
                    self.delayed += 1;
                }
                entry.not_before = Some(now + retry.delay);
                retried.push(retry.seq);
            }
        }
        self.advance();
        [published, retried, dead]
    }

    fn remove(&mut self, seq: i64) -> bool {
        let Some(entry) = self.entries.remove(&seq) else {
            return false;
        };
        self.bytes -= entry.stored.size();
        if entry.not_before.is_some() {
            self.delayed -= 1;
        }
        if let Some(seqs) = self.lanes.get_mut(&entry.lane) {
            // A settled window is the front of its lane, unless a retry waits before it.
            if seqs.front() == Some(&seq) {
                seqs.pop_front();
            } else if let Some(at) = seqs.iter().position(|s| *s == seq) {
                seqs.remove(at);
            }
            if seqs.is_empty() {
                self.lanes.remove(&entry.lane);
            }
        }
        if let Some(index) = entry.tx.checked_sub(self.first_tx)
            && let Some(tx) = self.txs.get_mut(index as usize)
        {
            tx.open -= 1;
        }
        true
    }

    /// Pops the finished transactions at the front and moves the confirmable position past them.
    fn advance(&mut self) {
        while let Some(tx) = self.txs.front() {
            match tx.end {
                Some(end) if tx.open == 0 => {
                    self.confirmable = self.confirmable.max(end);
                    self.txs.pop_front();
                    self.first_tx += 1;
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use outbox_core::{DeadLetter, Message, Retry};

    use super::*;

    fn stored(topic: &str, key: &str) -> StoredMessage {
        StoredMessage {
            seq: 0,
            attempts: 0,
            message: Message::builder(topic)
                .key(key)
                .bytes(b"x".to_vec(), "text/plain")
                .expect("valid"),
        }
    }

    fn request(busy: &BTreeSet<Lane>) -> ClaimRequest<'_> {
        ClaimRequest {
            busy,
            max_messages: 100,
            max_bytes: u64::MAX,
            window: 10,
            phases: 1,
        }
    }

    fn published(seqs: &[i64]) -> Settlement {
        Settlement {
            published: seqs.to_vec(),
            ..Settlement::default()
        }
    }

    #[test]
    fn a_transaction_is_confirmed_only_once_it_and_every_earlier_one_are_settled() {
        let mut queue = Queue::new(4);
        let now = Instant::now();
        queue.begin(1);
        queue.push(stored("t", "a"), 0, 100, 1);
        queue.push(stored("t", "b"), 1, 110, 1);
        queue.commit(200);
        queue.begin(2);
        queue.push(stored("t", "c"), 2, 210, 2);
        queue.commit(300);
        assert_eq!(queue.confirmable(), 0);
        // The second transaction finishes first: nothing may be confirmed yet.
        queue.settle(&published(&[2]), now);
        assert_eq!(queue.confirmable(), 0);
        queue.settle(&published(&[0]), now);
        assert_eq!(
            queue.confirmable(),
            0,
            "half of the first transaction is not enough"
        );
        assert_eq!(queue.oldest_pending_commit(), Some(1));
        queue.settle(&published(&[1]), now);
        assert_eq!(queue.confirmable(), 300);
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.oldest_pending_commit(), None);
    }

    #[test]
    fn dead_letters_count_as_settled_and_retries_do_not() {
        let mut queue = Queue::new(4);
        let now = Instant::now();
        queue.begin(1);
        queue.push(stored("t", "a"), 0, 100, 1);
        queue.push(stored("t", "b"), 0, 110, 1);
        queue.commit(200);
        let settlement = Settlement {
            retries: vec![Retry {
                seq: 1,
                attempts: 1,
                delay: Duration::from_secs(60),
                error: "e".into(),
            }],
            dead_letters: vec![DeadLetter {
                seq: 0,
                attempts: 3,
                error: "e".into(),
            }],
            ..Settlement::default()
        };
        assert_eq!(queue.settle(&settlement, now), [vec![], vec![1], vec![0]]);
        assert_eq!(queue.confirmable(), 0);
        queue.settle(&published(&[1]), now);
        assert_eq!(queue.confirmable(), 200);
    }

    #[test]
    fn a_lane_gives_its_oldest_messages_and_a_retry_holds_back_only_its_topic() {
        let mut queue = Queue::new(4);
        let now = Instant::now();
        queue.begin(1);
        queue.push(stored("t", "a"), 0, 1, 1);
        queue.push(stored("u", "a"), 0, 2, 1);
        queue.push(stored("t", "a"), 0, 3, 1);
        queue.push(stored("t", "b"), 1, 4, 1);
        queue.commit(10);
        let busy = BTreeSet::from([1]);
        let windows = queue.claim(&request(&busy), now);
        assert_eq!(
            windows.keys().copied().collect::<Vec<_>>(),
            vec![0],
            "lane 1 is busy"
        );
        let seqs: Vec<i64> = windows[&0].iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2]);

        queue.settle(
            &Settlement {
                published: vec![1],
                retries: vec![Retry {
                    seq: 0,
                    attempts: 1,
                    delay: Duration::from_secs(60),
                    error: "e".into(),
                }],
                ..Settlement::default()
            },
            now,
        );
        let windows = queue.claim(&request(&BTreeSet::new()), now);
        assert!(
            !windows.contains_key(&0),
            "topic t of lane 0 waits, and nothing else is left there"
        );
        assert_eq!(windows[&1].len(), 1);
        let later = queue.claim(&request(&BTreeSet::new()), now + Duration::from_secs(61));
        let seqs: Vec<i64> = later[&0].iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![0, 2], "once due, in order again");
    }

    #[test]
    fn an_idle_stream_is_confirmed_up_to_what_the_server_sent_and_a_busy_one_is_not() {
        let mut queue = Queue::new(4);
        queue.caught_up(50);
        assert_eq!(queue.confirmable(), 50);
        queue.begin(1);
        queue.push(stored("t", "a"), 0, 60, 1);
        queue.commit(70);
        queue.caught_up(80);
        assert_eq!(queue.confirmable(), 50, "a message is still unsettled");
        queue.settle(&published(&[0]), Instant::now());
        assert_eq!(queue.confirmable(), 70);
        queue.caught_up(80);
        assert_eq!(queue.confirmable(), 80);
    }

    #[test]
    fn a_non_transactional_message_is_a_transaction_of_its_own() {
        let mut queue = Queue::new(4);
        queue.push(stored("t", "a"), 0, 60, 1);
        assert_eq!(queue.len(), 1);
        queue.settle(&published(&[0]), Instant::now());
        assert_eq!(queue.confirmable(), 60);
    }

    #[test]
    fn the_budget_is_taken_in_stream_order_and_the_first_message_whatever_its_size() {
        let mut queue = Queue::new(4);
        queue.begin(1);
        for (lane, key) in [(0, "a"), (1, "b"), (0, "a"), (1, "b")] {
            queue.push(stored("t", key), lane, 1, 1);
        }
        queue.commit(10);
        let busy = BTreeSet::new();
        let mut small = request(&busy);
        small.max_messages = 3;
        let windows = queue.claim(&small, Instant::now());
        let seqs: Vec<i64> = windows.values().flatten().map(|m| m.seq).collect();
        assert_eq!(seqs.len(), 3);
        assert!(
            !seqs.contains(&3),
            "the newest message is the one left out: {seqs:?}"
        );
        small.max_messages = 100;
        small.max_bytes = 1;
        assert_eq!(
            queue
                .claim(&small, Instant::now())
                .values()
                .flatten()
                .count(),
            1
        );
    }
}
