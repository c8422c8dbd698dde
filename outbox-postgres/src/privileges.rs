//! The privileges each role of an outbox needs, as SQL that the owner of the migrated tables runs.
//!
//! Four roles, each with only what its work takes:
//!
//! | role | does | needs |
//! | --- | --- | --- |
//! | the migration role | `outbox-relay migrate`, `wal create-slot` | owns the tables it creates (`CREATE` on the schema; for WAL capture also `REPLICATION` and `CREATE` on the database, for the slot's publication) |
//! | [`Role::Writer`] | enqueues in the service's transactions | `INSERT` on the outbox, the sequence that numbers it, the functions its column defaults and writers call |
//! | [`Role::Relay`] | claims, publishes, settles, parks dead letters, replays them | reads, updates and deletes the outbox's rows, moves rows to and from the dead letters, reads the migrations, the WAL slot registry; advisory locks need no grant. For WAL capture also `REPLICATION` |
//! | [`Role::Consumer`] | records what it applied, purges its own rows | the inbox |
//!
//! No role but the migration role may change the schema: none of these grants allows DDL.

use crate::error::Error;
use crate::tables::{Tables, identifier};

/// A role of an outbox other than the one that owns its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A service that enqueues messages in its transactions.
    Writer,
    /// The relay, in table or WAL mode, and the admin commands that read status and dead letters.
    Relay,
    /// A consumer that deduplicates through the inbox.
    Consumer,
}

impl Tables {
    /// The `GRANT` statements that give `grantee` what `role` needs on these tables, for their
    /// owner (the migration role) to run once they are migrated. Running them again changes
    /// nothing.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] unless `grantee` is a plain lowercase identifier.
    pub fn grants(&self, role: Role, grantee: &str) -> Result<String, Error> {
        let grantee = identifier("role", grantee)?;
        let schema = self.schema_name();
        let outbox = self.outbox_table();
        let sequence = self.sequence();
        let functions = format!(
            "{}, {}, {}",
            self.next_seq_function(),
            self.slot_function(),
            self.wal_envelope_function()
        );
        let mut sql = vec![format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {grantee};")];
        match role {
            Role::Writer => sql.extend([
                format!("GRANT INSERT ON {outbox} TO {grantee};"),
                format!("GRANT USAGE ON SEQUENCE {sequence} TO {grantee};"),
                format!("GRANT EXECUTE ON FUNCTION {functions} TO {grantee};"),
            ]),
            Role::Relay => sql.extend([
                format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {outbox} TO {grantee};"),
                format!(
                    // UPDATE for the row locks of a replay (`FOR UPDATE`); rows are not changed.
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {grantee};",
                    self.dead_letters_table()
                ),
                format!(
                    "GRANT SELECT, UPDATE ON {} TO {grantee};",
                    self.wal_slots_table()
                ),
                format!("GRANT SELECT ON {} TO {grantee};", self.migrations_table()),
                format!("GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {grantee};"),
                format!("GRANT EXECUTE ON FUNCTION {functions} TO {grantee};"),
            ]),
            Role::Consumer => sql.push(format!(
                "GRANT SELECT, INSERT, DELETE ON {} TO {grantee};",
                self.inbox_table()
            )),
        }
        Ok(sql.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_the_configured_tables_and_refuse_a_role_name_that_is_not_plain() {
        let tables = Tables::default()
            .schema("shop")
            .and_then(|t| t.outbox("events"))
            .expect("valid names");
        let writer = tables.grants(Role::Writer, "orders_app").expect("valid");
        assert!(
            writer.contains("GRANT INSERT ON \"shop\".\"events\" TO orders_app;"),
            "{writer}"
        );
        assert!(
            !writer.contains("SELECT"),
            "a writer reads nothing: {writer}"
        );
        let relay = tables.grants(Role::Relay, "relay").expect("valid");
        assert!(
            relay.contains("\"shop\".\"outbox_dead_letters\""),
            "{relay}"
        );
        assert!(tables.grants(Role::Consumer, "x; DROP TABLE y").is_err());
    }
}

#[cfg(test)]
mod docs {
    use super::*;

    /// `docs/operations.md` shows the grants for the default tables; they are these.
    #[test]
    fn the_operations_guide_shows_the_grants_as_they_are() {
        let guide = include_str!("../../docs/operations.md");
        let tables = Tables::default();
        for (role, grantee) in [
            (Role::Writer, "orders_writer"),
            (Role::Relay, "outbox_relay"),
            (Role::Consumer, "billing_consumer"),
        ] {
            let sql = tables.grants(role, grantee).expect("valid");
            assert!(
                guide.contains(&sql),
                "docs/operations.md lacks the grants of {role:?}:\n{sql}"
            );
        }
    }
}
