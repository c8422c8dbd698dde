//! The broker double: acknowledges, fails or delays what it is handed as its scripts say, and
//! records what it acknowledged.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;

use crate::fence::Fence;
use crate::message::Message;
use crate::publisher::{Acknowledgements, PublishError, PublishErrorKind, Publisher};
use crate::store::StoredMessage;
use crate::sync::lock;

type FailureScript = Box<dyn FnMut(&StoredMessage) -> Option<PublishErrorKind> + Send>;
type DelayScript = Box<dyn FnMut(&[StoredMessage]) -> Duration + Send>;

/// A broker double: acknowledges every message unless the failure script says otherwise, after the
/// delay the delay script gives a hand-over (none by default).
#[derive(Clone)]
pub struct MemoryPublisher {
    published: Arc<Mutex<Vec<Message>>>,
    script: Arc<Mutex<FailureScript>>,
    delay: Arc<Mutex<DelayScript>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    send_timeout: Option<Duration>,
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

/// Counts a hand-over as in flight until its acknowledgements are in or dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MemoryPublisher {
    /// A publisher that acknowledges everything at once.
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
            delay: Arc::new(Mutex::new(Box::new(|_| Duration::ZERO))),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
            send_timeout: None,
        }
    }

    /// Acknowledges each hand-over after the delay `script` returns for its messages.
    #[must_use]
    pub fn with_ack_delay(
        self,
        script: impl FnMut(&[StoredMessage]) -> Duration + Send + 'static,
    ) -> Self {
        *lock(&self.delay) = Box::new(script);
        self
    }

    /// Reports `timeout` as the publisher's send timeout.
    #[must_use]
    pub fn with_send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// Every acknowledged message, in acknowledgement order (duplicates included).
    pub fn published(&self) -> Vec<Message> {
        lock(&self.published).clone()
    }

    /// The most hand-overs that were waiting for their acknowledgements at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }
}

impl Publisher for MemoryPublisher {
    async fn send(&self, messages: &[StoredMessage], fence: &Fence) -> Acknowledgements {
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut fenced = false;
        let mut failed_keys: HashSet<(&str, &Option<Vec<u8>>)> = HashSet::new();
        {
            let mut script = lock(&self.script);
            for stored in messages {
                fenced = fenced || !fence.is_valid();
                let key = (stored.message.topic.as_str(), &stored.message.key);
                let outcome = if fenced {
                    Some((
                        PublishErrorKind::Fenced,
                        "lease expired before the message was sent",
                    ))
                } else if failed_keys.contains(&key) {
                    Some((
                        PublishErrorKind::Unavailable,
                        "an earlier message of the key failed in the same hand-over",
                    ))
                } else {
                    script(stored).map(|kind| (kind, "scripted failure"))
                };
                if outcome.is_some() {
                    failed_keys.insert(key);
                }
                outcomes.push(outcome);
            }
        }
        let delay = (lock(&self.delay))(messages);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let in_flight = InFlight(self.in_flight.clone());
        let published = self.published.clone();
        let messages: Vec<Message> = messages.iter().map(|m| m.message.clone()).collect();
        async move {
            let _in_flight = in_flight;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut log = lock(&published);
            messages
                .into_iter()
                .zip(outcomes)
                .map(|(message, outcome)| match outcome {
                    Some((kind, why)) => Err(PublishError::new(kind, why)),
                    None => {
                        log.push(message);
                        Ok(())
                    }
                })
                .collect()
        }
        .boxed()
    }

    fn send_timeout(&self) -> Option<Duration> {
        self.send_timeout
    }
}
