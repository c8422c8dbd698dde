use std::sync::Arc;
use std::time::Duration;

use outbox_core::relay::error_chain;
use outbox_core::{BoxError, Inbox};
use tracing::Instrument as _;

use crate::dead_letter::{DeadLetterReason, Failure};
use crate::handler::{DecodeError, Dispatch, Route};
use crate::received::{RawRecord, Received};
use crate::span::handler_span;

use super::Shared;
use super::stats::Counters;

/// How the processing of a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Applied, absorbed as a duplicate, skipped or dead-lettered: its offset may be stored.
    Finished,
    /// Given up on shutdown while waiting to retry: its offset must not be stored.
    Interrupted,
}

/// How one attempt at a record ended.
enum Attempt {
    Applied,
    Duplicate,
    Undecodable(String),
    HandlerFailed(BoxError),
    InboxFailed(BoxError),
}

impl<I: Inbox + 'static> Shared<I> {
    /// Takes a record to its end: applied, absorbed as a duplicate, skipped or dead-lettered.
    /// Retries for as long as it takes, unless the runner shuts down meanwhile; the caller drops
    /// the future to give up (revocation).
    pub(super) async fn process(self: &Arc<Self>, record: &RawRecord) -> Outcome {
        let received = match record.decode() {
            Ok(received) => received,
            Err(error) => {
                let failure = Failure {
                    reason: DeadLetterReason::Undecodable,
                    error: error_chain(&error),
                    attempts: 0,
                };
                return self.dead_letter(record, None, failure).await;
            }
        };
        match self.router.route(received.event_type.as_deref()) {
            Route::Ignore => {
                Counters::add(&self.counters.ignored, 1);
                tracing::debug!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    ce_id = %received.id,
                    ce_type = received.event_type.as_deref().unwrap_or(""),
                    "no handler for this event type; skipped"
                );
                Outcome::Finished
            }
            Route::DeadLetter => {
                let failure = Failure {
                    reason: DeadLetterReason::UnknownType,
                    error: format!(
                        "no handler for ce_type `{}`",
                        received.event_type.as_deref().unwrap_or("")
                    ),
                    attempts: 0,
                };
                self.dead_letter(record, Some(&received), failure).await
            }
            Route::Handle => {
                let span = handler_span(&received);
                self.apply(record, Arc::new(received))
                    .instrument(span)
                    .await
            }
        }
    }

    /// Runs the handler until it succeeds, the inbox says it is a duplicate, or the attempts are
    /// spent (then the record is dead-lettered).
    async fn apply(self: &Arc<Self>, record: &RawRecord, received: Arc<Received>) -> Outcome {
        let received = &received;
        let mut failed = 0;
        let mut outages = 0;
        loop {
            let attempt = self.attempt_to_the_end(received).await;
            let delay = match attempt {
                Attempt::Applied => return Outcome::Finished,
                Attempt::Duplicate => {
                    tracing::debug!(consumer = %self.name, "duplicate delivery absorbed by the inbox");
                    return Outcome::Finished;
                }
                Attempt::Undecodable(reason) => {
                    let failure = Failure {
                        reason: DeadLetterReason::Undecodable,
                        error: reason,
                        attempts: 0,
                    };
                    return self
                        .dead_letter(record, Some(received.as_ref()), failure)
                        .await;
                }
                Attempt::HandlerFailed(error) => {
                    failed = u32::saturating_add(failed, 1);
                    let error = error_chain(&*error);
                    if failed >= self.retry.attempts() {
                        let failure = Failure {
                            reason: DeadLetterReason::HandlerFailed,
                            error,
                            attempts: failed,
                        };
                        return self
                            .dead_letter(record, Some(received.as_ref()), failure)
                            .await;
                    }
                    let delay = self.retry.delay_after(failed);
                    tracing::warn!(consumer = %self.name, attempts = failed, ?delay, %error, "handler failed; rolled back, will retry");
                    delay
                }
                Attempt::InboxFailed(error) => {
                    outages = u32::saturating_add(outages, 1);
                    let delay = self.retry.delay_after(outages);
                    tracing::warn!(consumer = %self.name, ?delay, error = %error_chain(&*error), "the inbox failed; rolled back, will retry");
                    delay
                }
            };
            if !self.pause(delay).await {
                return Outcome::Interrupted;
            }
        }
    }

    /// Waits `delay`; `false` when the runner started shutting down meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.draining.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// One attempt on a task of its own, holding a permit: a worker that stops (its partition
    /// revoked, the runner shutting down) stops waiting for it, but the attempt itself is never cut
    /// short in the middle of its transaction. It ends with a commit or a rollback; its offset is
    /// not stored (the partition's next owner gets the record, and the inbox absorbs it if it was
    /// applied). A handler that panics counts as a failed attempt.
    async fn attempt_to_the_end(self: &Arc<Self>, received: &Arc<Received>) -> Attempt {
        let permit = match self.in_flight.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(closed) => return Attempt::InboxFailed(Box::new(closed)),
        };
        let shared = self.clone();
        let received = received.clone();
        let attempt = tokio::spawn(
            async move {
                let _permit = permit;
                match shared.router.handler(received.event_type.as_deref()) {
                    Some(handler) => shared.attempt(handler, &received).await,
                    None => Attempt::Undecodable("no handler for its type".into()),
                }
            }
            .in_current_span(),
        );
        match attempt.await {
            Ok(attempt) => attempt,
            Err(error) => {
                Counters::add(&self.counters.failures, 1);
                Attempt::HandlerFailed(format!("the handler panicked: {error}").into())
            }
        }
    }

    /// One transaction: inbox row, handler, the check that the handler left the transaction able
    /// to commit, commit; counted here, as it ends, whether or not a
    /// worker still waits for it.
    async fn attempt(&self, handler: &dyn Dispatch<I::Tx>, received: &Received) -> Attempt {
        let attempt = self.transaction(handler, received).await;
        let counter = match attempt {
            Attempt::Applied => &self.counters.applied,
            Attempt::Duplicate => &self.counters.duplicates,
            Attempt::HandlerFailed(_) | Attempt::InboxFailed(_) => &self.counters.failures,
            Attempt::Undecodable(_) => return attempt,
        };
        Counters::add(counter, 1);
        attempt
    }

    async fn transaction(&self, handler: &dyn Dispatch<I::Tx>, received: &Received) -> Attempt {
        let mut tx = match self.inbox.begin().await {
            Ok(tx) => tx,
            Err(error) => return Attempt::InboxFailed(Box::new(error)),
        };
        match self.inbox.record(&mut tx, &self.name, received.id).await {
            Ok(true) => {}
            Ok(false) => {
                self.rollback(tx).await;
                return Attempt::Duplicate;
            }
            Err(error) => {
                self.rollback(tx).await;
                return Attempt::InboxFailed(Box::new(error));
            }
        }
        let outcome = match handler.dispatch(&mut tx, received) {
            Ok(handling) => match tokio::time::timeout(self.handler_timeout, handling).await {
                Ok(handled) => Ok(handled),
                // The handler's future is dropped here, mid-statement perhaps; the rollback below
                // ends its transaction.
                Err(_elapsed) => {
                    Counters::add(&self.counters.timeouts, 1);
                    Ok(Err(format!(
                        "the handler did not finish within {:?} (the handler timeout); its transaction was rolled back",
                        self.handler_timeout
                    )
                    .into()))
                }
            },
            Err(DecodeError(reason)) => Err(reason),
        };
        match outcome {
            Ok(Ok(())) => match self.inbox.broken(&mut tx).await {
                Ok(None) => match self.inbox.commit(tx).await {
                    Ok(()) => Attempt::Applied,
                    Err(error) => Attempt::InboxFailed(Box::new(error)),
                },
                // What the handler did to its transaction: its failure, retried and in the end
                // dead-lettered like an error it returned.
                Ok(Some(reason)) => {
                    self.rollback(tx).await;
                    Attempt::HandlerFailed(reason.into())
                }
                Err(error) => {
                    self.rollback(tx).await;
                    Attempt::InboxFailed(Box::new(error))
                }
            },
            Ok(Err(error)) => {
                self.rollback(tx).await;
                Attempt::HandlerFailed(error)
            }
            Err(reason) => {
                self.rollback(tx).await;
                Attempt::Undecodable(reason)
            }
        }
    }

    /// Rolls back, waiting at most a handler timeout: a statement the handler left running on the
    /// server delays the rollback until it ends. Given up, the transaction is dropped, which ends it
    /// when its connection next serves.
    async fn rollback(&self, tx: I::Tx) {
        match tokio::time::timeout(self.handler_timeout, self.inbox.rollback(tx)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "rollback failed; the server discards the transaction");
            }
            Err(_elapsed) => {
                tracing::warn!(timeout = ?self.handler_timeout, "rollback did not finish in time; the transaction is dropped with its connection state");
            }
        }
    }

    /// Sends the record to the dead-letter topic, retrying until the broker acknowledges it: the
    /// partition does not move past a record that is neither applied nor dead-lettered.
    async fn dead_letter(
        &self,
        record: &RawRecord,
        received: Option<&Received>,
        failure: Failure,
    ) -> Outcome {
        let target = self.dead_letters.topic(&record.topic);
        let ce_id = received.map(|r| r.id.to_string()).unwrap_or_default();
        let mut failed = 0;
        loop {
            match self.dead_letters.send(record, &failure).await {
                Ok((dlq_partition, dlq_offset)) => {
                    Counters::add(&self.counters.dead_lettered, 1);
                    macro_rules! dead_lettered {
                        ($level:ident) => {
                            tracing::$level!(
                                consumer = %self.name,
                                topic = %record.topic,
                                partition = record.partition,
                                offset = record.offset,
                                ce_id,
                                reason = %failure.reason,
                                attempts = failure.attempts,
                                error = %failure.error,
                                dead_letter_topic = %target,
                                dlq_partition,
                                dlq_offset,
                                "record sent to the dead-letter topic; the partition moves on"
                            )
                        };
                    }
                    match failure.reason {
                        DeadLetterReason::UnknownType => dead_lettered!(warn),
                        _ => dead_lettered!(error),
                    }
                    return Outcome::Finished;
                }
                Err(error) => {
                    failed = u32::saturating_add(failed, 1);
                    Counters::add(&self.counters.dead_letter_errors, 1);
                    let delay = self.retry.delay_after(failed);
                    tracing::error!(
                        consumer = %self.name,
                        topic = %record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        dead_letter_topic = %target,
                        %error,
                        ?delay,
                        "sending to the dead-letter topic failed; the partition waits and retries"
                    );
                    if !self.pause(delay).await {
                        return Outcome::Interrupted;
                    }
                }
            }
        }
    }
}
