//! The benchmark's replication slot (named after its database): created for the WAL part, moved to
//! the end of the WAL before each WAL relay starts (so that it reads only what it is measured on),
//! dropped after the part and before the database is dropped, and the slots an earlier run left
//! behind dropped before a new run starts.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outbox_postgres::{SlotName, Tables};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::env::Bench;

/// How long a walsender may take to leave a slot after its relay stopped, before it is ended.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// Creates the benchmark's slot (after the migrations, which `Bench::create` ran).
///
/// # Errors
/// When the server cannot capture (`wal_level`, the role's `REPLICATION` attribute, free slots).
pub async fn create(bench: &Bench) -> anyhow::Result<()> {
    let mut conn = bench.pool.acquire().await?;
    outbox_postgres::wal::create_slot(&mut conn, &Tables::default(), &bench.slot)
        .await
        .with_context(|| format!("creating the replication slot {}", bench.slot))?;
    crate::progress(format!("replication slot {} created", bench.slot));
    Ok(())
}

/// The current end of the WAL.
///
/// # Errors
/// When the database fails.
pub async fn current_lsn(pool: &PgPool) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?)
}

/// Whether the slot confirmed everything up to `lsn`.
///
/// # Errors
/// When the database fails.
pub async fn confirmed_at_least(bench: &Bench, lsn: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(bench.slot.as_str())
    .bind(lsn)
    .fetch_optional(&bench.pool)
    .await?
    .unwrap_or(false))
}

/// Moves the slot (read by nobody) to the end of the WAL: what earlier parts wrote is never
/// decoded by the next relay, as an emptied outbox table holds nothing for the next table relay.
///
/// # Errors
/// When the slot is still read after [`LEAVE_GRACE`], or the database fails.
pub async fn skip_to_now(bench: &Bench) -> anyhow::Result<()> {
    let deadline = Instant::now() + LEAVE_GRACE;
    loop {
        let advanced = sqlx::query(
            "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn()) WHERE EXISTS
               (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND NOT active)",
        )
        .bind(bench.slot.as_str())
        .execute(&bench.pool)
        .await?;
        if advanced.rows_affected() == 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the replication slot {} is still read {LEAVE_GRACE:?} after its relay stopped",
                bench.slot
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drops the benchmark's slot, its publication and its registration (`wal::drop_slot`), ending
/// its walsender if it has not left the slot [`LEAVE_GRACE`] after its relay stopped.
///
/// # Errors
/// When the slot cannot be dropped.
pub async fn drop(bench: &Bench) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&bench.connect).await?;
    let result = drop_on(&mut conn, &bench.slot).await;
    conn.close().await?;
    result?;
    crate::progress(format!("replication slot {} dropped", bench.slot));
    Ok(())
}

async fn drop_on(conn: &mut PgConnection, slot: &SlotName) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let reader: Option<Option<i32>> =
            sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        match reader {
            Some(Some(pid)) if started.elapsed() > LEAVE_GRACE => {
                crate::progress(format!(
                    "the walsender of slot {slot} (pid {pid}) did not leave it; ending it"
                ));
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut *conn)
                    .await?;
            }
            Some(Some(_)) if started.elapsed() > 3 * LEAVE_GRACE => {
                bail!("the replication slot {slot} is still read; it is left in place");
            }
            Some(Some(_)) => {}
            Some(None) | None => {
                return Ok(outbox_postgres::wal::drop_slot(conn, &Tables::default(), slot).await?);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops every replication slot of the database `connect` points at (ending their walsenders),
/// so that the database can be dropped. Returns the slots dropped.
///
/// # Errors
/// When the database fails.
pub async fn drop_all_in(connect: &PgConnectOptions) -> anyhow::Result<Vec<String>> {
    let mut conn = connect.connect().await?;
    let slots: Vec<String> = sqlx::query_scalar(
        "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()",
    )
    .fetch_all(&mut conn)
    .await?;
    for slot in &slots {
        let deadline = Instant::now() + LEAVE_GRACE;
        loop {
            let pid: Option<Option<i32>> = sqlx::query_scalar(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(slot)
            .fetch_optional(&mut conn)
            .await?;
            match pid {
                None => break,
                Some(None) => {
                    sqlx::query("SELECT pg_drop_replication_slot($1)")
                        .bind(slot)
                        .execute(&mut conn)
                        .await?;
                    break;
                }
                Some(Some(pid)) => {
                    if Instant::now() > deadline {
                        bail!("the walsender of slot {slot} (pid {pid}) does not end");
                    }
                    sqlx::query("SELECT pg_terminate_backend($1)")
                        .bind(pid)
                        .execute(&mut conn)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    conn.close().await?;
    Ok(slots)
}

/// Drops what an earlier run that did not finish left behind: a slot of a benchmark database
/// (`outbox_bench_*`) that nobody reads, in a database nobody is connected to (a run still going
/// always holds connections to its own), and then that database, which the slot kept from being
/// dropped. Failures are only reported.
pub async fn drop_stale(admin: &PgConnectOptions) {
    let dropped = async {
        let mut conn = admin.connect().await?;
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT s.database::text FROM pg_replication_slots AS s
             WHERE s.database LIKE 'outbox\\_bench\\_%' AND NOT s.active
               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.datname = s.database)",
        )
        .fetch_all(&mut conn)
        .await?;
        for database in stale {
            let slots = drop_all_in(&admin.clone().database(&database)).await?;
            let quoted = database.replace('"', "\"\"");
            sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
            ))
            .execute(&mut conn)
            .await?;
            crate::progress(format!(
                "dropped the stale slot(s) {} of an earlier run, and its database {database}",
                slots.join(", ")
            ));
        }
        conn.close().await?;
        anyhow::Ok(())
    };
    if let Err(error) = dropped.await {
        crate::progress(format!(
            "could not drop the slots of earlier runs: {error:#}"
        ));
    }
}
