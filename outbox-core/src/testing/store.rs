//! The store double: an outbox in memory, with the lanes, windows, retries and leases of the
//! PostgreSQL store, and a record of the engine's violations of the store contract.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::fence::Fence;
use crate::lane::slot_for;
use crate::message::Message;
use crate::store::{
    ClaimRequest, DeadLetter, Lane, LaneStore, Lease, Settled, Settlement, StoredMessage, WakeUps,
    Window,
};
use crate::sync::lock;

/// An outbox held in memory. Clones share it.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<StoreState>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_lanes(8)
    }
}

#[derive(Debug)]
struct Row {
    stored: StoredMessage,
    lane: Lane,
    not_before: Option<Instant>,
}

#[derive(Debug)]
struct StoreState {
    lanes: u32,
    next_seq: i64,
    rows: Vec<Row>,
    dead_letters: Vec<(StoredMessage, DeadLetter)>,
    owned: BTreeSet<Lane>,
    draining: BTreeSet<Lane>,
    token: u64,
    fence: Fence,
    /// The current session's windows not yet settled, by lane.
    outstanding: BTreeMap<Lane, BTreeSet<i64>>,
    lease: Option<Duration>,
    failing_settles: u32,
    failing_claims: u32,
    claims: usize,
    violations: Vec<String>,
}

/// A store failure injected by a test.
#[derive(Debug, thiserror::Error)]
#[error("injected store failure")]
pub struct InjectedFailure;

impl MemoryStore {
    /// An empty outbox of 8 lanes, all owned by the relay.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty outbox of `lanes` lanes (at least 1), all owned by the relay.
    pub fn with_lanes(lanes: u32) -> Self {
        let lanes = lanes.max(1);
        Self {
            inner: Arc::new(Mutex::new(StoreState {
                lanes,
                next_seq: 0,
                rows: Vec::new(),
                dead_letters: Vec::new(),
                owned: (0..lanes).collect(),
                draining: BTreeSet::new(),
                token: 1,
                fence: Fence::unbounded(),
                outstanding: BTreeMap::new(),
                lease: None,
                failing_settles: 0,
                failing_claims: 0,
                claims: 0,
                violations: Vec::new(),
            })),
            wake: Arc::default(),
        }
    }

    /// Reports `lease` as the store's lease (the double never ends a session by itself).
    #[must_use]
    pub fn with_lease(self, lease: Duration) -> Self {
        lock(&self.inner).lease = Some(lease);
        self
    }

    /// Appends messages, as a committed transaction would, and wakes the relay.
    pub fn enqueue(&self, messages: impl IntoIterator<Item = Message>) {
        let mut state = lock(&self.inner);
        for message in messages {
            state.next_seq += 1;
            let seq = state.next_seq;
            let lane = slot_for(message.key.as_deref(), &message.id) % state.lanes;
            state.rows.push(Row {
                stored: StoredMessage {
                    seq,
                    attempts: 0,
                    message,
                },
                lane,
                not_before: None,
            });
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Messages still waiting in the outbox, in `seq` order.
    pub fn pending(&self) -> Vec<StoredMessage> {
        lock(&self.inner)
            .rows
            .iter()
            .map(|row| row.stored.clone())
            .collect()
    }

    /// Messages parked as dead letters, with their failure.
    pub fn dead_letters(&self) -> Vec<(StoredMessage, DeadLetter)> {
        lock(&self.inner).dead_letters.clone()
    }

    /// The lane `message` belongs to in this store.
    pub fn lane_of(&self, message: &Message) -> Lane {
        slot_for(message.key.as_deref(), &message.id) % lock(&self.inner).lanes
    }

    /// The fence of the current session.
    pub fn fence(&self) -> Fence {
        lock(&self.inner).fence.clone()
    }

    /// Loses the session, as when the database ends it: its fence expires, its windows can no
    /// longer be settled, and a new session (with the same lanes) starts.
    pub fn lose_lease(&self) {
        lock(&self.inner).lose_lease();
    }

    /// Gives `lanes` up, as a rebalance does: they are claimed no more and released once no window
    /// of theirs is in flight.
    pub fn give_up(&self, lanes: impl IntoIterator<Item = Lane>) {
        let mut state = lock(&self.inner);
        for lane in lanes {
            if state.owned.contains(&lane) {
                state.draining.insert(lane);
            }
        }
    }

    /// Takes `lanes` (back): claims include them again once any drain of theirs is over.
    pub fn take(&self, lanes: impl IntoIterator<Item = Lane>) {
        let mut state = lock(&self.inner);
        for lane in lanes {
            if lane < state.lanes && !state.draining.contains(&lane) {
                state.owned.insert(lane);
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// The lanes owned now (draining ones included).
    pub fn owned(&self) -> BTreeSet<Lane> {
        lock(&self.inner).owned.clone()
    }

    /// How many claims the relay made.
    pub fn claims(&self) -> usize {
        lock(&self.inner).claims
    }

    /// Every breach of the store's contract the relay committed (empty for a correct engine).
    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner).violations.clone()
    }

    /// Makes the next `count` settlements fail and lose the session, as a dropped database
    /// connection does.
    pub fn fail_next_settles(&self, count: u32) {
        lock(&self.inner).failing_settles = count;
    }

    /// Makes the next `count` claims fail with a statement error; the session survives.
    pub fn fail_next_claims(&self, count: u32) {
        lock(&self.inner).failing_claims = count;
    }
}

impl StoreState {
    fn lose_lease(&mut self) {
        self.fence.expire();
        self.fence = Fence::unbounded();
        self.token += 1;
        self.outstanding.clear();
    }

    fn claim(&mut self, request: &ClaimRequest<'_>) -> Vec<Window> {
        self.claims += 1;
        let released: Vec<Lane> = self
            .draining
            .iter()
            .filter(|lane| !request.busy.contains(lane))
            .copied()
            .collect();
        for lane in released {
            self.draining.remove(&lane);
            self.owned.remove(&lane);
        }
        let now = Instant::now();
        let blocked: HashSet<(&str, Lane)> = self
            .rows
            .iter()
            .filter(|row| row.not_before.is_some_and(|at| at > now))
            .map(|row| (row.stored.message.topic.as_str(), row.lane))
            .collect();
        let idle = |lane: &Lane| {
            self.owned.contains(lane)
                && !self.draining.contains(lane)
                && !request.busy.contains(lane)
        };
        // Each idle lane's oldest due rows, lanes in the order of their oldest row.
        let mut heads: Vec<Lane> = Vec::new();
        let mut per_lane: BTreeMap<Lane, Vec<usize>> = BTreeMap::new();
        for (index, row) in self.rows.iter().enumerate() {
            let topic = row.stored.message.topic.as_str();
            if !idle(&row.lane) || blocked.contains(&(topic, row.lane)) {
                continue;
            }
            let rows = per_lane.entry(row.lane).or_default();
            if rows.is_empty() {
                heads.push(row.lane);
            }
            if rows.len() < request.window {
                rows.push(index);
            }
        }
        let most_lanes = self.owned.len().div_ceil(request.phases.max(1));
        heads.truncate(most_lanes);
        let mut chosen: Vec<usize> = heads
            .iter()
            .flat_map(|lane| per_lane.get(lane).cloned().unwrap_or_default())
            .collect();
        chosen.sort_unstable();
        let (mut messages, mut bytes) = (0usize, 0u64);
        let mut windows: BTreeMap<Lane, Vec<StoredMessage>> = BTreeMap::new();
        for index in chosen {
            let row = &self.rows[index];
            let size = row.stored.size();
            if !request.admits(messages, bytes, size) {
                break;
            }
            messages += 1;
            bytes += size;
            windows
                .entry(row.lane)
                .or_default()
                .push(row.stored.clone());
        }
        let mut claimed = Vec::new();
        for (lane, messages) in windows {
            if self.outstanding.contains_key(&lane) {
                self.violations.push(format!(
                    "lane {lane} was claimed while a window of it was still unsettled"
                ));
            }
            self.outstanding
                .insert(lane, messages.iter().map(|m| m.seq).collect());
            claimed.push(Window {
                lane,
                token: self.token,
                fence: self.fence.clone(),
                messages,
            });
        }
        claimed
    }

    /// Takes `seq` out of its outstanding window; records a violation when it is in none.
    fn take_outstanding(&mut self, seq: i64) {
        let lane = self
            .outstanding
            .iter()
            .find(|(_, seqs)| seqs.contains(&seq))
            .map(|(lane, _)| *lane);
        let Some(lane) = lane else {
            self.violations.push(format!(
                "message {seq} was settled outside an unsettled window (twice, or never claimed)"
            ));
            return;
        };
        if let Some(seqs) = self.outstanding.get_mut(&lane) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.outstanding.remove(&lane);
            }
        }
    }

    fn settle(&mut self, settlement: &Settlement) -> Settled {
        let mut settled = Settled::default();
        if settlement.token != self.token {
            return settled;
        }
        for seq in settlement
            .published
            .iter()
            .chain(settlement.retries.iter().map(|r| &r.seq))
            .chain(settlement.dead_letters.iter().map(|d| &d.seq))
        {
            self.take_outstanding(*seq);
        }
        let published: HashSet<i64> = settlement.published.iter().copied().collect();
        self.rows.retain(|row| {
            let gone = published.contains(&row.stored.seq);
            if gone {
                settled.published.push(row.stored.seq);
            }
            !gone
        });
        let now = Instant::now();
        for retry in &settlement.retries {
            if let Some(row) = self.rows.iter_mut().find(|r| r.stored.seq == retry.seq) {
                row.stored.attempts = retry.attempts;
                row.not_before = Some(now + retry.delay);
                settled.retried.push(retry.seq);
            }
        }
        for dead in &settlement.dead_letters {
            if let Some(index) = self.rows.iter().position(|r| r.stored.seq == dead.seq) {
                let row = self.rows.remove(index);
                self.dead_letters.push((row.stored, dead.clone()));
                settled.dead_lettered.push(dead.seq);
            }
        }
        settled
    }
}

impl LaneStore for MemoryStore {
    type Error = InjectedFailure;

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Window>, InjectedFailure> {
        let mut state = lock(&self.inner);
        if state.failing_claims > 0 {
            state.failing_claims -= 1;
            return Err(InjectedFailure);
        }
        Ok(state.claim(&request))
    }

    async fn settle(&self, settlement: &Settlement) -> Result<Settled, InjectedFailure> {
        let mut state = lock(&self.inner);
        if state.failing_settles > 0 {
            state.failing_settles -= 1;
            state.lose_lease();
            return Err(InjectedFailure);
        }
        Ok(state.settle(settlement))
    }
}

impl WakeUps for MemoryStore {
    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.wake.notified()).await;
    }
}

impl Lease for MemoryStore {
    fn lease(&self) -> Option<Duration> {
        lock(&self.inner).lease
    }
}
