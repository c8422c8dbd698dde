//! The replication slot of WAL capture: creating and dropping it, its status, and the checks that
//! tell an operator what the database lacks before anything is read.
//!
//! A slot is *registered* in the outbox's slot table when this library creates it. The relay reads
//! only registered slots: a slot of the same name created by another program (a CDC tool, a
//! replica) is refused, never taken over.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::error::Error;
use crate::tables::{Tables, identifier};

/// The `application_name` of the relay's replication connections: only a walsender with this name
/// is ever ended to take a slot over.
pub const REPLICATION_APPLICATION_NAME: &str = "outbox-relay-wal";

/// A replication slot name, checked as PostgreSQL checks one (lowercase letters, digits and `_`, at
/// most 63 bytes). Its publication has the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotName(String);

impl SlotName {
    /// Checks `name`.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] naming the rule it breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        identifier("replication slot", name).map(Self)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SlotName {
    fn default() -> Self {
        Self("outbox".to_owned())
    }
}

impl std::fmt::Display for SlotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`create_slot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The slot, its publication and its registration are new.
    Created,
    /// The slot existed already and is this outbox's.
    Existed,
}

/// A slot's state, as `outbox-relay wal status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotStatus {
    /// The slot.
    pub slot: String,
    /// Whether the server has the slot (a registered slot can have been dropped by hand).
    pub exists: bool,
    /// Whether a walsender reads it now.
    pub active: bool,
    /// That walsender's process id.
    pub active_pid: Option<i32>,
    /// The position up to which the relay confirmed everything as published.
    pub confirmed_lsn: Option<String>,
    /// WAL the server keeps for the slot, from the confirmed position to the current one.
    pub lag_bytes: Option<i64>,
    /// Age of the oldest committed transaction whose messages the active relay has not all settled
    /// (0 when it has none), as it last reported it.
    pub lag_seconds: Option<f64>,
    /// When the relay reading the slot last renewed its lease.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// `max_slot_wal_keep_size`'s verdict on the slot (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
}

/// Checks what capture needs of the server whatever the slot: `wal_level`, the version, the role.
///
/// # Errors
/// [`Error::Unsupported`] naming the setting and how to fix it.
pub async fn check_server(conn: &mut PgConnection) -> Result<(), Error> {
    let row = sqlx::query(
        "SELECT current_setting('wal_level') AS wal_level,
                current_setting('server_version_num')::int AS version,
                (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user) AS may_replicate,
                current_user::text AS role",
    )
    .fetch_one(&mut *conn)
    .await?;
    let wal_level: String = row.try_get("wal_level")?;
    if wal_level != "logical" {
        return Err(Error::Unsupported(format!(
            "WAL capture needs wal_level = logical, the server runs with wal_level = {wal_level}: set it in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
        )));
    }
    let version: i32 = row.try_get("version")?;
    if version < 140_000 {
        return Err(Error::Unsupported(format!(
            "WAL capture needs PostgreSQL 14 or newer (logical decoding messages through pgoutput); the server is version {version}"
        )));
    }
    let may_replicate: Option<bool> = row.try_get("may_replicate")?;
    if may_replicate != Some(true) {
        let role: String = row.try_get("role")?;
        return Err(Error::Unsupported(format!(
            "WAL capture needs a role with the REPLICATION attribute; `{role}` has none: ALTER ROLE \"{role}\" REPLICATION (and allow it a replication connection in pg_hba.conf)"
        )));
    }
    Ok(())
}

/// Checks that `slot` can be read by this outbox's relay: the server can capture, the slot exists
/// in this database with `pgoutput`, and this outbox created it.
///
/// # Errors
/// [`Error::Unsupported`] saying what is missing and the command that fixes it.
pub async fn check_slot(
    conn: &mut PgConnection,
    tables: &Tables,
    slot: &SlotName,
) -> Result<(), Error> {
    check_server(conn).await?;
    let found = sqlx::query(
        "SELECT plugin, database = current_database() AS here, slot_type
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(found) = found else {
        return Err(missing(slot));
    };
    let plugin: Option<String> = found.try_get("plugin")?;
    let here: Option<bool> = found.try_get("here")?;
    if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
        return Err(Error::Unsupported(format!(
            "the replication slot `{slot}` belongs to another program (plugin {}, {}); choose another slot name",
            plugin.as_deref().unwrap_or("none"),
            if here == Some(true) {
                "this database"
            } else {
                "another database"
            }
        )));
    }
    if !registered(conn, tables, slot).await? {
        return Err(Error::Unsupported(format!(
            "the replication slot `{slot}` was not created by this outbox (it is not in {}): it belongs to another program, and reading it would take its changes away; choose another slot name",
            tables.wal_slots_table()
        )));
    }
    Ok(())
}

/// The walsender reading `slot` now, if any, with its `application_name`.
pub(crate) async fn reader(
    conn: &mut PgConnection,
    slot: &SlotName,
) -> Result<Option<(i32, Option<String>)>, Error> {
    let row = sqlx::query(
        "SELECT s.active_pid, a.application_name::text AS application_name
         FROM pg_replication_slots AS s LEFT JOIN pg_stat_activity AS a ON a.pid = s.active_pid
         WHERE s.slot_name = $1",
    )
    .bind(slot.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(missing(slot));
    };
    let pid: Option<i32> = row.try_get("active_pid")?;
    Ok(match pid {
        Some(pid) => Some((pid, row.try_get("application_name")?)),
        None => None,
    })
}

/// Refuses a slot that another program reads now: its reader is never ended.
pub(crate) fn refuse_foreign_reader(
    slot: &SlotName,
    reader: &Option<(i32, Option<String>)>,
) -> Result<(), Error> {
    match reader {
        Some((pid, application))
            if application.as_deref() != Some(REPLICATION_APPLICATION_NAME) =>
        {
            Err(Error::Unsupported(format!(
                "the replication slot `{slot}` is read by another program (pid {pid}, application `{}`); it is never taken over: stop that program or choose another slot",
                application.as_deref().unwrap_or_default()
            )))
        }
        _ => Ok(()),
    }
}

fn missing(slot: &SlotName) -> Error {
    Error::Unsupported(format!(
        "there is no replication slot `{slot}`: create it with `outbox-relay wal create-slot --slot {slot}` before writers enqueue in WAL mode (messages written before the slot exists are not captured)"
    ))
}

async fn registered(
    conn: &mut PgConnection,
    tables: &Tables,
    slot: &SlotName,
) -> Result<bool, Error> {
    let table = tables.wal_slots_table();
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    if exists.is_none() {
        return Err(Error::Unsupported(format!(
            "{table} does not exist: run `outbox-relay migrate` first"
        )));
    }
    Ok(sqlx::query_scalar::<_, bool>(&format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE slot_name = $1)"
    ))
    .bind(slot.as_str())
    .fetch_one(&mut *conn)
    .await?)
}

/// Creates `slot` (logical, `pgoutput`), its empty publication of the same name (`pgoutput` needs
/// one; logical messages need no table in it) and its registration. Idempotent for a slot of this
/// outbox.
///
/// # Errors
/// [`Error::Unsupported`] when the server cannot capture, no slot is free, or a slot of that name
/// belongs to another program.
pub async fn create_slot(
    conn: &mut PgConnection,
    tables: &Tables,
    slot: &SlotName,
) -> Result<Created, Error> {
    check_server(conn).await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(slot.as_str())
    .fetch_one(&mut *conn)
    .await?;
    if exists {
        check_slot(conn, tables, slot).await?;
        ensure_publication(conn, slot).await?;
        return Ok(Created::Existed);
    }
    // Registered first, so that a slot of ours is never left unregistered (and then refused).
    let table = tables.wal_slots_table();
    registered(conn, tables, slot).await?;
    sqlx::query(&format!(
        "INSERT INTO {table} (slot_name, publication) VALUES ($1, $1) ON CONFLICT (slot_name) DO NOTHING"
    ))
    .bind(slot.as_str())
    .execute(&mut *conn)
    .await?;
    let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(slot.as_str())
        .execute(&mut *conn)
        .await;
    if let Err(error) = created {
        if let Some(db) = error.as_database_error()
            && db.code().as_deref() == Some("53400")
        {
            return Err(Error::Unsupported(format!(
                "no replication slot is free for `{slot}` ({}): raise max_replication_slots (a restart is needed) or drop a slot nobody reads",
                db.message()
            )));
        }
        return Err(error.into());
    }
    ensure_publication(conn, slot).await?;
    Ok(Created::Created)
}

async fn ensure_publication(conn: &mut PgConnection, slot: &SlotName) -> Result<(), Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(slot.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        // The name passed the identifier check: quoting it is enough.
        sqlx::query(&format!("CREATE PUBLICATION \"{slot}\""))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Drops `slot`, its publication and its registration. Refused while a relay reads the slot, and
/// for a slot this outbox did not create.
///
/// # Errors
/// [`Error::Unsupported`] saying why.
pub async fn drop_slot(
    conn: &mut PgConnection,
    tables: &Tables,
    slot: &SlotName,
) -> Result<(), Error> {
    if !registered(conn, tables, slot).await? {
        return Err(Error::Unsupported(format!(
            "the replication slot `{slot}` is not this outbox's (not in {}); it is left alone",
            tables.wal_slots_table()
        )));
    }
    let active: Option<Option<i32>> =
        sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(Some(pid)) = active {
        return Err(Error::Unsupported(format!(
            "the replication slot `{slot}` is being read (walsender pid {pid}): stop its relay first"
        )));
    }
    if active.is_some() {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(slot.as_str())
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(&format!("DROP PUBLICATION IF EXISTS \"{slot}\""))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "DELETE FROM {} WHERE slot_name = $1",
        tables.wal_slots_table()
    ))
    .bind(slot.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The state of `slot`.
///
/// # Errors
/// [`Error::Unsupported`] for a slot this outbox did not create, [`Error::Database`] when the
/// database cannot be queried.
pub async fn slot_status(
    conn: &mut PgConnection,
    tables: &Tables,
    slot: &SlotName,
) -> Result<SlotStatus, Error> {
    if !registered(conn, tables, slot).await? {
        return Err(Error::Unsupported(format!(
            "the replication slot `{slot}` is not this outbox's (not in {}); create one with `outbox-relay wal create-slot --slot {slot}`",
            tables.wal_slots_table()
        )));
    }
    let row = sqlx::query(&format!(
        "SELECT s.slot_name IS NOT NULL AS exists, coalesce(s.active, false) AS active, s.active_pid,
                s.confirmed_flush_lsn::text AS confirmed_lsn,
                pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8 AS lag_bytes,
                CASE WHEN r.heartbeat_at IS NULL THEN NULL
                     ELSE coalesce(extract(epoch FROM now() - r.oldest_pending_commit), 0)::float8 END AS lag_seconds,
                r.heartbeat_at, s.wal_status
         FROM {} AS r LEFT JOIN pg_replication_slots AS s ON s.slot_name = r.slot_name
         WHERE r.slot_name = $1",
        tables.wal_slots_table()
    ))
    .bind(slot.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(SlotStatus {
        slot: slot.to_string(),
        exists: row.try_get("exists")?,
        active: row.try_get("active")?,
        active_pid: row.try_get("active_pid")?,
        confirmed_lsn: row.try_get("confirmed_lsn")?,
        lag_bytes: row.try_get("lag_bytes")?,
        lag_seconds: row.try_get("lag_seconds")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        wal_status: row.try_get("wal_status")?,
    })
}
