//! Writing messages inside the caller's transaction.

use std::sync::Arc;

use outbox_core::Message;
use sqlx::PgConnection;

use crate::error::Error;
use crate::queries::Queries;
use crate::rows::Columns;
use crate::tables::Tables;

/// Writes messages to the outbox through the caller's connection or transaction, so that they commit
/// or roll back with the caller's business rows.
///
/// ```no_run
/// # async fn place_order(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_core::Message;
/// use outbox_postgres::PgOutbox;
///
/// let outbox = PgOutbox::new();
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id, total_cents) VALUES ($1, $2)")
///     .bind(42_i64)
///     .bind(1999_i64)
///     .execute(&mut *tx)
///     .await?;
/// let event = Message::builder("orders")
///     .key("42")
///     .event_type("OrderPlaced")
///     .json(&serde_json::json!({ "order_id": 42 }))?;
/// outbox.enqueue(&mut tx, &event).await?;
/// tx.commit().await?; // the order and its event, or neither
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgOutbox {
    queries: Arc<Queries>,
    notify: bool,
    max_message_bytes: u64,
}

/// The default of [`PgOutbox::max_message_bytes`]: 1 MiB, Kafka's default record limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;

impl Default for PgOutbox {
    fn default() -> Self {
        Self::new()
    }
}

impl PgOutbox {
    /// An outbox in the default tables ([`Tables::default`]).
    pub fn new() -> Self {
        Self::with_tables(&Tables::default())
    }

    /// An outbox in the given tables.
    pub fn with_tables(tables: &Tables) -> Self {
        Self {
            queries: Arc::new(Queries::new(tables)),
            notify: true,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The largest message [`enqueue`](Self::enqueue) accepts, as [`Message::size`] counts it
    /// (payload, key, headers and attributes). Default [`DEFAULT_MAX_MESSAGE_BYTES`], Kafka's
    /// default record limit; raise it together with the broker's `message.max.bytes` and the
    /// producer's. A larger message is refused in the caller's transaction, with a clear error,
    /// instead of failing at the broker long after the business transaction committed.
    pub fn max_message_bytes(mut self, limit: u64) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// Whether enqueuing wakes the relays with `NOTIFY` when the transaction commits. Default on;
    /// without it relays find new messages at their next poll.
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Adds one message to the outbox, as part of whatever transaction `conn` is in.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when the message breaks a rule of [`Message::validate`] (its public
    /// fields may have been changed after it was built), [`Error::MessageTooLarge`] above
    /// [`max_message_bytes`](Self::max_message_bytes), [`Error::Database`] when the insert fails,
    /// e.g. a message with the same id is already stored. The transaction stays usable after the
    /// first two: nothing was sent to the database.
    pub async fn enqueue(&self, conn: &mut PgConnection, message: &Message) -> Result<(), Error> {
        self.enqueue_all(conn, std::slice::from_ref(message)).await
    }

    /// Adds messages to the outbox in one round trip, in the given order, as part of whatever
    /// transaction `conn` is in.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue), for the first message that fails; then none of the messages
    /// is stored.
    pub async fn enqueue_all(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        for message in messages {
            self.check(message)?;
        }
        let c = Columns::of(messages);
        let sql = if self.notify {
            &self.queries.enqueue
        } else {
            &self.queries.enqueue_quiet
        };
        sqlx::query(sql)
            .bind(c.ids)
            .bind(c.slots)
            .bind(c.topics)
            .bind(c.keys)
            .bind(c.event_types)
            .bind(c.sources)
            .bind(c.content_types)
            .bind(c.payloads)
            .bind(c.headers)
            .bind(c.created_at)
            .execute(conn)
            .await?;
        Ok(())
    }

    fn check(&self, message: &Message) -> Result<(), Error> {
        message.validate().map_err(|source| Error::InvalidMessage {
            id: message.id,
            source,
        })?;
        let size = message.size();
        if size > self.max_message_bytes {
            return Err(Error::MessageTooLarge {
                id: message.id,
                size,
                limit: self.max_message_bytes,
            });
        }
        Ok(())
    }
}
