//! Errors of the PostgreSQL backend.

/// Errors raised by the PostgreSQL outbox, relay store and inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused a statement or could not be reached.
    #[error("database error")]
    Database(#[from] sqlx::Error),

    /// A migration failed; nothing of it was applied.
    #[error("migration {version} ({description}) failed")]
    Migration {
        /// The migration's version.
        version: i64,
        /// What the migration does.
        description: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },

    /// The database holds a migration this version of the library does not know.
    #[error(
        "the database has migration {version} applied, which this version of outbox-postgres does not know; upgrade the library"
    )]
    UnknownMigration {
        /// The unknown version.
        version: i64,
    },

    /// A schema or table name is not a plain SQL identifier.
    #[error(
        "invalid {what} name `{name}`: use 1 to 63 characters of lowercase letters, digits and `_`, starting with a letter or `_`"
    )]
    InvalidIdentifier {
        /// Which name (schema, outbox table, ...).
        what: &'static str,
        /// The rejected name.
        name: String,
    },

    /// A name PostgreSQL derives from the configured ones would exceed its 63-byte limit.
    #[error(
        "the {what} name `{name}` ({} bytes), derived from the configured schema and table names, exceeds PostgreSQL's 63-byte limit; choose shorter names",
        name.len()
    )]
    DerivedNameTooLong {
        /// Which derived name.
        what: &'static str,
        /// The name as derived.
        name: String,
    },

    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),

    /// The database does not meet what the relay's guarantees need (a schema changed by hand, a
    /// connection pooler that breaks session state); the message says what and how to fix it.
    #[error("{0}")]
    Unsupported(String),

    /// Another relay over the same outbox runs with a different number of lanes; running both would
    /// break per-key order.
    #[error(
        "another relay over this outbox runs with {theirs} lanes, this one is configured with {ours}; all relays of one outbox must use the same lane count"
    )]
    LaneCountMismatch {
        /// This relay's lane count.
        ours: u32,
        /// The other relay's lane count.
        theirs: u32,
    },

    /// The relay's session was lost (the connection closed or failed) while an operation needed it;
    /// the next claim opens a new one.
    #[error("the relay session is gone; its lanes were released")]
    SessionLost,

    /// A message breaks a rule of [`outbox_core::Message::validate`]; nothing was enqueued.
    #[error("message {id} cannot be enqueued")]
    InvalidMessage {
        /// The message's id.
        id: uuid::Uuid,
        /// The rule it breaks.
        #[source]
        source: outbox_core::Error,
    },

    /// A message is larger than the outbox accepts ([`crate::PgOutbox::max_message_bytes`]);
    /// nothing was enqueued.
    #[error(
        "message {id} is {size} bytes, above the outbox's limit of {limit} bytes (PgOutbox::max_message_bytes; the broker's message.max.bytes must allow it too)"
    )]
    MessageTooLarge {
        /// The message's id.
        id: uuid::Uuid,
        /// Its size as [`outbox_core::Message::size`] counts it.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// The replication connection of WAL capture failed or ended.
    #[error("the replication stream of slot `{slot}` failed")]
    Replication {
        /// The slot being read.
        slot: String,
        /// The replication client's error.
        #[source]
        source: pgwire_replication::PgWireError,
    },

    /// A replication connection could not be made: its TLS handshake, its login or
    /// `pg_hba.conf`'s `replication` line refused it, or the server did not answer.
    #[error("cannot open a replication connection to {target}")]
    ReplicationConnection {
        /// Where it went and as whom (`user@host:port/database`).
        target: String,
        /// The replication client's error.
        #[source]
        source: pgwire_replication::PgWireError,
    },

    /// A message does not fit the WAL envelope (a field longer than its length prefix).
    #[error(transparent)]
    Envelope(#[from] crate::wal::TooLong),

    /// A message could not be encoded for storage.
    #[error("message {id} could not be encoded")]
    Encode {
        /// The message's id.
        id: uuid::Uuid,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether the failure may go away by itself (a lost connection, a restarting server, a
    /// serialization conflict), so that retrying the same operation makes sense.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(error) => is_transient_sqlx(error),
            _ => false,
        }
    }
}

impl Error {
    /// Whether the relay's session cannot be trusted after this error: the connection is gone, broken,
    /// or in an unknown state. A statement that the server merely refused (a timeout, a constraint,
    /// a decoding problem) leaves the session and its advisory locks as they were.
    pub(crate) fn loses_session(&self) -> bool {
        match self {
            Error::SessionLost => true,
            Error::Database(error) => match error {
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
                sqlx::Error::RowNotFound
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::ColumnIndexOutOfBounds { .. }
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_) => false,
                _ => true,
            },
            _ => false,
        }
    }
}

/// Whether a sqlx error is a connectivity problem or a retryable conflict.
pub(crate) fn is_transient_sqlx(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 40001/40P01: serialization failure/deadlock; 57P: operator
            // intervention (shutdown, restart); 53: insufficient resources.
            code.starts_with("08")
                || code == "40001"
                || code == "40P01"
                || code.starts_with("57P")
                || code.starts_with("53")
        }),
        _ => false,
    }
}
