//! The inbox: which messages each consumer already applied.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::Error;
use crate::queries::Queries;
use crate::tables::Tables;

/// SQLSTATE of a statement sent to an aborted transaction.
const IN_FAILED_TRANSACTION: &str = "25P02";

/// The inbox table on PostgreSQL. Implements [`outbox_core::Inbox`] with `sqlx` transactions: the
/// consumer's handler writes its effects through the same transaction as the inbox row.
#[derive(Debug, Clone)]
pub struct PgInbox {
    pool: PgPool,
    queries: Arc<Queries>,
}

impl PgInbox {
    /// An inbox in the default tables.
    pub fn new(pool: PgPool) -> Self {
        Self::with_tables(pool, &Tables::default())
    }

    /// An inbox in the given tables.
    pub fn with_tables(pool: PgPool, tables: &Tables) -> Self {
        Self {
            pool,
            queries: Arc::new(Queries::new(tables)),
        }
    }

    /// Deletes the inbox rows of `consumer` received before `received_before`, at most `batch` rows
    /// per statement, until none is left. Returns how many were deleted. Other consumers' rows are
    /// left alone, whatever their age.
    ///
    /// The cutoff must be older than the longest time a message can be redelivered to `consumer`
    /// (the topic's retention, or the longest its group may lag): a message redelivered after its
    /// row was purged is applied again.
    ///
    /// # Errors
    /// [`Error::Database`] when a delete fails; rows deleted by earlier batches stay deleted.
    pub async fn purge_older_than(
        &self,
        consumer: &str,
        received_before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, Error> {
        let batch = i64::from(batch.max(1));
        let mut total = 0;
        loop {
            let deleted = sqlx::query(&self.queries.inbox_purge)
                .bind(consumer)
                .bind(received_before)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < batch as u64 {
                return Ok(total);
            }
        }
    }
}

impl outbox_core::Inbox for PgInbox {
    type Tx = Transaction<'static, Postgres>;
    type Error = Error;

    async fn begin(&self) -> Result<Self::Tx, Error> {
        Ok(self.pool.begin().await?)
    }

    async fn record(
        &self,
        tx: &mut Self::Tx,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool, Error> {
        let inserted = sqlx::query(&self.queries.inbox_record)
            .bind(consumer)
            .bind(message_id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        Ok(inserted == 1)
    }

    async fn broken(&self, tx: &mut Self::Tx) -> Result<Option<String>, Error> {
        match sqlx::query_scalar::<_, bool>(&self.queries.inbox_intact)
            .fetch_one(&mut **tx)
            .await
        {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(
                "the handler ended the inbox transaction itself (COMMIT or ROLLBACK); the runner commits it".into(),
            )),
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(IN_FAILED_TRANSACTION) => {
                Ok(Some(format!(
                    "a statement of the handler's transaction failed and the handler returned Ok regardless; \
                     the transaction is aborted and would roll back on commit ({})",
                    error.message()
                )))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), Error> {
        Ok(tx.commit().await?)
    }

    async fn rollback(&self, tx: Self::Tx) -> Result<(), Error> {
        Ok(tx.rollback().await?)
    }

    async fn purge(
        &self,
        consumer: &str,
        received_before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, Error> {
        self.purge_older_than(consumer, received_before, batch)
            .await
    }
}
