//! The schema, as embedded migrations.
//!
//! [`migrate`] applies what is missing in one transaction, under an advisory lock so that several
//! processes starting at once do not race. Applied versions are recorded in the configured migrations
//! table (not sqlx's `_sqlx_migrations`, so the service's own sqlx migrations stay independent).
//! Teams with their own migration tool can take the rendered SQL from [`migrations`] instead.

use sqlx::{Connection, PgConnection, Row};

use crate::error::Error;
use crate::queries::WRITER_KEY;
use crate::tables::Tables;

/// Advisory lock key (second half) serializing migrations of one outbox.
const MIGRATION_LOCK_KEY: i32 = 3 << 20;

/// One step of the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Applied in increasing order.
    pub version: i64,
    /// What it does.
    pub description: &'static str,
    /// The SQL, rendered for the configured names.
    pub sql: String,
}

const TEMPLATES: &[(i64, &str, &str)] = &[
    (
        1,
        "create outbox, dead letters and inbox",
        include_str!("../migrations/0001_outbox.sql"),
    ),
    (
        2,
        "retention of published messages",
        include_str!("../migrations/0002_retention.sql"),
    ),
    (
        3,
        "numbering under the writer lock, the slot function, inbox purge per consumer",
        include_str!("../migrations/0003_writer_lock_in_sql.sql"),
    ),
    (
        4,
        "the replication slots of WAL capture",
        include_str!("../migrations/0004_wal_capture.sql"),
    ),
];

/// The migrations, rendered for `tables`, oldest first.
pub fn migrations(tables: &Tables) -> Vec<Migration> {
    TEMPLATES
        .iter()
        .map(|&(version, description, template)| Migration {
            version,
            description,
            sql: render(template, tables),
        })
        .collect()
}

fn render(template: &str, tables: &Tables) -> String {
    let sequence = tables.sequence();
    template
        .replace("{sequence_text}", &sequence.replace('\'', "''"))
        .replace("{next_seq}", &tables.next_seq_function())
        .replace("{slot_function}", &tables.slot_function())
        .replace("{lock_namespace}", &tables.lock_namespace().to_string())
        .replace("{writer_key}", &WRITER_KEY.to_string())
        .replace("{slots}", &outbox_core::lane::SLOTS.to_string())
        .replace("{schema}", &format!("\"{}\"", tables.schema_name()))
        .replace("{sequence}", &sequence)
        .replace("{outbox}", &tables.outbox_table())
        .replace("{outbox_name}", tables.outbox_name())
        .replace("{dead_letters}", &tables.dead_letters_table())
        .replace("{dead_letters_name}", tables.dead_letters_name())
        .replace("{wal_slots}", &tables.wal_slots_table())
        .replace("{wal_envelope}", &tables.wal_envelope_function())
        .replace("{inbox}", &tables.inbox_table())
        .replace("{inbox_name}", tables.inbox_name())
}

/// The versions of [`migrations`] not applied yet in `conn`'s database (all of them when the
/// migrations table does not exist).
///
/// # Errors
/// [`Error::Database`] when the database cannot be queried.
pub async fn pending_migrations(
    conn: &mut PgConnection,
    tables: &Tables,
) -> Result<Vec<i64>, Error> {
    let history = tables.migrations_table();
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&history)
        .fetch_one(&mut *conn)
        .await?;
    let applied: Vec<i64> = if exists.is_some() {
        sqlx::query_scalar(&format!("SELECT version FROM {history}"))
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };
    Ok(migrations(tables)
        .into_iter()
        .map(|m| m.version)
        .filter(|version| !applied.contains(version))
        .collect())
}

/// Applies the migrations `conn` does not have yet. Returns the versions it applied.
///
/// # Errors
/// [`Error::Migration`] when a migration fails (none of this call's migrations stay applied),
/// [`Error::UnknownMigration`] when the database is ahead of this library, [`Error::Database`] when
/// the database cannot be reached.
pub async fn migrate(conn: &mut PgConnection, tables: &Tables) -> Result<Vec<i64>, Error> {
    let history = tables.migrations_table();
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(tables.lock_namespace())
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {history} (
            version     BIGINT      PRIMARY KEY,
            description TEXT        NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )"
    ))
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> = sqlx::query(&format!("SELECT version FROM {history} ORDER BY version"))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let known = migrations(tables);
    if let Some(&version) = applied
        .iter()
        .find(|v| !known.iter().any(|m| m.version == **v))
    {
        return Err(Error::UnknownMigration { version });
    }
    let mut newly = Vec::new();
    for migration in known.into_iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| Error::Migration {
            version: migration.version,
            description: migration.description,
            source,
        };
        sqlx::raw_sql(&migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(&format!(
            "INSERT INTO {history} (version, description) VALUES ($1, $2)"
        ))
        .bind(migration.version)
        .bind(migration.description)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "applied outbox migration"
        );
        newly.push(migration.version);
    }
    tx.commit().await?;
    Ok(newly)
}
