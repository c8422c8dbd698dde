//! Writing messages inside the caller's transaction.

use std::sync::Arc;

use outbox_core::Message;
use sqlx::PgConnection;

use crate::error::Error;
use crate::queries::Queries;
use crate::rows::Columns;
use crate::tables::Tables;
use crate::wal::{DEFAULT_WAL_PREFIX, check_prefix, envelope};

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
///
/// In WAL mode ([`PgOutbox::wal`]) a message is not a row: it is a transactional logical decoding
/// message (`pg_logical_emit_message`) in the caller's transaction, which the relay reads from a
/// replication slot at commit, in commit order (`outbox-relay run --capture wal`).
#[derive(Debug, Clone)]
pub struct PgOutbox {
    queries: Arc<Queries>,
    notify: bool,
    max_message_bytes: u64,
    /// The logical-message prefix in WAL mode; `None` in table mode.
    wal_prefix: Option<Arc<str>>,
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
            wal_prefix: None,
        }
    }

    /// An outbox in WAL mode, with the default prefix ([`DEFAULT_WAL_PREFIX`]): each message is
    /// a transactional logical decoding message in the caller's transaction, never a row. Nothing
    /// is written to a table, so there is nothing to claim, delete or vacuum; a relay reading a
    /// replication slot of this database publishes the messages in commit order. The slot must
    /// exist before the first message is written (`outbox-relay wal create-slot`): the WAL written
    /// before it is not decoded.
    pub fn wal() -> Self {
        Self {
            wal_prefix: Some(Arc::from(DEFAULT_WAL_PREFIX)),
            ..Self::new()
        }
    }

    /// WAL mode with the logical-message prefix `prefix`; relays publish only their own prefix
    /// (`--wal-prefix`), so several outboxes can share a database.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty prefix, or one with spaces or non-ASCII characters.
    pub fn wal_prefix(mut self, prefix: &str) -> Result<Self, Error> {
        check_prefix(prefix)?;
        self.wal_prefix = Some(Arc::from(prefix));
        Ok(self)
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
        if let Some(prefix) = &self.wal_prefix {
            return emit(conn, prefix, messages).await;
        }
        let c = Columns::of(messages);
        let sql = if self.notify {
            &self.queries.enqueue
        } else {
            &self.queries.enqueue_quiet
        };
        c.bind(sqlx::query(sql)).execute(conn).await?;
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

/// Writes `messages` as transactional logical messages, in order, in one round trip. Each
/// message without a `traceparent` header gets the current span's trace context, as a row does.
async fn emit(conn: &mut PgConnection, prefix: &str, messages: &[Message]) -> Result<(), Error> {
    let trace = outbox_core::trace::current_context_headers();
    let mut contents = Vec::with_capacity(messages.len());
    for message in messages {
        let content = if trace.is_empty()
            || message
                .headers
                .contains_key(outbox_core::trace::TRACEPARENT)
        {
            envelope::encode(message)?
        } else {
            let mut traced = message.clone();
            traced.headers.extend(trace.clone());
            envelope::encode(&traced)?
        };
        contents.push(content);
    }
    if let [content] = contents.as_slice() {
        sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)")
            .bind(prefix)
            .bind(content)
            .execute(conn)
            .await?;
    } else {
        // Rows of a function scan come in array order, and the aggregate takes them as they come.
        sqlx::query(
            "SELECT count(pg_logical_emit_message(true, $1, m)) FROM unnest($2::bytea[]) AS m",
        )
        .bind(prefix)
        .bind(contents)
        .execute(conn)
        .await?;
    }
    Ok(())
}
