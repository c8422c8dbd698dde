//! WAL capture in tests: a slot per test database, enqueuing in WAL mode, waiting for the relay
//! to confirm what was written.

use std::time::Duration;

use anyhow::bail;
use outbox_postgres::{PgOutbox, SlotName, Tables};

use crate::TestDb;

/// Creates the test database's replication slot (named after the database) and returns its name.
pub async fn create_slot(db: &TestDb) -> anyhow::Result<SlotName> {
    let slot = SlotName::new(&db.name)?;
    let mut conn = db.pool.acquire().await?;
    outbox_postgres::wal::create_slot(&mut conn, &Tables::default(), &slot).await?;
    Ok(slot)
}

/// The flags that make the relay program capture from `slot`.
pub fn relay_flags(slot: &SlotName) -> Vec<String> {
    ["--capture", "wal", "--wal-slot", slot.as_str()]
        .map(str::to_owned)
        .to_vec()
}

/// Enqueues `messages` in WAL mode in one transaction of their own and commits it.
pub async fn enqueue_committed(
    db: &TestDb,
    messages: &[outbox_core::Message],
) -> anyhow::Result<()> {
    let mut tx = db.pool.begin().await?;
    PgOutbox::wal().enqueue_all(&mut tx, messages).await?;
    tx.commit().await?;
    Ok(())
}

/// The slot's confirmed position, as text.
pub async fn confirmed(db: &TestDb, slot: &SlotName) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot.as_str())
    .fetch_one(&db.pool)
    .await?)
}

/// Waits until the slot's confirmed position reaches the WAL position of now: everything
/// committed before the call was published (or dead-lettered) and confirmed.
pub async fn wait_until_confirmed(
    db: &TestDb,
    slot: &SlotName,
    within: Duration,
) -> anyhow::Result<()> {
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let reached: bool = sqlx::query_scalar(
            "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot.as_str())
        .bind(&target)
        .fetch_one(&db.pool)
        .await?;
        if reached {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "slot {slot} confirmed only {:?} after {within:?}, waiting for {target}",
                confirmed(db, slot).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
