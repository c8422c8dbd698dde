//! The consuming side: an inbox that remembers which messages a consumer already applied.

use std::future::Future;

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

    /// Commits `tx`: the inbox row and the handler's effects become durable together.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Rolls `tx` back: neither the inbox row nor the handler's effects remain.
    fn rollback(&self, tx: Self::Tx) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
