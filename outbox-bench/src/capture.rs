//! The two ways messages reach the relay: rows of the outbox table (table mode) or logical
//! decoding messages read from a replication slot (WAL mode), and the writers' outbox of each.

use outbox_postgres::PgOutbox;

/// Where writers put their messages and where the relay reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// Rows of the outbox table, claimed by `PgRelayStore`.
    Table,
    /// Transactional logical decoding messages, read from the benchmark's slot by `PgWalStore`.
    Wal,
}

impl Capture {
    /// The writers' outbox (wake-ups on in table mode; WAL mode has no `NOTIFY`).
    pub fn outbox(self) -> PgOutbox {
        match self {
            Self::Table => PgOutbox::new(),
            Self::Wal => PgOutbox::wal(),
        }
    }

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Wal => "wal",
        }
    }
}
