//! The relay process killed with SIGKILL in the middle of a backlog, then restarted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use outbox_tests::{Fixture, RelayProcess, TestDb, init_logs, read_topic};
use uuid::Uuid;

use crate::relay_program;

const MESSAGES: usize = 10_000;
/// Enqueued besides the messages: one per gate.
const GATES: usize = 2;
const KEYS: usize = 100;

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_killed_mid_backlog_and_restarted_loses_nothing_and_keeps_per_key_order()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(6).await?;
    let mut enqueued: Vec<(String, Uuid)> = Vec::with_capacity(MESSAGES + GATES);
    enqueue_chunks(&db, &topic, 0..4, &mut enqueued).await?;

    // Each relay is killed while messages wait, however fast it is: once it works, an open
    // enqueuing transaction (a gate) is started and 3,000 more are committed behind it. The
    // relay cannot claim past the gate's number while the gate is open (the publish horizon), so
    // the kill, once a part of what is before the gate was published, always leaves the 3,000.
    let flags = ["--batch-size", "250", "--poll-interval", "100ms"];
    let mut kills = Vec::new();
    for (round, chunks) in [(0, 4..7), (1, 7..10)] {
        let relay = RelayProcess::spawn(relay_program(), &db, &flags)?;
        let before = db.outbox_count().await?;
        db.wait_until_backlog_at_most(before - 100, Duration::from_secs(120))
            .await?;
        let gate = Message::builder(&topic)
            .key(format!("gate-{round}"))
            .json(&"gate")?;
        let mut gate_tx = outbox_tests::connect(&db).await?;
        sqlx::raw_sql("BEGIN").execute(&mut gate_tx).await?;
        PgOutbox::new().enqueue(&mut gate_tx, &gate).await?;
        enqueued.push((format!("gate-{round}"), gate.id));
        enqueue_chunks(&db, &topic, chunks, &mut enqueued).await?;
        db.wait_until_backlog_at_most(3_000 + 1_000, Duration::from_secs(120))
            .await?;
        relay.kill().await?;
        let left = db.outbox_count().await?;
        kills.push(left);
        assert!(
            left >= 3_000,
            "the gate held 3,000 messages back, yet only {left} were left at the kill"
        );
        sqlx::raw_sql("COMMIT").execute(&mut gate_tx).await?;
    }
    let relay = RelayProcess::spawn(relay_program(), &db, &flags)?;
    db.wait_until_drained(Duration::from_secs(120)).await?;
    let status = relay.terminate().await?;
    assert!(status.success(), "relay exits cleanly on SIGTERM: {status}");

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let mut first_seen: HashMap<Uuid, usize> = HashMap::new();
    for (position, record) in records.iter().enumerate() {
        let id = record
            .id()
            .ok_or_else(|| anyhow::anyhow!("record without ce_id"))?;
        first_seen.entry(id).or_insert(position);
    }
    let missing: Vec<&Uuid> = enqueued
        .iter()
        .map(|(_, id)| id)
        .filter(|id| !first_seen.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages never reached the topic",
        missing.len(),
        MESSAGES + GATES
    );
    let distinct: HashSet<&Uuid> = first_seen.keys().collect();
    assert_eq!(distinct.len(), MESSAGES + GATES);

    // Per key, the first occurrences must follow enqueue order. Records of one key share a
    // partition, and `records` keeps each partition's order.
    let mut last_position: HashMap<&str, usize> = HashMap::new();
    for (key, id) in &enqueued {
        let position = first_seen[id];
        if let Some(previous) = last_position.insert(key, position) {
            assert!(
                position > previous,
                "{key}: message {id} first appeared before its predecessor"
            );
        }
    }
    let duplicates = records.len() - MESSAGES - GATES;
    println!(
        "relay killed twice mid-backlog (outbox held {kills:?} at the kills); {} records for {} messages: {duplicates} duplicates",
        records.len(),
        MESSAGES + GATES
    );
    Ok(())
}

/// Commits the messages of `chunks` (1,000 each, numbered `chunk * 1000 + i`, over [`KEYS`] keys),
/// one transaction per chunk, and records them in `enqueued` in enqueue order.
async fn enqueue_chunks(
    db: &TestDb,
    topic: &str,
    chunks: std::ops::Range<usize>,
    enqueued: &mut Vec<(String, Uuid)>,
) -> anyhow::Result<()> {
    for chunk in chunks {
        let messages: Vec<Message> = (0..MESSAGES / 10)
            .map(|i| {
                let n = chunk * (MESSAGES / 10) + i;
                Message::builder(topic)
                    .key(format!("key-{}", n % KEYS))
                    .json(&n)
            })
            .collect::<Result<_, _>>()?;
        enqueued.extend(messages.iter().map(|m| {
            (
                String::from_utf8_lossy(m.key.as_deref().unwrap_or_default()).into_owned(),
                m.id,
            )
        }));
        db.enqueue_committed(&messages).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_while_the_relay_is_still_connecting_is_a_clean_exit() -> anyhow::Result<()> {
    init_logs();
    // Nothing listens on this port: the relay keeps retrying its first connection for a minute.
    let port = outbox_tests::private::free_port()?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let relay = RelayProcess::spawn_with(
        relay_program(),
        &url,
        &outbox_tests::services::brokers()?,
        &["--connect-timeout", "60s"],
    )?;
    relay
        .wait_for_log("database not reachable yet", Duration::from_secs(30))
        .await?;
    let log = relay.log.clone();
    let status = relay.terminate().await?;
    assert!(
        status.success(),
        "a SIGTERM during start-up must end the relay with status 0, got {status}; log:\n{}",
        outbox_tests::private::log_tail(&log, 20)
    );
    Ok(())
}
