//! In-memory doubles of the store and the publisher, for tests of code built on the relay engine.
//!
//! They keep the contract of the real adapters that matters to the engine: the store hands out due
//! messages in `seq` order and holds back every message whose key waits for a retry; the publisher
//! records what it acknowledged, in order, and fails the messages a test script tells it to.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;

use crate::fence::Fence;
use crate::message::Message;
use crate::publisher::{PublishError, PublishErrorKind, Publisher};
use crate::store::{DeadLetter, RelayStore, Settlement, StoredMessage};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An outbox held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<StoreState>>,
    wake: Arc<tokio::sync::Notify>,
    fence: Fence,
}

#[derive(Debug, Default)]
struct StoreState {
    next_seq: i64,
    rows: Vec<(StoredMessage, Option<chrono::DateTime<Utc>>)>,
    dead_letters: Vec<(StoredMessage, DeadLetter)>,
    failing_settles: u32,
}

/// A store failure injected by a test.
#[derive(Debug, thiserror::Error)]
#[error("injected store failure")]
pub struct InjectedFailure;

impl MemoryStore {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends messages, as a committed transaction would, and wakes the relay.
    pub fn enqueue(&self, messages: impl IntoIterator<Item = Message>) {
        let mut state = lock(&self.inner);
        for message in messages {
            state.next_seq += 1;
            let seq = state.next_seq;
            state.rows.push((
                StoredMessage {
                    seq,
                    attempts: 0,
                    message,
                },
                None,
            ));
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Messages still waiting in the outbox.
    pub fn pending(&self) -> Vec<StoredMessage> {
        lock(&self.inner)
            .rows
            .iter()
            .map(|(row, _)| row.clone())
            .collect()
    }

    /// Messages parked as dead letters, with their failure.
    pub fn dead_letters(&self) -> Vec<(StoredMessage, DeadLetter)> {
        lock(&self.inner).dead_letters.clone()
    }

    /// The store's lease fence (never expires unless a test expires it).
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Due messages in order; with `in_flight`, none of those, and no key that has a message
    /// waiting for a retry.
    fn due(&self, limit: usize, in_flight: Option<&[i64]>) -> Vec<StoredMessage> {
        let state = lock(&self.inner);
        let now = Utc::now();
        let mut blocked: HashSet<Option<Vec<u8>>> = HashSet::new();
        let mut batch = Vec::new();
        for (row, not_before) in &state.rows {
            let key = row.message.key.clone();
            if blocked.contains(&key) {
                continue;
            }
            let retrying = match in_flight {
                Some(_) => not_before.is_some(),
                None => not_before.is_some_and(|at| at > now),
            };
            if retrying {
                blocked.insert(key);
                continue;
            }
            if in_flight.is_some_and(|in_flight| in_flight.contains(&row.seq)) {
                continue;
            }
            batch.push(row.clone());
            if batch.len() == limit {
                break;
            }
        }
        batch
    }

    /// Makes the next `count` settlements fail, as a database outage would.
    pub fn fail_next_settles(&self, count: u32) {
        lock(&self.inner).failing_settles = count;
    }
}

impl RelayStore for MemoryStore {
    type Error = InjectedFailure;

    async fn claim(&self, limit: usize) -> Result<Vec<StoredMessage>, InjectedFailure> {
        Ok(self.due(limit, None))
    }

    async fn claim_after(
        &self,
        limit: usize,
        in_flight: &[i64],
    ) -> Result<Vec<StoredMessage>, InjectedFailure> {
        Ok(self.due(limit, Some(in_flight)))
    }

    async fn settle(&self, settlement: &Settlement) -> Result<u64, InjectedFailure> {
        let mut state = lock(&self.inner);
        if state.failing_settles > 0 {
            state.failing_settles -= 1;
            return Err(InjectedFailure);
        }
        let mut changed = 0;
        let published: HashSet<i64> = settlement.published.iter().copied().collect();
        let before = state.rows.len();
        state.rows.retain(|(row, _)| !published.contains(&row.seq));
        changed += (before - state.rows.len()) as u64;
        for retry in &settlement.retries {
            if let Some((row, not_before)) =
                state.rows.iter_mut().find(|(row, _)| row.seq == retry.seq)
            {
                row.attempts = retry.attempts;
                *not_before = Some(retry.not_before);
                changed += 1;
            }
        }
        for dead in &settlement.dead_letters {
            if let Some(index) = state.rows.iter().position(|(row, _)| row.seq == dead.seq) {
                let (row, _) = state.rows.remove(index);
                state.dead_letters.push((row, dead.clone()));
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.wake.notified()).await;
    }

    fn fence(&self) -> Fence {
        self.fence.clone()
    }
}

type FailureScript = Box<dyn FnMut(&StoredMessage) -> Option<PublishErrorKind> + Send>;

/// A broker double: acknowledges every message unless the failure script says otherwise.
#[derive(Clone)]
pub struct MemoryPublisher {
    published: Arc<Mutex<Vec<Message>>>,
    script: Arc<Mutex<FailureScript>>,
}

impl Default for MemoryPublisher {
    fn default() -> Self {
        Self::failing(|_| None)
    }
}

impl std::fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPublisher").finish_non_exhaustive()
    }
}

impl MemoryPublisher {
    /// A publisher that acknowledges everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// A publisher that fails a message with the kind `script` returns for it.
    pub fn failing(
        script: impl FnMut(&StoredMessage) -> Option<PublishErrorKind> + Send + 'static,
    ) -> Self {
        Self {
            published: Arc::default(),
            script: Arc::new(Mutex::new(Box::new(script))),
        }
    }

    /// Every acknowledged message, in acknowledgement order (duplicates included).
    pub fn published(&self) -> Vec<Message> {
        lock(&self.published).clone()
    }
}

impl Publisher for MemoryPublisher {
    async fn publish(
        &self,
        batch: &[StoredMessage],
        fence: &Fence,
    ) -> Vec<Result<(), PublishError>> {
        let mut script = lock(&self.script);
        let mut published = lock(&self.published);
        batch
            .iter()
            .scan(false, |fenced, stored| {
                *fenced = *fenced || !fence.is_valid();
                Some((*fenced, stored))
            })
            .map(|(fenced, stored)| {
                if fenced {
                    return Err(PublishError::new(PublishErrorKind::Fenced, "lease expired"));
                }
                match script(stored) {
                    Some(kind) => Err(PublishError::new(kind, "scripted failure")),
                    None => {
                        published.push(stored.message.clone());
                        Ok(())
                    }
                }
            })
            .collect()
    }
}
