//! Numbered messages over a fixed set of keys, and the check of what a consumer of the topic
//! observes: nothing lost, nothing foreign, per key the first occurrences in enqueue order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use sqlx::PgPool;
use uuid::Uuid;

use crate::private::log_tail;
use crate::{Record, RelayProcess};

/// One enqueued message: its key, id and number (the payload).
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// `key-{n % keys}`.
    pub key: String,
    /// The message id (`ce_id`).
    pub id: Uuid,
    /// The number, which is also the payload.
    pub n: usize,
}

/// Enqueues messages `numbers` to `topic`, 500 per transaction, keys `key-{n % keys}`, payload `n`.
pub async fn enqueue(
    pool: &PgPool,
    topic: &str,
    numbers: std::ops::Range<usize>,
    keys: usize,
) -> anyhow::Result<Vec<Enqueued>> {
    enqueue_through(&PgOutbox::new(), pool, topic, numbers, keys).await
}

/// [`enqueue`] through `outbox` (in table or WAL mode).
pub async fn enqueue_through(
    outbox: &PgOutbox,
    pool: &PgPool,
    topic: &str,
    numbers: std::ops::Range<usize>,
    keys: usize,
) -> anyhow::Result<Vec<Enqueued>> {
    let mut enqueued = Vec::with_capacity(numbers.len());
    let all: Vec<usize> = numbers.collect();
    for chunk in all.chunks(500) {
        let messages: Vec<Message> = chunk
            .iter()
            .map(|&n| {
                Message::builder(topic)
                    .key(format!("key-{}", n % keys))
                    .json(&n)
            })
            .collect::<Result<_, _>>()?;
        let mut tx = pool.begin().await?;
        outbox.enqueue_all(&mut tx, &messages).await?;
        tx.commit().await?;
        enqueued.extend(chunk.iter().zip(&messages).map(|(&n, m)| Enqueued {
            key: format!("key-{}", n % keys),
            id: m.id,
            n,
        }));
    }
    Ok(enqueued)
}

/// Checks what a consumer of the topic observes: every enqueued message present with its payload,
/// per key the first occurrences in enqueue order. Returns the number of duplicates.
pub fn verify(records: &[Record], enqueued: &[Enqueued]) -> anyhow::Result<usize> {
    Ok(verify_allowing(records, enqueued, |_, _| false)?.duplicates)
}

/// What [`verify_allowing`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    /// Records beyond one per message.
    pub duplicates: usize,
    /// Messages that first appeared before a predecessor of their key, as allowed.
    pub allowed_inversions: usize,
}

/// [`verify`], except that a message may first appear before a predecessor of its key when
/// `may_invert(predecessor, message)` says so: a reorder window the caller provokes on purpose
/// and names. Every other pair keeps its order, also relative to a predecessor that came late.
pub fn verify_allowing(
    records: &[Record],
    enqueued: &[Enqueued],
    may_invert: impl Fn(&Enqueued, &Enqueued) -> bool,
) -> anyhow::Result<Verified> {
    let mut first_seen: HashMap<Uuid, &Record> = HashMap::new();
    for record in records {
        let id = record
            .id()
            .ok_or_else(|| anyhow::anyhow!("record without a ce_id header: {record:?}"))?;
        let earlier = first_seen.entry(id).or_insert(record);
        if (earlier.partition, earlier.offset) > (record.partition, record.offset) {
            *earlier = record;
        }
    }
    let missing: Vec<usize> = enqueued
        .iter()
        .filter(|m| !first_seen.contains_key(&m.id))
        .map(|m| m.n)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages never reached the topic (lost), e.g. numbers {:?}",
        missing.len(),
        enqueued.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(
        first_seen.len(),
        enqueued.len(),
        "the topic holds only the enqueued messages"
    );
    // Per key: the predecessor that first appeared last, and its message.
    let mut previous: HashMap<&str, (&Record, &Enqueued)> = HashMap::new();
    let mut allowed_inversions = 0;
    for message in enqueued {
        let record = first_seen[&message.id];
        assert_eq!(
            record.payload,
            message.n.to_string().into_bytes(),
            "payload of message {}",
            message.n
        );
        assert_eq!(record.key.as_deref(), Some(message.key.as_bytes()));
        match previous.get(message.key.as_str()).copied() {
            None => {
                previous.insert(&message.key, (record, message));
            }
            Some((before, predecessor)) => {
                assert_eq!(
                    before.partition, record.partition,
                    "{}: one key, one partition",
                    message.key
                );
                if record.offset > before.offset {
                    previous.insert(&message.key, (record, message));
                } else {
                    assert!(
                        may_invert(predecessor, message),
                        "{}: message {} first appeared at offset {}, before its predecessor {} (offset {})",
                        message.key,
                        message.n,
                        record.offset,
                        predecessor.n,
                        before.offset
                    );
                    allowed_inversions += 1;
                }
            }
        }
    }
    Ok(Verified {
        duplicates: records.len() - enqueued.len(),
        allowed_inversions,
    })
}

/// Messages still in the outbox.
pub async fn outbox_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

/// Messages in the dead-letter table.
pub async fn dead_letter_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letters")
            .fetch_one(pool)
            .await?,
    )
}

/// The highest `attempts` of a message still in the outbox (0 when empty).
pub async fn max_attempts(pool: &PgPool) -> anyhow::Result<i32> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(attempts), 0) FROM outbox")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until the relay made progress: at most `left` messages remain in the outbox.
pub async fn wait_until_outbox_at_most(
    pool: &PgPool,
    left: i64,
    relay: &RelayProcess,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = outbox_count(pool).await?;
        if count <= left {
            return Ok(count);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay made no progress: {count} left; relay log:\n{}",
            log_tail(&relay.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the outbox is empty, tracking the highest `attempts` seen on the way.
pub async fn wait_until_drained(
    pool: &PgPool,
    timeout: Duration,
    relay: &RelayProcess,
    max_seen: &mut i32,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        // The pool may still be reconnecting after a restart; a failed count is simply retried.
        if let (Ok(left), Ok(attempts)) = (outbox_count(pool).await, max_attempts(pool).await) {
            *max_seen = (*max_seen).max(attempts);
            if left == 0 {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "the outbox still holds {left} messages {timeout:?} after recovery; relay log ({}):\n{}",
                relay.log.display(),
                log_tail(&relay.log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
