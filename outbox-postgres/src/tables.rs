//! Names of the tables, channel and locks of one outbox.

use crate::error::Error;

/// Where the outbox lives: schema and table names. Every name is validated once, here.
///
/// Defaults: schema `public`, tables `outbox`, `outbox_dead_letters`, `inbox` and
/// `outbox_migrations`. Two outboxes in one database only need different names; their wake-up
/// channels and lock keys are derived from the outbox table's name and do not collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    schema: String,
    outbox: String,
    dead_letters: String,
    inbox: String,
    migrations: String,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            outbox: "outbox".into(),
            dead_letters: "outbox_dead_letters".into(),
            inbox: "inbox".into(),
            migrations: "outbox_migrations".into(),
        }
    }
}

/// PostgreSQL's longest identifier (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

pub(crate) fn identifier(what: &'static str, name: impl Into<String>) -> Result<String, Error> {
    let name = name.into();
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= MAX_IDENTIFIER_BYTES {
        Ok(name)
    } else {
        Err(Error::InvalidIdentifier { what, name })
    }
}

impl Tables {
    /// The schema of every table. Default `public`. It must exist before migrations run.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn schema(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.schema = identifier("schema", name)?;
        self.check_derived()
    }

    /// The outbox table. Default `outbox`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn outbox(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.outbox = identifier("outbox table", name)?;
        self.check_derived()
    }

    /// The dead-letter table. Default `outbox_dead_letters`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn dead_letters(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.dead_letters = identifier("dead-letter table", name)?;
        self.check_derived()
    }

    /// The inbox table. Default `inbox`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn inbox(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.inbox = identifier("inbox table", name)?;
        self.check_derived()
    }

    /// The table recording applied migrations. Default `outbox_migrations`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn migrations(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.migrations = identifier("migrations table", name)?;
        Ok(self)
    }

    /// Names PostgreSQL derives from the configured ones (sequence, functions, indexes, wake-up
    /// channel), each checked against its 63-byte limit: longer ones would be truncated (the
    /// sequence of a 63-character outbox onto the table's own name) or refused (the channel,
    /// failing every enqueue).
    fn derived(&self) -> [(&'static str, String); 13] {
        let outbox = &self.outbox;
        [
            ("sequence", format!("{outbox}_seq")),
            ("sequence function", format!("{outbox}_next_seq")),
            ("slot function", format!("{outbox}_slot")),
            ("id index", format!("{outbox}_id_key")),
            ("retry index", format!("{outbox}_not_before_idx")),
            ("claim index", format!("{outbox}_unpublished_idx")),
            ("retention index", format!("{outbox}_published_at_idx")),
            (
                "dead-letter index",
                format!("{}_topic_idx", self.dead_letters),
            ),
            ("inbox purge index", format!("{}_purge_idx", self.inbox)),
            ("old inbox index", format!("{}_received_at_idx", self.inbox)),
            ("wake-up channel", self.channel()),
            ("WAL slot table", format!("{outbox}_wal_slots")),
            ("WAL envelope function", format!("{outbox}_wal_envelope")),
        ]
    }

    fn check_derived(self) -> Result<Self, Error> {
        if let Some((what, name)) = self
            .derived()
            .into_iter()
            .find(|(_, name)| name.len() > MAX_IDENTIFIER_BYTES)
        {
            return Err(Error::DerivedNameTooLong { what, name });
        }
        Ok(self)
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    pub(crate) fn qualified(&self, table: &str) -> String {
        format!("\"{}\".\"{}\"", self.schema, table)
    }

    /// `"schema"."outbox"`.
    pub fn outbox_table(&self) -> String {
        self.qualified(&self.outbox)
    }

    /// `"schema"."outbox_dead_letters"`.
    pub fn dead_letters_table(&self) -> String {
        self.qualified(&self.dead_letters)
    }

    /// `"schema"."inbox"`.
    pub fn inbox_table(&self) -> String {
        self.qualified(&self.inbox)
    }

    /// `"schema"."outbox_wal_slots"`: the replication slots WAL capture reads.
    pub fn wal_slots_table(&self) -> String {
        self.qualified(&format!("{}_wal_slots", self.outbox))
    }

    /// The function that builds a message's WAL envelope, for writers without the library.
    pub fn wal_envelope_function(&self) -> String {
        self.qualified(&format!("{}_wal_envelope", self.outbox))
    }

    /// `"schema"."outbox_migrations"`.
    pub fn migrations_table(&self) -> String {
        self.qualified(&self.migrations)
    }

    /// The sequence numbering the outbox.
    pub(crate) fn sequence(&self) -> String {
        self.qualified(&format!("{}_seq", self.outbox))
    }

    /// The bare name of the sequence, as `pg_sequences` lists it.
    pub(crate) fn sequence_name(&self) -> String {
        format!("{}_seq", self.outbox)
    }

    /// The function that numbers a row under the writer lock (the `seq` column's default).
    pub(crate) fn next_seq_function(&self) -> String {
        self.qualified(&format!("{}_next_seq", self.outbox))
    }

    /// The function that computes a message's slot from its key (or id), as the library does.
    pub fn slot_function(&self) -> String {
        self.qualified(&format!("{}_slot", self.outbox))
    }

    /// Bare names, for index names.
    pub(crate) fn outbox_name(&self) -> &str {
        &self.outbox
    }

    pub(crate) fn dead_letters_name(&self) -> &str {
        &self.dead_letters
    }

    pub(crate) fn inbox_name(&self) -> &str {
        &self.inbox
    }

    /// The LISTEN/NOTIFY channel that wakes relays.
    pub fn channel(&self) -> String {
        format!("{}_{}_wakeup", self.schema, self.outbox)
    }

    /// The first key of every advisory lock of this outbox (relay lanes, writers, migrations).
    pub(crate) fn lock_namespace(&self) -> i32 {
        let name = format!("{}.{}", self.schema, self.outbox);
        (outbox_core::lane::murmur2(name.as_bytes()) & 0x7fff_ffff) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identifiers_pass_and_others_are_refused_with_the_setting_named() {
        let tables = Tables::default()
            .schema("billing")
            .and_then(|t| t.outbox("events_outbox"))
            .expect("valid names");
        assert_eq!(tables.outbox_table(), "\"billing\".\"events_outbox\"");
        for bad in [
            "",
            "Outbox",
            "1box",
            "out-box",
            "x\"; drop table y; --",
            &"a".repeat(64),
        ] {
            let err = Tables::default().outbox(bad).expect_err(bad);
            assert!(err.to_string().contains("outbox table"), "{err}");
        }
    }

    #[test]
    fn names_whose_derived_names_exceed_postgresql_limits_are_refused_with_the_name_given() {
        // A 63-character outbox: its sequence would be truncated onto the table's own name.
        let err = Tables::default()
            .outbox("o".repeat(63))
            .expect_err("sequence too long");
        assert!(err.to_string().contains("sequence"), "{err}");
        // Each name fits, together the wake-up channel does not: every enqueue would fail.
        let err = Tables::default()
            .schema("s".repeat(30))
            .and_then(|t| t.outbox("o".repeat(30)))
            .expect_err("channel too long");
        let text = err.to_string();
        assert!(text.contains("wake-up channel"), "{text}");
        assert!(
            text.contains(&format!("{}_{}_wakeup", "s".repeat(30), "o".repeat(30))),
            "{text}"
        );
        let err = Tables::default()
            .inbox("i".repeat(60))
            .expect_err("index too long");
        assert!(err.to_string().contains("inbox purge index"), "{err}");
        let longest = "o".repeat(46);
        let tables = Tables::default()
            .outbox(&longest)
            .expect("46 characters fit");
        assert!(tables.derived().iter().all(|(_, name)| name.len() <= 63));
    }

    #[test]
    fn different_outboxes_get_different_channels_and_lock_namespaces() {
        let a = Tables::default();
        let b = Tables::default().outbox("other").expect("valid");
        assert_ne!(a.channel(), b.channel());
        assert_ne!(a.lock_namespace(), b.lock_namespace());
        assert!(a.lock_namespace() >= 0);
    }
}
