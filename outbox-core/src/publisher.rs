//! The publishing side: the broker the relay hands messages to.

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::BoxError;
use crate::fence::Fence;
use crate::store::StoredMessage;

/// Why a message could not be published, as far as the relay's next step is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The broker is unreachable, timed out, or has no leader for the partition: nothing is wrong
    /// with the message. Retried with backoff for as long as it lasts; never a dead letter.
    Unavailable,
    /// The broker refused this record for a reason that may pass (a retriable error code); counted
    /// against the retry policy's attempts.
    Transient,
    /// The record is larger than the producer or the broker accepts.
    MessageTooLarge,
    /// The topic does not exist (and is not auto-created) or cannot take this record.
    UnknownTopic,
    /// The credentials do not allow writing to the topic.
    Unauthorized,
    /// The broker rejected the record for another reason that a retry will not change.
    Rejected,
    /// Not sent: the relay's lease expired first. The lane's next owner publishes the message.
    Fenced,
}

impl PublishErrorKind {
    /// Whether failures of this kind count towards the dead-letter threshold. Outages do not: a
    /// message is not poison because the broker was down.
    pub fn counts_as_attempt(self) -> bool {
        !matches!(self, Self::Unavailable | Self::Fenced)
    }

    /// Whether the same record may succeed if sent again later.
    pub fn is_retriable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Transient | Self::Fenced)
    }
}

/// A message the broker did not acknowledge, with the classified reason.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} publish error")]
pub struct PublishError {
    kind: PublishErrorKind,
    #[source]
    source: BoxError,
}

impl PublishError {
    /// Wraps the broker client's error with its classification.
    pub fn new(kind: PublishErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    /// The classification that decides between retry and dead letter.
    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// Whether the same record may succeed if sent again later.
    pub fn is_retriable(&self) -> bool {
        self.kind.is_retriable()
    }

    /// A one-line description with the cause chain, as stored next to a failed message.
    pub fn describe(&self) -> String {
        format!(
            "{:?}: {}",
            self.kind,
            crate::relay::error_chain(&*self.source)
        )
    }
}

/// The broker's answers to messages already handed over: one outcome per message, in their order.
/// Owns everything it needs, so that several can be pending while the relay goes on.
pub type Acknowledgements = BoxFuture<'static, Vec<Result<(), PublishError>>>;

/// Sends messages to the broker.
///
/// Handing over and acknowledgement are separate steps, so that the relay can hand over the next
/// window while the broker is still acknowledging earlier ones. Implementations keep the order of
/// what they were handed per key: a message's successors with the same key are never acknowledged
/// ahead of it unless it failed.
pub trait Publisher: Send + Sync {
    /// Hands `messages` to the broker client in order, without waiting for any acknowledgement, and
    /// returns once every message is handed over or refused, with the acknowledgements to come.
    ///
    /// Before handing each message over the publisher checks `fence`; once it has expired (this
    /// relay may have lost the lane) that message and every later one are not sent and come back as
    /// [`PublishErrorKind::Fenced`], also when the fence is seen expired while waiting for room in
    /// the client's queue.
    fn send(
        &self,
        messages: &[StoredMessage],
        fence: &Fence,
    ) -> impl Future<Output = Acknowledgements> + Send;

    /// Hands `messages` over and waits for every acknowledgement.
    fn publish(
        &self,
        messages: &[StoredMessage],
        fence: &Fence,
    ) -> impl Future<Output = Vec<Result<(), PublishError>>> + Send {
        async move { self.send(messages, fence).await.await }
    }

    /// The longest a handed-over message can take until the broker acknowledged or refused it;
    /// `None` when unbounded. [`crate::Relay::new`] checks it against the store's lease.
    fn send_timeout(&self) -> Option<Duration> {
        None
    }
}
