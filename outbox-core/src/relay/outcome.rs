//! From the broker's answers to the settlement the store writes.

use crate::metrics;
use crate::publisher::PublishError;
use crate::retry::{Decision, RetryPolicy};
use crate::store::{DeadLetter, Retry, Settlement, StoredMessage};

/// Adds the outcome of one window's messages to `settlement`: acknowledged ones are published,
/// failed ones retried after the policy's delay or moved to the dead letters.
pub(super) fn record(
    settlement: &mut Settlement,
    messages: &[StoredMessage],
    outcomes: Vec<Result<(), PublishError>>,
    policy: &RetryPolicy,
) {
    for (stored, outcome) in messages.iter().zip(outcomes) {
        let error = match outcome {
            Ok(()) => {
                settlement.published.push(stored.seq);
                continue;
            }
            Err(error) => error,
        };
        // An outage (or a lost fence) is no attempt of the message's own: its count stays, so that a
        // long outage never uses up the dead-letter budget of what waited through it.
        let failed = if error.kind().counts_as_attempt() {
            stored.attempts.saturating_add(1)
        } else {
            stored.attempts
        };
        let text = error.describe();
        metrics::failed(&stored.message.topic, error.kind());
        match policy.decide(stored.attempts.saturating_add(1), &error) {
            Decision::RetryAfter(delay) => {
                tracing::warn!(id = %stored.message.id, topic = %stored.message.topic, attempts = failed, ?delay, error = %text, "publish failed; will retry");
                settlement.retries.push(Retry {
                    seq: stored.seq,
                    attempts: failed,
                    delay,
                    error: text,
                });
            }
            Decision::DeadLetter => {
                tracing::error!(id = %stored.message.id, topic = %stored.message.topic, attempts = failed, error = %text, "publish failed for good; moving the message to the dead letters");
                settlement.dead_letters.push(DeadLetter {
                    seq: stored.seq,
                    attempts: failed,
                    error: text,
                });
            }
        }
    }
}
