//! The relay survives outages of its services: the broker down for longer than the producer's send
//! timeout, PostgreSQL restarted under it. Both run against services of their own
//! ([`outbox_tests::private`]) so that stopping them never disturbs the tests running in parallel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use outbox_tests::private::{PrivateBroker, PrivatePostgres, log_tail};
use outbox_tests::{
    Record, RelayProcess, TestDb, create_topic, create_topic_on, init_logs, read_topic,
    read_topic_from, run_relay_program, services,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::relay_program;

const BACKLOG: usize = 5_000;
const KEYS: usize = 50;

/// One enqueued message: its key, id and number (the payload).
struct Enqueued {
    key: String,
    id: Uuid,
    n: usize,
}

/// Enqueues messages `numbers` to `topic`, 500 per transaction, keys `key-{n % KEYS}`, payload `n`.
async fn enqueue(
    pool: &PgPool,
    topic: &str,
    numbers: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Enqueued>> {
    let outbox = PgOutbox::new();
    let mut enqueued = Vec::with_capacity(numbers.len());
    let all: Vec<usize> = numbers.collect();
    for chunk in all.chunks(500) {
        let messages: Vec<Message> = chunk
            .iter()
            .map(|&n| {
                Message::builder(topic)
                    .key(format!("key-{}", n % KEYS))
                    .json(&n)
            })
            .collect::<Result<_, _>>()?;
        let mut tx = pool.begin().await?;
        outbox.enqueue_all(&mut tx, &messages).await?;
        tx.commit().await?;
        enqueued.extend(chunk.iter().zip(&messages).map(|(&n, m)| Enqueued {
            key: format!("key-{}", n % KEYS),
            id: m.id,
            n,
        }));
    }
    Ok(enqueued)
}

async fn outbox_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

async fn dead_letter_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letters")
            .fetch_one(pool)
            .await?,
    )
}

/// The highest `attempts` of a message still in the outbox (0 when empty).
async fn max_attempts(pool: &PgPool) -> anyhow::Result<i32> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(attempts), 0) FROM outbox")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until the relay made progress: at most `left` messages remain in the outbox.
async fn wait_until_outbox_at_most(
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
async fn wait_until_drained(
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

/// The lines of `log` that report a panic, with the message that follows each.
fn panics(log: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.contains("panicked at"))
        .map(|(i, line)| format!("{line} {}", lines.get(i + 1).copied().unwrap_or_default()))
        .collect()
}

/// Checks what a consumer of the topic observes: every enqueued message present with its payload,
/// per key the first occurrences in enqueue order. Returns the number of duplicates.
fn verify(records: &[Record], enqueued: &[Enqueued]) -> anyhow::Result<usize> {
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
    let mut previous: HashMap<&str, &Record> = HashMap::new();
    for message in enqueued {
        let record = first_seen[&message.id];
        assert_eq!(
            record.payload,
            message.n.to_string().into_bytes(),
            "payload of message {}",
            message.n
        );
        assert_eq!(record.key.as_deref(), Some(message.key.as_bytes()));
        if let Some(before) = previous.insert(&message.key, record) {
            assert_eq!(
                before.partition, record.partition,
                "{}: one key, one partition",
                message.key
            );
            assert!(
                record.offset > before.offset,
                "{}: message {} first appeared at offset {}, before its predecessor (offset {})",
                message.key,
                message.n,
                record.offset,
                before.offset
            );
        }
    }
    Ok(records.len() - enqueued.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_during_a_backlog_loses_nothing_and_drains_after_recovery()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let mut broker = PrivateBroker::start().await?;
    let brokers = broker.brokers();
    let topic = create_topic_on(&brokers, 6).await?;
    let enqueued = enqueue(&db.pool, &topic, 0..BACKLOG).await?;

    // --lease 3s: the relay gives up on a send after 1.5 s (message.timeout.ms = lease / 2).
    let flags = [
        "--poll-interval",
        "100ms",
        "--batch-size",
        "200",
        "--initial-backoff",
        "100ms",
        "--max-backoff",
        "1s",
        "--lease",
        "3s",
        "--connect-timeout",
        "20s",
    ];
    let mut relay = RelayProcess::spawn_with(relay_program(), &db.url, &brokers, &flags)?;
    wait_until_outbox_at_most(&db.pool, (BACKLOG * 4 / 5) as i64, &relay).await?;

    broker.stop().await?;
    let outage = Instant::now();
    let at_stop = db.outbox_count().await?;
    assert!(at_stop > 0, "the outage must begin mid-backlog");
    // A batch in flight when the broker went away settles once its last message timed out (1.5 s);
    // what was acknowledged before the outage leaves the outbox then, and nothing after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled_before = db.outbox_count().await?;
    let mut max_seen = 0;
    let mut samples = Vec::new();
    while outage.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let attempts = max_attempts(&db.pool).await?;
        max_seen = max_seen.max(attempts);
        samples.push(attempts);
        assert_eq!(
            db.dead_letter_count().await?,
            0,
            "a broker outage dead-lettered messages; relay log ({}):\n{}",
            relay.log.display(),
            log_tail(&relay.log, 30)
        );
        assert_eq!(
            db.outbox_count().await?,
            settled_before,
            "messages left the outbox while no broker could acknowledge them"
        );
        assert!(
            relay.exit_status()?.is_none(),
            "the relay exited during the broker outage:\n{}",
            log_tail(&relay.log, 30)
        );
    }
    println!(
        "broker down for {:?} with {at_stop} messages in the outbox; max attempts sampled every 0.5 s: {samples:?}",
        outage.elapsed()
    );

    broker.start_again().await?;
    let recovered = Instant::now();
    loop {
        let left = db.outbox_count().await?;
        max_seen = max_seen.max(max_attempts(&db.pool).await?);
        let dead: Option<(i64, i32, String)> = sqlx::query_as(
            "SELECT count(*) OVER (), attempts, error FROM outbox_dead_letters ORDER BY seq LIMIT 1",
        )
        .fetch_optional(&db.pool)
        .await?;
        if let Some((count, attempts, error)) = dead {
            panic!(
                "{count} messages were dead-lettered after the broker came back (the first after \
                 {attempts} attempts: {error}); {left} still in the outbox.\n\
                 relay log ({}):\n{}\nbroker log ({}), its panics: {:?}",
                relay.log.display(),
                log_tail(&relay.log, 10),
                broker.log().display(),
                panics(&broker.log())
            );
        }
        if left == 0 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(120),
            "the outbox still holds {left} messages 120 s after the broker came back; relay log ({}):\n{}",
            relay.log.display(),
            log_tail(&relay.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = recovered.elapsed();
    let status = relay.terminate().await?;
    assert!(status.success(), "relay exits cleanly on SIGTERM: {status}");

    let records = read_topic_from(&brokers, &topic, usize::MAX, Duration::from_secs(5)).await?;
    let duplicates = verify(&records, &enqueued)?;
    println!(
        "broker outage: {} records for {BACKLOG} messages, 0 lost, {duplicates} duplicates, \
         max attempts seen {max_seen}, outbox drained {drained_in:?} after the broker answered again",
        records.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_while_relaying_loses_nothing_and_the_relay_recovers_by_itself()
-> anyhow::Result<()> {
    init_logs();
    let mut postgres = PrivatePostgres::start().await?;
    let url = postgres.url();
    let (status, output) =
        run_relay_program(relay_program(), &["migrate", "--database-url", &url]).await?;
    assert!(status.success(), "outbox-relay migrate failed: {output}");
    let topic = create_topic(6).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let mut enqueued = enqueue(&pool, &topic, 0..BACKLOG).await?;

    let flags = [
        "--poll-interval",
        "100ms",
        "--batch-size",
        "200",
        "--lease",
        "3s",
        "--connect-timeout",
        "20s",
    ];
    let mut relay = RelayProcess::spawn_with(relay_program(), &url, &services::brokers()?, &flags)?;
    wait_until_outbox_at_most(&pool, (BACKLOG * 3 / 5) as i64, &relay).await?;

    pool.close().await;
    postgres.restart(Duration::from_secs(2)).await?;
    let restarted = Instant::now();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let at_restart = outbox_count(&pool).await?;
    assert!(at_restart > 0, "the restart must happen mid-backlog");
    // Writers go on after the restart; what they enqueue follows the backlog, key by key.
    for start in (BACKLOG..BACKLOG + 300).step_by(50) {
        enqueued.extend(enqueue(&pool, &topic, start..start + 50).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut max_seen = 0;
    wait_until_drained(&pool, Duration::from_secs(120), &relay, &mut max_seen).await?;
    let drained_in = restarted.elapsed();
    assert_eq!(
        dead_letter_count(&pool).await?,
        0,
        "nothing is dead-lettered"
    );
    assert!(
        relay.exit_status()?.is_none(),
        "the relay process must survive the restart by itself:\n{}",
        log_tail(&relay.log, 30)
    );
    let log = relay.log.clone();
    let status = relay.terminate().await?;
    assert!(status.success(), "relay exits cleanly on SIGTERM: {status}");

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let duplicates = verify(&records, &enqueued)?;
    let sessions = std::fs::read_to_string(&log)?
        .matches("relay session opened")
        .count();
    println!(
        "postgres restart with {at_restart} messages in the outbox: {} records for {} messages, \
         0 lost, {duplicates} duplicates, max attempts seen {max_seen}, relay sessions opened \
         {sessions}, outbox drained {:?} after the restart",
        records.len(),
        enqueued.len(),
        drained_in,
    );
    pool.close().await;
    Ok(())
}
