//! The `wal` subcommands: the replication slot of WAL capture. They only need PostgreSQL.

use anyhow::Context;
use outbox_postgres::SlotName;
use outbox_postgres::wal::{self, Created, SlotStatus};
use serde_json::json;

use crate::cli::{WalSlotArgs, WalStatusArgs};
use crate::connect;
use crate::settings::{WalSlot, process_env};

/// Resolves the database and slot settings, connects one connection, and checks the tables exist.
async fn open(
    args: &WalSlotArgs,
) -> anyhow::Result<(sqlx::PgPool, outbox_postgres::Tables, SlotName)> {
    let WalSlot { database, slot } = WalSlot::resolve(&args.settings, &process_env)?;
    let (pool, tables) = connect::open(&database).await?;
    Ok((pool, tables, slot))
}

/// `outbox-relay wal create-slot`.
pub async fn create_slot(args: WalSlotArgs) -> anyhow::Result<()> {
    let (pool, tables, slot) = open(&args).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let created = wal::create_slot(&mut conn, &tables, &slot)
        .await
        .with_context(|| format!("cannot create the replication slot `{slot}`"))?;
    drop(conn);
    pool.close().await;
    match created {
        Created::Created => println!("created replication slot `{slot}` and its publication"),
        Created::Existed => println!("replication slot `{slot}` exists already"),
    }
    Ok(())
}

/// `outbox-relay wal drop-slot`.
pub async fn drop_slot(args: WalSlotArgs) -> anyhow::Result<()> {
    let (pool, tables, slot) = open(&args).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    wal::drop_slot(&mut conn, &tables, &slot)
        .await
        .with_context(|| format!("cannot drop the replication slot `{slot}`"))?;
    drop(conn);
    pool.close().await;
    println!("dropped replication slot `{slot}` and its publication");
    Ok(())
}

/// `outbox-relay wal status`.
pub async fn status(args: WalStatusArgs) -> anyhow::Result<()> {
    let (pool, tables, slot) = open(&args.slot).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let status = wal::slot_status(&mut conn, &tables, &slot)
        .await
        .with_context(|| format!("cannot read the replication slot `{slot}`"))?;
    drop(conn);
    pool.close().await;
    if args.json {
        println!("{}", status_json(&status));
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

fn status_json(status: &SlotStatus) -> serde_json::Value {
    json!({
        "slot": status.slot,
        "exists": status.exists,
        "active": status.active,
        "active_pid": status.active_pid,
        "confirmed_lsn": status.confirmed_lsn,
        "lag_bytes": status.lag_bytes,
        "lag_seconds": status.lag_seconds,
        "heartbeat_at": status.heartbeat_at.map(|t| t.to_rfc3339()),
        "wal_status": status.wal_status,
    })
}

fn status_text(status: &SlotStatus) -> String {
    if !status.exists {
        return format!(
            "slot {}: registered but missing on the server; create it again with `outbox-relay wal create-slot`\n",
            status.slot
        );
    }
    let reader = match (status.active, status.active_pid) {
        (true, Some(pid)) => format!("read by walsender pid {pid}"),
        _ => "not read by any relay".to_owned(),
    };
    let or_unknown = |value: Option<String>| value.unwrap_or_else(|| "unknown".to_owned());
    format!(
        "slot {}: {reader}\nconfirmed position: {}\nlag: {} bytes, {} seconds\nlast heartbeat: {}\nWAL retention: {}\n",
        status.slot,
        or_unknown(status.confirmed_lsn.clone()),
        or_unknown(status.lag_bytes.map(|b| b.to_string())),
        or_unknown(status.lag_seconds.map(|s| format!("{s:.1}"))),
        or_unknown(status.heartbeat_at.map(|t| t.to_rfc3339())),
        or_unknown(status.wal_status.clone()),
    )
}
