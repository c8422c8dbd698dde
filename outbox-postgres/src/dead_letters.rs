//! The dead letters: messages that could not be published, kept with their error.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Error;
use crate::queries::Queries;
use crate::tables::Tables;

/// Which dead letters an operation applies to. Every criterion is optional; all given ones must
/// match. The default matches every dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only these message ids.
    pub ids: Option<Vec<Uuid>>,
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this key.
    pub key: Option<Vec<u8>>,
    /// Only errors containing this text (case-insensitive).
    pub error_contains: Option<String>,
    /// Only messages dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only messages dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
    /// At most this many, oldest first.
    pub limit: Option<i64>,
}

/// A dead letter, as listed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetterRow {
    /// Its position in the outbox when it failed.
    pub seq: i64,
    /// The message id.
    pub id: Uuid,
    /// The topic.
    pub topic: String,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The event type.
    pub event_type: Option<String>,
    /// Payload size in bytes.
    pub payload_bytes: i32,
    /// Failed attempts.
    pub attempts: i32,
    /// The last error.
    pub error: String,
    /// When the message was created.
    pub created_at: DateTime<Utc>,
    /// When it was moved here.
    pub dead_lettered_at: DateTime<Utc>,
}

/// A dead letter in full, as shown.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeadLetter {
    /// Its position in the outbox when it failed.
    pub seq: i64,
    /// The message id.
    pub id: Uuid,
    /// The slot that chose its lane.
    pub slot: i32,
    /// The topic.
    pub topic: String,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The event type.
    pub event_type: Option<String>,
    /// The event source.
    pub source: Option<String>,
    /// The payload's content type.
    pub content_type: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The headers, a JSON object.
    pub headers: serde_json::Value,
    /// When the message was created.
    pub created_at: DateTime<Utc>,
    /// Failed attempts.
    pub attempts: i32,
    /// The last error.
    pub error: String,
    /// When it was moved here.
    pub dead_lettered_at: DateTime<Utc>,
}

/// Lists, replays and purges dead letters.
#[derive(Debug, Clone)]
pub struct PgDeadLetters {
    pool: PgPool,
    queries: Arc<Queries>,
}

impl PgDeadLetters {
    /// The dead letters of the outbox in `tables`.
    pub fn new(pool: PgPool, tables: &Tables) -> Self {
        Self {
            pool,
            queries: Arc::new(Queries::new(tables)),
        }
    }

    /// The dead letters matching `filter`, oldest first.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRow>, Error> {
        Ok(
            bind(sqlx::query_as(&self.queries.dead_letters_list), filter)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The dead letter of message `id` in full (payload and headers included), or `None` when there
    /// is none.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn show(&self, id: Uuid) -> Result<Option<DeadLetter>, Error> {
        Ok(sqlx::query_as(&self.queries.dead_letters_show)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Moves the matching dead letters back into the outbox, in their original order, with their
    /// attempts reset; relays publish them like new messages (after everything already waiting in
    /// their lanes). Returns how many were moved.
    ///
    /// # Errors
    /// [`Error::Database`] when the move fails; then nothing was moved.
    pub async fn replay(&self, filter: &DeadLetterFilter) -> Result<u64, Error> {
        Ok(bind(sqlx::query(&self.queries.dead_letters_replay), filter)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Moves the matching dead letters back through `outbox` (in WAL mode, as logical messages), in
    /// their original order, in one transaction: they are enqueued again exactly when they leave
    /// the dead letters. Returns how many were moved.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] for a dead letter that cannot be enqueued (an unreadable logical
    /// message kept raw, say: purge it instead), [`Error::Database`] when the move fails; either
    /// way nothing was moved.
    pub async fn replay_through(
        &self,
        filter: &DeadLetterFilter,
        outbox: &crate::PgOutbox,
    ) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let rows = bind(sqlx::query(&self.queries.dead_letters_take), filter)
            .fetch_all(&mut *tx)
            .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            match crate::rows::decode(row) {
                Ok(stored) => messages.push((stored.seq, stored.message)),
                Err(corrupt) => {
                    return Err(Error::Unsupported(format!(
                        "dead letter {} cannot be enqueued again: {}; purge it instead",
                        corrupt.seq, corrupt.reason
                    )));
                }
            }
        }
        messages.sort_by_key(|(seq, _)| *seq);
        let messages: Vec<outbox_core::Message> = messages.into_iter().map(|(_, m)| m).collect();
        outbox.enqueue_all(&mut tx, &messages).await?;
        tx.commit().await?;
        Ok(messages.len() as u64)
    }

    /// Deletes the matching dead letters for good. Returns how many were deleted.
    ///
    /// # Errors
    /// [`Error::Database`] when the delete fails; then nothing was deleted.
    pub async fn purge(&self, filter: &DeadLetterFilter) -> Result<u64, Error> {
        Ok(bind(sqlx::query(&self.queries.dead_letters_purge), filter)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

/// Binds the filter to the `$1..$7` parameters of the dead-letter statements.
fn bind<'q, Q: Bindable<'q>>(query: Q, filter: &DeadLetterFilter) -> Q {
    query
        .bind_value(filter.ids.clone())
        .bind_value(filter.topic.clone())
        .bind_value(filter.key.clone())
        .bind_value(filter.error_contains.clone())
        .bind_value(filter.since)
        .bind_value(filter.until)
        .bind_value(filter.limit)
}

/// Both query kinds bind the same parameters.
trait Bindable<'q>: Sized {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send;
}

impl<'q> Bindable<'q> for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    {
        self.bind(value)
    }
}

impl<'q, O> Bindable<'q>
    for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
{
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    {
        self.bind(value)
    }
}
