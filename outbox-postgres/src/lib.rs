//! PostgreSQL backend of the transactional outbox.
//!
//! * [`PgOutbox`] writes messages through the caller's own transaction.
//! * [`PgRelayStore`] is the relay's side: lanes owned through advisory locks, claims in publish
//!   order behind a safe horizon, settlement of acknowledged and failed messages.
//! * [`PgWalStore`] is the relay's side in WAL mode ([`PgOutbox::wal`]): messages read from a
//!   logical replication slot instead of a table (see [`wal`]).
//! * [`PgInbox`] records what consumers applied, in their own transaction.
//! * [`PgDeadLetters`] lists, replays and purges messages that could not be published.
//! * [`PgStatus`] reports the backlog, the dead letters and the running relays.
//! * [`migrate`] and [`migrations`] create the tables (names set through [`Tables`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! let tables = outbox_postgres::Tables::default();
//! outbox_postgres::migrate(&mut *pool.acquire().await?, &tables).await?;
//! # Ok(())
//! # }
//! ```

mod dead_letters;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod horizon;
mod inbox;
mod lease;
mod migrations;
mod outbox;
mod privileges;
mod queries;
mod relay_store;
mod rows;
mod session_options;
mod status;
mod tables;
pub mod wal;

pub use dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterRow, PgDeadLetters};
pub use error::Error;
pub use inbox::PgInbox;
pub use migrations::{Migration, migrate, migrations, pending_migrations};
pub use outbox::{DEFAULT_MAX_MESSAGE_BYTES, PgOutbox};
pub use privileges::Role;
pub use relay_store::{OwnedLaneCount, PgRelayStore, PgRelayStoreConfig};
pub use status::{OpenWriter, OutboxStatus, PgStatus, RelaySession, TopicBacklog};
pub use tables::Tables;
pub use wal::{PgWalStore, PgWalStoreConfig, SlotName};
