//! WAL capture in tests: a slot per test database, enqueuing in WAL mode, waiting for the relay
//! to confirm what was written.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use outbox_postgres::wal::REPLICATION_APPLICATION_NAME;
use outbox_postgres::{PgOutbox, SlotName, Tables};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::{Connection, PgConnection, PgPool};

use crate::private::PrivatePostgres;
use crate::{ChildProgram, Fixture, RelayProcess, TestDb, kafka_config_for};

/// A [`Fixture`] whose database has its replication slot (see [`create_slot`]).
pub async fn fixture(partitions: i32) -> anyhow::Result<(Fixture, SlotName)> {
    let fixture = Fixture::new(partitions).await?;
    let slot = create_slot(&fixture.db).await?;
    Ok((fixture, slot))
}

/// Creates the test database's replication slot (named after the database) and returns its name.
pub async fn create_slot(db: &TestDb) -> anyhow::Result<SlotName> {
    create_slot_on(&db.pool, &db.name).await
}

/// Creates replication slot `name` of the (migrated) database of `pool` and returns it.
pub async fn create_slot_on(pool: &PgPool, name: &str) -> anyhow::Result<SlotName> {
    let slot = SlotName::new(name)?;
    let mut conn = pool.acquire().await?;
    outbox_postgres::wal::create_slot(&mut conn, &Tables::default(), &slot).await?;
    Ok(slot)
}

/// A private PostgreSQL server ([`PrivatePostgres`]) that can capture (`wal_level = logical`), with
/// `settings` besides (lines of `postgresql.conf`, such as `"wal_sender_timeout = '1s'"`), its
/// `postgres` database migrated.
pub async fn logical_server(settings: &[&str]) -> anyhow::Result<PrivatePostgres> {
    let mut all = vec!["wal_level = logical"];
    all.extend_from_slice(settings);
    let server = PrivatePostgres::start_with(&all).await?;
    let mut conn = PgConnection::connect(&server.url()).await?;
    outbox_postgres::migrate(&mut conn, &Tables::default()).await?;
    conn.close().await?;
    Ok(server)
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
    confirmed_on(&db.pool, slot).await
}

/// [`confirmed`] on the database of `pool`.
pub async fn confirmed_on(pool: &PgPool, slot: &SlotName) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot.as_str())
    .fetch_one(pool)
    .await?)
}

/// Waits until the slot's confirmed position reaches the WAL position of now: everything
/// committed before the call was published (or dead-lettered) and confirmed.
pub async fn wait_until_confirmed(
    db: &TestDb,
    slot: &SlotName,
    within: Duration,
) -> anyhow::Result<()> {
    wait_until_confirmed_on(&db.pool, slot, within).await
}

/// [`wait_until_confirmed`] on the database of `pool` (a [`crate::private::PrivatePostgres`]'s).
/// A query that fails (the server restarting) is retried until the deadline.
pub async fn wait_until_confirmed_on(
    pool: &PgPool,
    slot: &SlotName,
    within: Duration,
) -> anyhow::Result<()> {
    let target = wal_position(pool).await?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(reached)) = confirmed_position(pool, slot).await
            && reached >= target
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "slot {slot} confirmed only {:?} after {within:?}, waiting for {}",
                confirmed_on(pool, slot).await?,
                lsn_text(target)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's WAL insert position now, as a number: every transaction committed before the
/// call ends at or before it.
pub async fn wal_position(pool: &PgPool) -> anyhow::Result<u64> {
    let position: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
            .fetch_one(pool)
            .await?;
    Ok(u64::try_from(position)?)
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(position: u64) -> String {
    format!("{:X}/{:X}", position >> 32, position & 0xffff_ffff)
}

/// The slot's confirmed position as a number (`None` before anything was confirmed).
pub async fn confirmed_position(pool: &PgPool, slot: &SlotName) -> anyhow::Result<Option<u64>> {
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot.as_str())
    .fetch_one(pool)
    .await?;
    Ok(position.map(u64::try_from).transpose()?)
}

/// The walsender that reads the slot now (`pg_replication_slots.active_pid`), if it is the
/// relay's (`application_name` [`REPLICATION_APPLICATION_NAME`]); `None` while nobody reads it.
pub async fn slot_reader(pool: &PgPool, slot: &SlotName) -> anyhow::Result<Option<i32>> {
    let row: Option<(Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT s.active_pid, a.application_name::text
         FROM pg_replication_slots AS s LEFT JOIN pg_stat_activity AS a ON a.pid = s.active_pid
         WHERE s.slot_name = $1",
    )
    .bind(slot.as_str())
    .fetch_optional(pool)
    .await?;
    match row {
        None => bail!("there is no replication slot {slot}"),
        Some((None, _)) => Ok(None),
        Some((Some(pid), Some(name))) if name == REPLICATION_APPLICATION_NAME => Ok(Some(pid)),
        Some((Some(pid), name)) => {
            bail!("slot {slot} is read by pid {pid} of another program ({name:?})")
        }
    }
}

/// Waits until `wanted` holds for the slot's reader ([`slot_reader`]); returns that reader.
pub async fn wait_for_slot_reader(
    pool: &PgPool,
    slot: &SlotName,
    within: Duration,
    wanted: impl Fn(Option<i32>) -> bool,
) -> anyhow::Result<Option<i32>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let reader = slot_reader(pool, slot).await?;
        if wanted(reader) {
            return Ok(reader);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("slot {slot}: its reader is still {reader:?} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a relay logs each time it takes the capture lock (and so reads the slot).
pub const LOCK_TAKEN: &str = "capture lock taken";

/// How many times the relay took the capture lock, from its log.
pub fn locks_taken(relay: &RelayProcess) -> usize {
    std::fs::read_to_string(&relay.log).map_or(0, |log| log.matches(LOCK_TAKEN).count())
}

/// Sends signal `name` (`STOP`, `CONT`, `KILL`...) to the child process.
pub fn signal(child: &ChildProgram, name: &str) -> anyhow::Result<()> {
    let pid = child.pid().context("the process already exited")?;
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// The peak resident set size of a running process in bytes (`VmHWM` of `/proc/PID/status`).
pub fn peak_rss(child: &ChildProgram) -> anyhow::Result<u64> {
    let pid = child.pid().context("the process already exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .context("no VmHWM in /proc/PID/status")?
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// The end offset of each partition of `topic` on `brokers`: how many records each holds.
pub async fn end_offsets(brokers: &str, topic: &str) -> anyhow::Result<Vec<i64>> {
    let config = kafka_config_for(brokers);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .context("topic not in metadata")?;
        (0..partitions as i32)
            .map(|partition| {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                Ok(high)
            })
            .collect()
    })
    .await?
}

/// Waits until `topic` on `brokers` holds at least `at_least` records (duplicates count); returns
/// how many it holds.
pub async fn wait_for_records(
    brokers: &str,
    topic: &str,
    at_least: i64,
    within: Duration,
) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let held: i64 = end_offsets(brokers, topic).await?.iter().sum();
        if held >= at_least {
            return Ok(held);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{topic} holds {held} records after {within:?}, waiting for {at_least}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
