//! The baselines the relay is compared with, each doing part of its work with nothing around it:
//! claim+delete without publishing, producing without a database, and a naive relay that publishes
//! one message per transaction.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use outbox_core::{Fence, Message, Publisher, StoredMessage};
use outbox_kafka::KafkaPublisher;
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row};

use crate::capture::Capture;
use crate::env::Bench;

/// Every column the relay reads, oldest first, locked, skipping rows another worker holds.
const CLAIM: &str = "SELECT seq, id, topic, key, event_type, source, content_type, payload, headers, created_at, attempts
     FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED";
const DELETE: &str = "DELETE FROM outbox WHERE seq = ANY($1)";

/// A throughput measurement.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Throughput {
    /// Messages handled.
    pub messages: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Messages per second.
    pub per_second: f64,
    /// CPU this process (the relays under test) used and the machine's idle share, for relay
    /// drains.
    #[serde(default)]
    pub cpu: Option<crate::cpu::Usage>,
}

impl Throughput {
    /// `messages` in `elapsed`.
    pub fn new(messages: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            messages,
            seconds,
            per_second: messages as f64 / seconds.max(1e-9),
            cpu: None,
        }
    }
}

fn decode(row: &PgRow) -> anyhow::Result<StoredMessage> {
    let headers: serde_json::Value = row.try_get("headers")?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(StoredMessage {
        seq: row.try_get("seq")?,
        attempts: u32::try_from(attempts)?,
        message: Message {
            id: row.try_get("id")?,
            topic: row.try_get("topic")?,
            key: row.try_get("key")?,
            event_type: row.try_get("event_type")?,
            source: row.try_get("source")?,
            content_type: row.try_get("content_type")?,
            payload: row.try_get("payload")?,
            headers: serde_json::from_value::<BTreeMap<String, String>>(headers)?,
            created_at: row.try_get("created_at")?,
        },
    })
}

/// One transaction of the classic claim: lock up to `limit` of the oldest rows, read and decode
/// them, delete them, commit. Returns how many it took.
///
/// # Errors
/// When the database fails.
pub async fn claim_and_delete(conn: &mut PgConnection, limit: usize) -> anyhow::Result<usize> {
    let mut tx = conn.begin().await?;
    let rows = sqlx::query(CLAIM)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
    let batch = rows
        .iter()
        .map(decode)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seqs: Vec<i64> = batch.iter().map(|stored| stored.seq).collect();
    sqlx::query(DELETE).bind(&seqs).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(batch.len())
}

/// Baseline (a): claims and deletes a committed backlog of `count` messages in batches of
/// `batch_size` on one connection, publishing nothing.
///
/// # Errors
/// When the database fails or rows are missing.
pub async fn raw_claim_delete(
    bench: &Bench,
    count: u64,
    batch_size: usize,
) -> anyhow::Result<Throughput> {
    fresh_backlog(bench, count).await?;
    let started = Instant::now();
    claim_and_delete_all(bench, count, batch_size).await?;
    Ok(Throughput::new(count, started.elapsed()))
}

/// Empties the outbox and commits a backlog of `count` messages.
async fn fresh_backlog(bench: &Bench, count: u64) -> anyhow::Result<()> {
    bench.reset().await?;
    crate::workload::fill_backlog(&bench.pool, Capture::Table, "bench-raw", count).await?;
    Ok(())
}

/// Claims and deletes the whole backlog of `count` messages in batches on one connection.
async fn claim_and_delete_all(bench: &Bench, count: u64, batch_size: usize) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&bench.connect).await?;
    let mut done = 0_u64;
    loop {
        let taken = claim_and_delete(&mut conn, batch_size).await?;
        if taken == 0 {
            break;
        }
        done += taken as u64;
    }
    conn.close().await?;
    if done != count {
        bail!("raw claim+delete found {done} of {count} messages");
    }
    Ok(())
}

/// Baseline (d): both jobs of the relay at once on this machine, uncoupled — baseline (a) over a
/// backlog of `count` messages and baseline (b) of `count` records to `topic`, started together.
/// Their throughput is `count` over the time until both finished: the most a relay could reach
/// here, where the database, the broker and the relay share the cores.
///
/// # Errors
/// When a service fails or a record is not acknowledged.
pub async fn both_at_once(
    bench: &Bench,
    topic: &str,
    count: u64,
    batch_size: usize,
) -> anyhow::Result<Throughput> {
    fresh_backlog(bench, count).await?;
    let started = Instant::now();
    let (claimed, produced) = tokio::join!(
        async {
            claim_and_delete_all(bench, count, batch_size).await?;
            anyhow::Ok(started.elapsed())
        },
        async {
            raw_produce(bench, topic, count, batch_size).await?;
            anyhow::Ok(started.elapsed())
        },
    );
    Ok(Throughput::new(count, claimed?.max(produced?)))
}

/// Chunks of the raw produce baseline in flight at once: enough to keep the producer busy, few
/// enough that no record waits in its queue for the send timeout (5 s).
const PRODUCE_WINDOW: usize = 8;

/// Baseline (b): produces the same `count` records (same keys, payloads and headers) with the
/// relay's own producer and settings — `KafkaPublisher`, idempotent, `acks=all`, its `linger.ms` —
/// and no database: chunks of `batch_size`, [`PRODUCE_WINDOW`] of them in flight at any time, so
/// the producer never waits for one chunk's acknowledgements before sending more.
///
/// # Errors
/// When the producer cannot be created or any record is not acknowledged.
pub async fn raw_produce(
    bench: &Bench,
    topic: &str,
    count: u64,
    batch_size: usize,
) -> anyhow::Result<Throughput> {
    let batch = (0..count)
        .map(|n| {
            Ok(StoredMessage {
                seq: n as i64,
                attempts: 0,
                message: crate::workload::message(topic, n)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let publisher = KafkaPublisher::new(&bench.kafka)?;
    publisher.check_reachable(Duration::from_secs(10)).await?;
    let started = Instant::now();
    let fence = Fence::unbounded();
    let failed: usize = futures::stream::iter(batch.chunks(batch_size))
        .map(|chunk| publisher.publish(chunk, &fence))
        .buffer_unordered(PRODUCE_WINDOW)
        .map(|outcomes| outcomes.iter().filter(|outcome| outcome.is_err()).count())
        .fold(0, |total, failed| async move { total + failed })
        .await;
    let elapsed = started.elapsed();
    if failed > 0 {
        bail!("{failed} of {count} records were not acknowledged");
    }
    Ok(Throughput::new(count, elapsed))
}

/// Baseline (c): the hand-written outbox — per message one transaction that locks the oldest row
/// (`FOR UPDATE SKIP LOCKED LIMIT 1`), sends it, waits for the acknowledgement, deletes it and
/// commits — with the same producer and settings as the relay. Runs over a backlog of `count`
/// until it is empty or `window` has passed.
///
/// # Errors
/// When the database fails or a record is not acknowledged.
pub async fn naive_relay(
    bench: &Bench,
    topic: &str,
    count: u64,
    window: Duration,
) -> anyhow::Result<Throughput> {
    bench.reset().await?;
    crate::workload::fill_backlog(&bench.pool, Capture::Table, topic, count).await?;
    let publisher = KafkaPublisher::new(&bench.kafka)?;
    publisher.check_reachable(Duration::from_secs(10)).await?;
    let fence = Fence::unbounded();
    let mut conn = PgConnection::connect_with(&bench.connect).await?;
    let started = Instant::now();
    let mut done = 0_u64;
    while started.elapsed() < window {
        let mut tx = conn.begin().await?;
        let Some(row) = sqlx::query(CLAIM)
            .bind(1_i64)
            .fetch_optional(&mut *tx)
            .await?
        else {
            break;
        };
        let stored = decode(&row)?;
        if let Some(Err(error)) = publisher
            .publish(std::slice::from_ref(&stored), &fence)
            .await
            .pop()
        {
            bail!("the naive relay could not publish: {}", error.describe());
        }
        sqlx::query(DELETE)
            .bind([stored.seq])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done += 1;
    }
    let elapsed = started.elapsed();
    conn.close().await?;
    Ok(Throughput::new(done, elapsed))
}
