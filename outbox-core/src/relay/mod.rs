//! The relay engine: a loop over lane states.
//!
//! The engine is generic over a [`RelayStore`] and a [`Publisher`]. It claims *windows* (the oldest
//! due messages of one lane) from the lanes that have none in flight, hands each window to the
//! publisher at once and goes on claiming while the broker acknowledges: several windows are in
//! flight, bounded by a budget in messages and in bytes, but never two of one lane. Each finished
//! window is settled (acknowledged messages removed, failed ones scheduled for a retry or moved to
//! the dead letters), together with the others that finished by then, in one write; its lane turns
//! idle only once that write succeeded. A message leaves the outbox only after the broker
//! acknowledged it, so a crash anywhere leads to re-publication, never to loss. See
//! `docs/guarantees.md` for every window in which a duplicate or a reorder can happen.

mod config;
mod lanes;
mod outcome;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::RelayConfig;

use crate::error::Error;
use crate::metrics;
use crate::publisher::{PublishError, PublishErrorKind, Publisher};
use crate::store::{ClaimRequest, RelayStore, Settlement, Window};
use crate::trace;
use lanes::{LaneTable, Room};

/// Counters of one relay run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Messages acknowledged by the broker and settled.
    pub published: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
    /// Messages moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Windows given up: on shutdown, after the lease was lost, or because their outcome could not
    /// be written back. Their messages stay in the outbox and are published again.
    pub abandoned_windows: u64,
}

/// The relay engine. See the module documentation.
#[derive(Debug)]
pub struct Relay<S, P> {
    store: S,
    publisher: P,
    config: RelayConfig,
}

impl<S: RelayStore, P: Publisher> Relay<S, P> {
    /// Builds a relay over `store` and `publisher`.
    ///
    /// # Errors
    /// [`Error::Config`] when the publisher's send timeout is longer than a fifth of the store's
    /// lease ([`fence::max_send_timeout`](crate::fence::max_send_timeout)), or is unbounded while
    /// the store leases its lanes: a record handed over just before the fence closed could then
    /// reach the broker after another relay took its lane over.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self, Error> {
        check_send_timeout(store.lease(), publisher.send_timeout())?;
        Ok(Self {
            store,
            publisher,
            config,
        })
    }

    /// Runs until `shutdown` is cancelled, then lets the windows in flight finish (for at most the
    /// shutdown grace) and gives up the store's lanes. Store failures (the database restarting, a
    /// lost connection) are logged and retried; they never end the run.
    pub async fn run(&self, shutdown: CancellationToken) -> RelayStats {
        let mut engine = Engine {
            relay: self,
            lanes: LaneTable::new(self.config.max_in_flight, self.config.max_in_flight_bytes),
            pending: FuturesUnordered::new(),
            stats: RelayStats::default(),
        };
        engine.run(&shutdown).await;
        engine.drain().await;
        self.store.close().await;
        tracing::info!(stats = ?engine.stats, "relay stopped");
        engine.stats
    }
}

/// Refuses a send timeout that a paused relay could outlive its lease with.
fn check_send_timeout(lease: Option<Duration>, send: Option<Duration>) -> Result<(), Error> {
    let Some(lease) = lease else {
        return Ok(());
    };
    let limit = crate::fence::max_send_timeout(lease);
    match send {
        None => Err(Error::Config(format!(
            "the publisher does not bound how long a send may take, but the store leases its lanes for {lease:?}: a relay paused past its lease could still send after another relay took its lanes over"
        ))),
        Some(timeout) if timeout > limit => Err(Error::Config(format!(
            "the publisher's send timeout ({timeout:?}) must be at most a fifth of the store's lease ({limit:?} of {lease:?}): a record handed over just before the fence closes must be delivered or failed before another relay can take its lane over"
        ))),
        Some(_) => Ok(()),
    }
}

/// Whether the windows just finished were still covered by their lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    Held,
    Lost,
}

/// A window whose acknowledgements are in, with one outcome per message.
type Finished = (Window, Vec<Result<(), PublishError>>);

/// One run's state: the lane table and the windows waiting for the broker.
struct Engine<'r, S, P> {
    relay: &'r Relay<S, P>,
    lanes: LaneTable,
    pending: FuturesUnordered<BoxFuture<'static, Finished>>,
    stats: RelayStats,
}

impl<S: RelayStore, P: Publisher> Engine<'_, S, P> {
    async fn run(&mut self, shutdown: &CancellationToken) {
        let config = &self.relay.config;
        let mut claim_now = true;
        let mut backoff: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            let done = self.finished();
            if !done.is_empty() {
                claim_now = true;
                if self.settle(done).await == Lease::Lost {
                    backoff = Some(tokio::time::Instant::now() + config.store_backoff);
                }
            }
            let room = self.lanes.room();
            if let (true, None, Some(room)) = (claim_now, backoff, room) {
                match self.claim(room).await {
                    Ok(windows) => claim_now = windows > 0,
                    Err(()) => backoff = Some(tokio::time::Instant::now() + config.store_backoff),
                }
                // A store that answers without waiting must not starve the rest of the runtime.
                tokio::task::yield_now().await;
                continue;
            }
            // Nothing to do at once: wait for a window to finish, for new messages (while there is
            // room for them), or for the end of a backoff.
            let store = &self.relay.store;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(finished) = self.pending.next(), if !self.pending.is_empty() => {
                    let mut done = vec![finished];
                    done.extend(self.finished());
                    claim_now = true;
                    if self.settle(done).await == Lease::Lost {
                        backoff = Some(tokio::time::Instant::now() + config.store_backoff);
                    }
                }
                () = sleep_until(backoff), if backoff.is_some() => {
                    backoff = None;
                    claim_now = true;
                }
                () = store.wait_for_work(config.poll_interval), if backoff.is_none() && room.is_some() => {
                    claim_now = true;
                }
            }
        }
    }

    /// The windows whose acknowledgements are all in by now, without waiting.
    fn finished(&mut self) -> Vec<Finished> {
        let mut done = Vec::new();
        while let Some(Some(finished)) = self.pending.next().now_or_never() {
            done.push(finished);
        }
        done
    }

    /// Claims windows from the idle lanes and hands each to the publisher; returns how many.
    async fn claim(&mut self, room: Room) -> Result<usize, ()> {
        let config = &self.relay.config;
        let request = ClaimRequest {
            busy: self.lanes.busy(),
            max_messages: room.messages.min(config.batch_size),
            max_bytes: room.bytes,
            window: config.window,
            phases: config.phases,
        };
        let windows = match self.relay.store.claim(request).await {
            Ok(windows) => windows,
            Err(error) => {
                metrics::database_error("claim");
                tracing::warn!(error = %error_chain(&error), in_flight = self.pending.len(), "claiming from the outbox failed; the windows in flight go on, claiming again after a backoff");
                return Err(());
            }
        };
        let mut sent = 0;
        for window in windows {
            sent += usize::from(self.send(window).await);
        }
        Ok(sent)
    }

    /// Marks the window's lane busy and hands the window to the publisher; returns whether it did.
    async fn send(&mut self, window: Window) -> bool {
        if window.messages.is_empty() {
            return false;
        }
        if let Err(busy) = self
            .lanes
            .start(window.lane, window.messages.len(), window.size())
        {
            tracing::error!(error = %busy, "the store returned a window of a busy lane; leaving it to a later claim");
            return false;
        }
        let first = window.messages.first().map(|m| m.seq).unwrap_or_default();
        let last = window.messages.last().map(|m| m.seq).unwrap_or_default();
        tracing::debug!(
            lane = window.lane,
            messages = window.messages.len(),
            first_seq = first,
            last_seq = last,
            "publishing a window"
        );
        metrics::batch(window.messages.len());
        let span = tracing::info_span!(
            "outbox.publish",
            lane = window.lane,
            messages = window.messages.len()
        );
        trace::link_to_messages(&span, &window.messages);
        let acks = self
            .relay
            .publisher
            .send(&window.messages, &window.fence)
            .instrument(span.clone())
            .await;
        self.pending.push(
            async move {
                let outcomes = acks.instrument(span).await;
                (window, outcomes)
            }
            .boxed(),
        );
        true
    }

    /// Writes back the outcome of finished windows: those of one store session in one settlement.
    /// Windows whose lease was lost are given up; their lanes turn idle either way. Returns whether
    /// a lease was lost (the store then needs a moment to open a new session).
    async fn settle(&mut self, done: Vec<Finished>) -> Lease {
        let mut lease = Lease::Held;
        let mut sessions: BTreeMap<u64, (Settlement, Vec<Window>)> = BTreeMap::new();
        for (window, outcomes) in done {
            let fenced = !window.fence.is_valid()
                || outcomes
                    .iter()
                    .any(|outcome| matches!(outcome, Err(error) if error.kind() == PublishErrorKind::Fenced));
            if fenced {
                tracing::warn!(
                    lane = window.lane,
                    messages = window.messages.len(),
                    "lease expired while publishing; leaving the window to the lane's next owner"
                );
                self.abandon(&window);
                lease = Lease::Lost;
                continue;
            }
            let (settlement, windows) = sessions.entry(window.token).or_insert_with(|| {
                (
                    Settlement {
                        token: window.token,
                        ..Settlement::default()
                    },
                    Vec::new(),
                )
            });
            outcome::record(
                settlement,
                &window.messages,
                outcomes,
                &self.relay.config.retry,
            );
            windows.push(window);
        }
        for (settlement, windows) in sessions.into_values() {
            match self.relay.store.settle(&settlement).await {
                Ok(settled) => {
                    if settled.len() < settlement.len() {
                        tracing::warn!(
                            written = settled.len(),
                            expected = settlement.len(),
                            "some settled messages were no longer ours; another relay owns their lane now"
                        );
                    }
                    metrics::settled(windows.iter().flat_map(|w| &w.messages), &settled);
                    self.stats.published += settled.published.len() as u64;
                    self.stats.retried += settled.retried.len() as u64;
                    self.stats.dead_lettered += settled.dead_lettered.len() as u64;
                    tracing::debug!(
                        windows = windows.len(),
                        published = settled.published.len(),
                        retried = settled.retried.len(),
                        dead_lettered = settled.dead_lettered.len(),
                        "windows settled"
                    );
                    for window in &windows {
                        self.lanes.finish(window.lane);
                    }
                }
                Err(error) => {
                    metrics::database_error("settle");
                    tracing::error!(error = %error_chain(&error), windows = windows.len(), messages = settlement.len(), "could not write back published windows; their messages will be published again");
                    for window in &windows {
                        self.abandon(window);
                    }
                }
            }
        }
        lease
    }

    fn abandon(&mut self, window: &Window) {
        self.lanes.finish(window.lane);
        self.stats.abandoned_windows += 1;
        metrics::abandoned();
    }

    /// After shutdown: settles the windows in flight as they finish, for at most the shutdown
    /// grace; gives up the rest.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + self.relay.config.shutdown_grace;
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(finished)) => {
                    let mut done = vec![finished];
                    done.extend(self.finished());
                    self.settle(done).await;
                }
                Ok(None) => break,
                Err(_) => {
                    let left = self.pending.len();
                    tracing::warn!(
                        windows = left,
                        "shutdown grace elapsed; abandoning the windows in flight (they will be published again)"
                    );
                    self.stats.abandoned_windows += left as u64;
                    for _ in 0..left {
                        metrics::abandoned();
                    }
                    self.pending.clear();
                    break;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Renders an error with its causes on one line.
#[doc(hidden)] // for the adapters' log lines
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
