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

fn identifier(what: &'static str, name: impl Into<String>) -> Result<String, Error> {
    let name = name.into();
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 {
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
        Ok(self)
    }

    /// The outbox table. Default `outbox`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn outbox(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.outbox = identifier("outbox table", name)?;
        Ok(self)
    }

    /// The dead-letter table. Default `outbox_dead_letters`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn dead_letters(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.dead_letters = identifier("dead-letter table", name)?;
        Ok(self)
    }

    /// The inbox table. Default `inbox`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn inbox(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.inbox = identifier("inbox table", name)?;
        Ok(self)
    }

    /// The table recording applied migrations. Default `outbox_migrations`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless the name is a plain lowercase identifier.
    pub fn migrations(mut self, name: impl Into<String>) -> Result<Self, Error> {
        self.migrations = identifier("migrations table", name)?;
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

    /// `"schema"."outbox_migrations"`.
    pub fn migrations_table(&self) -> String {
        self.qualified(&self.migrations)
    }

    /// The sequence numbering the outbox.
    pub(crate) fn sequence(&self) -> String {
        self.qualified(&format!("{}_seq", self.outbox))
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
    fn different_outboxes_get_different_channels_and_lock_namespaces() {
        let a = Tables::default();
        let b = Tables::default().outbox("other").expect("valid");
        assert_ne!(a.channel(), b.channel());
        assert_ne!(a.lock_namespace(), b.lock_namespace());
        assert!(a.lock_namespace() >= 0);
    }
}
