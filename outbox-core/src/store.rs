//! The relay's side of the outbox: claim, settle, wait for work.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::message::Message;

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

/// A failed message that will be offered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The message's position.
    pub seq: i64,
    /// Failed attempts so far, this one included.
    pub attempts: u32,
    /// Not offered again before this time. Its lane waits too, keeping per-key order.
    pub not_before: DateTime<Utc>,
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

/// What happened to a claimed batch, written back in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
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
}

/// The relay's view of the outbox.
pub trait RelayStore: Send + Sync {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Claims up to `limit` messages that are due, in the order they must be published: by `seq`
    /// within each lane this relay owns, skipping lanes whose head message waits for a retry.
    fn claim(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, Self::Error>> + Send;

    /// Claims the batch that follows an in-flight one, while the broker is still acknowledging it:
    /// what [`claim`](Self::claim) would return if the `in_flight` messages were already gone, but
    /// leaving out every lane that has a message waiting for a retry. It must not change lane
    /// ownership (the in-flight batch's lanes stay this relay's). Default: nothing, which turns
    /// pipelining off.
    fn claim_after(
        &self,
        limit: usize,
        in_flight: &[i64],
    ) -> impl Future<Output = Result<Vec<StoredMessage>, Self::Error>> + Send {
        let _ = (limit, in_flight);
        async { Ok(Vec::new()) }
    }

    /// Writes back the outcome of a batch. Returns how many messages it changed; fewer than the
    /// settlement names means this relay no longer owned some of them (another relay took over).
    fn settle(
        &self,
        settlement: &Settlement,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Returns when new messages may be waiting, or after `max_wait` at the latest.
    fn wait_for_work(&self, max_wait: Duration) -> impl Future<Output = ()> + Send;

    /// The fence guarding this relay's claims: valid while the store knows the relay still owns the
    /// lanes it claimed from. Default: a fence that never expires (no leases).
    fn fence(&self) -> crate::Fence {
        crate::Fence::unbounded()
    }

    /// Gives up whatever the store holds for this relay (lanes, connections) when the relay stops,
    /// so that other relays take over at once. Default: nothing to give up.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
