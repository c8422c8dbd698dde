//! Settings of WAL capture.

use std::time::Duration;

use super::slot::SlotName;
use crate::error::Error;
use crate::relay_store::{check_lanes, check_lease};
use crate::tables::Tables;

/// The prefix of the logical messages the library writes and the relay reads by default.
pub const DEFAULT_WAL_PREFIX: &str = "outbox";

/// Checks a logical-message prefix: 1 to 255 bytes of printable ASCII.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() || prefix.len() > 255 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(format!(
            "the WAL message prefix must be 1 to 255 printable ASCII characters without spaces, got `{}`",
            prefix.escape_debug()
        )));
    }
    Ok(())
}

/// Settings of [`PgWalStore`](super::PgWalStore). Every setter documents its default and range.
#[derive(Debug, Clone)]
pub struct PgWalStoreConfig {
    pub(super) tables: Tables,
    pub(super) slot: SlotName,
    pub(super) prefix: String,
    pub(super) lanes: u32,
    pub(super) lease: Duration,
    pub(super) buffer_messages: usize,
    pub(super) buffer_bytes: u64,
}

impl Default for PgWalStoreConfig {
    fn default() -> Self {
        Self {
            tables: Tables::default(),
            slot: SlotName::default(),
            prefix: DEFAULT_WAL_PREFIX.to_owned(),
            lanes: 64,
            lease: Duration::from_secs(25),
            buffer_messages: 10_000,
            buffer_bytes: 64 * 1024 * 1024,
        }
    }
}

impl PgWalStoreConfig {
    /// The outbox whose dead-letter table and slot registry are used. Default [`Tables::default`].
    pub fn tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// The replication slot to read (and its publication, of the same name). Default `outbox`.
    pub fn slot(mut self, slot: SlotName) -> Self {
        self.slot = slot;
        self
    }

    /// The logical-message prefix to publish; messages with another prefix are skipped. Default
    /// [`DEFAULT_WAL_PREFIX`]; the writers' [`PgOutbox::wal_prefix`](crate::PgOutbox::wal_prefix)
    /// must match.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty prefix, or one with spaces or non-ASCII characters.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Result<Self, Error> {
        let prefix = prefix.into();
        check_prefix(&prefix)?;
        self.prefix = prefix;
        Ok(self)
    }

    /// Lanes the stream is spread over by key: windows of different lanes are in flight together,
    /// one at a time per lane. Default 64; a power of two from 1 to 1024.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn lanes(mut self, lanes: u32) -> Result<Self, Error> {
        self.lanes = check_lanes(lanes)?;
        Ok(self)
    }

    /// How long a relay that stopped answering keeps the slot before a standby takes it over.
    /// Default 25 s; at least 1 s.
    ///
    /// # Errors
    /// [`Error::Config`] below 1 s.
    pub fn lease(mut self, lease: Duration) -> Result<Self, Error> {
        self.lease = check_lease(lease)?;
        Ok(self)
    }

    /// Most messages read from the stream and not yet settled; reading pauses (and the server
    /// waits) while the buffer is full, so a transaction of any size is relayed in bounded memory.
    /// Default 10,000; 1 to 1,000,000. Keep it at least the relay's in-flight budget.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn buffer_messages(mut self, messages: usize) -> Result<Self, Error> {
        if !(1..=1_000_000).contains(&messages) {
            return Err(Error::Config(format!(
                "the WAL buffer must hold 1 to 1000000 messages, got {messages}"
            )));
        }
        self.buffer_messages = messages;
        Ok(self)
    }

    /// Most bytes (as [`outbox_core::Message::size`] counts them) read and not yet settled.
    /// Default 64 MiB; 1 KiB to 16 GiB.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn buffer_bytes(mut self, bytes: u64) -> Result<Self, Error> {
        if !(1024..=16 << 30).contains(&bytes) {
            return Err(Error::Config(format!(
                "the WAL buffer must hold 1 KiB to 16 GiB, got {bytes} bytes"
            )));
        }
        self.buffer_bytes = bytes;
        Ok(self)
    }
}
