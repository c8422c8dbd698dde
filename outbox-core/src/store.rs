//! The relay's side of the outbox, as three narrow traits: claiming and settling lane windows
//! ([`LaneStore`]), wake-ups ([`WakeUps`]) and the lease ([`Lease`]). [`RelayStore`] names the three
//! together; every type that has them is one.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use crate::fence::Fence;
use crate::message::Message;

/// A lane: the unit of ordering and of ownership among relays. Every key maps to one lane.
pub type Lane = u32;

/// A message as read back from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in the outbox; publication follows it within a lane.
    pub seq: i64,
    /// How many publish attempts already failed.
    pub attempts: u32,
    /// The message as enqueued.
    pub message: Message,
}

impl StoredMessage {
    /// Roughly what the message occupies in memory and on the wire: payload, key, headers and the
    /// fixed attributes. What the relay's in-flight byte budget counts.
    pub fn size(&self) -> u64 {
        self.message.size()
    }
}

/// The oldest due messages of one lane, claimed together on one session of the store.
///
/// A relay has at most one window per lane: the next one is claimed only once this one's outcome is
/// written back, so that a failure never lets a later message of the lane overtake an earlier one.
#[derive(Debug, Clone)]
pub struct Window {
    /// The lane every message belongs to.
    pub lane: Lane,
    /// The store session the window was claimed on; a settlement names it, and a store that lost
    /// that session since writes nothing of it.
    pub token: u64,
    /// Valid while the store holds the lane for this session.
    pub fence: Fence,
    /// The messages in publish order (by `seq`).
    pub messages: Vec<StoredMessage>,
}

impl Window {
    /// The sum of the messages' [`size`](StoredMessage::size)s.
    pub fn size(&self) -> u64 {
        self.messages.iter().map(StoredMessage::size).sum()
    }
}

/// What a claim may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// Lanes that have a window in flight or a settlement not yet written: the claim takes nothing
    /// from them, and the store gives none of them up.
    pub busy: &'a BTreeSet<Lane>,
    /// Most messages in all.
    pub max_messages: usize,
    /// Most bytes in all (by [`StoredMessage::size`]); the first message is taken whatever its size,
    /// so that an oversized one reaches the publisher and fails there with a clear error.
    pub max_bytes: u64,
    /// Most messages of one lane.
    pub window: usize,
    /// The claim takes at most `ceil(owned lanes / phases)` lanes, so that while one group of windows
    /// waits for the broker the next group can be claimed.
    pub phases: usize,
}

impl ClaimRequest<'_> {
    /// Whether a claim that took `messages` messages of `bytes` bytes so far may take one more of
    /// `size` bytes: within both budgets, and the first one whatever its size.
    pub fn admits(&self, messages: usize, bytes: u64, size: u64) -> bool {
        messages < self.max_messages && (messages == 0 || bytes + size <= self.max_bytes)
    }
}

/// A failed message that will be offered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The message's position.
    pub seq: i64,
    /// Failed attempts so far, this one included.
    pub attempts: u32,
    /// Not offered again before this much time has passed on the store's clock. Its topic in its
    /// lane waits too, keeping per-key order.
    pub delay: Duration,
    /// The publish error, as text.
    pub error: String,
}

/// A message moved out of the outbox into the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message's position.
    pub seq: i64,
    /// Failed attempts, this one included.
    pub attempts: u32,
    /// The last publish error, as text.
    pub error: String,
}

/// What happened to the windows of one session, written back in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// The session the windows were claimed on ([`Window::token`]).
    pub token: u64,
    /// Acknowledged by the broker: remove (or mark) them.
    pub published: Vec<i64>,
    /// Failed, to be tried again later.
    pub retries: Vec<Retry>,
    /// Failed for good: park them with their error.
    pub dead_letters: Vec<DeadLetter>,
}

impl Settlement {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.published.is_empty() && self.retries.is_empty() && self.dead_letters.is_empty()
    }

    /// How many messages the settlement names.
    pub fn len(&self) -> usize {
        self.published.len() + self.retries.len() + self.dead_letters.len()
    }
}

/// What a settlement actually wrote: the messages of each kind it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Removed (or marked published).
    pub published: Vec<i64>,
    /// Scheduled for a retry.
    pub retried: Vec<i64>,
    /// Moved to the dead letters.
    pub dead_lettered: Vec<i64>,
}

impl Settled {
    /// How many messages were written.
    pub fn len(&self) -> usize {
        self.published.len() + self.retried.len() + self.dead_lettered.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Claims lane windows and writes back their outcome.
pub trait LaneStore: Send + Sync {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Claims windows of due messages from the idle lanes this relay owns (those not in
    /// `request.busy`): each window is a lane's oldest messages in `seq` order, leaving out every
    /// topic of a lane whose oldest message of that topic waits for a retry. Also where the store
    /// takes and gives up lanes: a lane to be given up is claimed no more, and released once it is
    /// no longer busy.
    fn claim(
        &self,
        request: ClaimRequest<'_>,
    ) -> impl Future<Output = Result<Vec<Window>, Self::Error>> + Send;

    /// Writes back the outcome of windows claimed on session `settlement.token`, all or nothing, and
    /// returns what it wrote. A store that no longer holds that session writes nothing.
    fn settle(
        &self,
        settlement: &Settlement,
    ) -> impl Future<Output = Result<Settled, Self::Error>> + Send;
}

/// Tells the relay when new messages may be waiting.
pub trait WakeUps: Send + Sync {
    /// Returns when new messages may be waiting, or after `max_wait` at the latest.
    fn wait_for_work(&self, max_wait: Duration) -> impl Future<Output = ()> + Send;
}

/// The lease under which the relay owns its lanes.
pub trait Lease: Send + Sync {
    /// How long a relay that stopped answering keeps its lanes; `None` for stores without leases.
    /// A publisher's send timeout must stay well inside it (see [`crate::Relay::new`]).
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// Gives up whatever the store holds for this relay (lanes, connections) when the relay stops,
    /// so that other relays take over at once. Default: nothing to give up.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Everything the relay engine needs of a store.
pub trait RelayStore: LaneStore + WakeUps + Lease {}

impl<T: LaneStore + WakeUps + Lease> RelayStore for T {}
