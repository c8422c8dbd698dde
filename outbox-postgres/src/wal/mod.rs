//! WAL capture: the outbox without an outbox table.
//!
//! Writers emit each message as a transactional logical decoding message
//! (`pg_logical_emit_message(true, prefix, envelope)`) in their own transaction
//! ([`PgOutbox::wal`](crate::PgOutbox::wal)). PostgreSQL decodes it at commit, in commit order, and
//! never writes it to a table. The relay reads a logical replication slot with `pgoutput` and
//! `messages 'true'` ([`PgWalStore`]), spreads the stream over lanes by key, and runs the same
//! engine, publisher and dead letters as table mode. It confirms the slot's position only up to the
//! end of the last transaction whose messages, and all earlier ones', were acknowledged or
//! dead-lettered.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `envelope.rs` | the binary envelope of a message |
//! | `config.rs` | [`PgWalStoreConfig`] and the prefix rule |
//! | `slot.rs` | creating, dropping and checking the slot; its status |
//! | `stream.rs` | the replication connection and the task that feeds the store |
//! | `queue.rs` | read-but-unsettled messages by lane; the confirmable position |
//! | `store.rs` | [`PgWalStore`]: the capture lock, the fence, claim and settle |
//! | `queries.rs` | the SQL |

mod config;
pub mod envelope;
mod queries;
mod queue;
mod slot;
mod store;
mod stream;

pub(crate) use config::check_prefix;
pub use config::{DEFAULT_WAL_PREFIX, PgWalStoreConfig};
pub use envelope::{EnvelopeError, TooLong};
pub use slot::{
    Created, REPLICATION_APPLICATION_NAME, SlotName, SlotStatus, check_server, check_slot,
    create_slot, drop_slot, slot_status,
};
pub use store::{PgWalStore, Reading};
pub use stream::ReplicationTarget;
