//! The consuming side: an inbox that remembers which messages a consumer already applied.

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A table of (consumer name, message id) pairs, written in the same transaction as the consumer's
/// own effects. Recording a pair that is already there tells the consumer it has seen the message.
///
/// The transaction type is the backend's (`sqlx::Transaction` for PostgreSQL): the consumer's handler
/// writes its effects through it, so effects and the inbox row commit or roll back together.
pub trait Inbox: Send + Sync {
    /// The backend's transaction.
    type Tx: Send;
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, Self::Error>> + Send;

    /// Records that `consumer` received `message_id`, inside `tx`. Returns `true` the first time and
    /// `false` when the pair was already recorded (a redelivery).
    fn record(
        &self,
        tx: &mut Self::Tx,
        consumer: &str,
        message_id: Uuid,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Why `tx` can no longer commit what `record` and the handler wrote, or `None` when it can.
    /// The runner asks before committing a handler's success: a statement of the transaction that
    /// failed (the handler ignored its error), or a handler that ended the transaction itself
    /// (`COMMIT`, `ROLLBACK`), must count as a failed attempt, not as applied. PostgreSQL answers
    /// the `COMMIT` of an aborted transaction with a rollback that drivers report as success.
    ///
    /// # Errors
    /// The backend's error when the check itself cannot be made (the connection is gone).
    fn broken(
        &self,
        tx: &mut Self::Tx,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send;

    /// Commits `tx`: the inbox row and the handler's effects become durable together.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Rolls `tx` back: neither the inbox row nor the handler's effects remain.
    fn rollback(&self, tx: Self::Tx) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Deletes rows of `consumer` (and of no other consumer) recorded before `received_before`, at
    /// most `batch` per statement, until none is left; returns how many it deleted. Consumers keep
    /// their own periods: one that keeps an hour must not shorten the memory of one that keeps
    /// two weeks.
    fn purge(
        &self,
        consumer: &str,
        received_before: DateTime<Utc>,
        batch: u32,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}
