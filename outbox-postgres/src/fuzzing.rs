//! Entry points for the fuzz targets; not a stable API.
//!
//! They run the crate's own checks of what it reads from the database. The WAL envelope needs none:
//! [`crate::wal::envelope`] is public.

use outbox_core::StoredMessage;

pub use crate::rows::{CorruptRow, StoredColumns};

/// Checks the columns of an outbox row as the relay store and the dead letters do once they are
/// read: the message they hold, or why the row is corrupt.
///
/// # Errors
/// [`CorruptRow`] with the reason the store would park the row with.
pub fn stored_row(columns: StoredColumns) -> Result<StoredMessage, CorruptRow> {
    columns.into_stored()
}
