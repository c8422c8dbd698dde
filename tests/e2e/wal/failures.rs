//! What WAL capture does with messages it cannot publish: another program's logical messages are
//! skipped, unreadable ones of this outbox are kept raw in the dead letters, a message the broker
//! refuses for good is dead-lettered; the stream moves on past each, and a replay publishes the
//! dead letter once the cause is fixed.

use std::time::Duration;

use outbox_core::Message;
use outbox_postgres::{DeadLetterFilter, PgDeadLetters, Tables};
use outbox_tests::{
    ANY_PORT, Fixture, RelayProcess, http_get, read_topic, run_relay_program_output, wal,
};

use crate::relay_program;

/// The value of the counter `name` with label `reason` on a Prometheus page.
fn counter(page: &str, name: &str, reason: &str) -> Option<f64> {
    let wanted = format!("{name}{{reason=\"{reason}\"}}");
    page.lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_and_unreadable_logical_messages_are_skipped_or_kept_and_the_stream_goes_on()
-> anyhow::Result<()> {
    let (Fixture { db, topic }, slot) = wal::fixture(1).await?;
    let before = Message::builder(&topic).key("k").json(&"before")?;
    let after = Message::builder(&topic).key("k").json(&"after")?;
    // A message whose envelope is fine but which breaks a rule of enqueue: a reserved header
    // would forge the record's `ce_id`.
    let mut forged = Message::builder(&topic).key("k").json(&"forged")?;
    forged.headers.insert("ce_id".into(), "not-its-id".into());
    let forged_envelope = outbox_postgres::wal::envelope::encode(&forged)?;

    wal::enqueue_committed(&db, std::slice::from_ref(&before)).await?;
    sqlx::query("SELECT pg_logical_emit_message(true, 'outbox', '\\x00ff'::bytea)")
        .execute(&db.pool)
        .await?;
    sqlx::query("SELECT pg_logical_emit_message(true, 'outbox', $1)")
        .bind(&forged_envelope)
        .execute(&db.pool)
        .await?;
    sqlx::query("SELECT pg_logical_emit_message(true, 'another-program', 'hello')")
        .execute(&db.pool)
        .await?;
    wal::enqueue_committed(&db, std::slice::from_ref(&after)).await?;

    let mut flags = wal::relay_flags(&slot);
    flags.extend(["--metrics-address", ANY_PORT].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = RelayProcess::spawn(relay_program(), &db, &flags)?;
    let address = relay.metrics_address().await?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;

    let records = read_topic(&topic, 2, Duration::from_secs(5)).await?;
    let ids: Vec<_> = records.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        vec![Some(before.id), Some(after.id)],
        "only the readable messages of this outbox, in order"
    );
    let dead = PgDeadLetters::new(db.pool.clone(), &Tables::default());
    let parked = dead.list(&DeadLetterFilter::default()).await?;
    assert_eq!(
        parked.len(),
        2,
        "the unreadable and the forged one: {parked:?}"
    );
    assert!(
        parked
            .iter()
            .all(|p| p.error.contains("malformed logical message")),
        "{parked:?}"
    );
    assert!(
        parked[0].error.contains("malformed outbox envelope"),
        "{}",
        parked[0].error
    );
    assert!(parked[1].error.contains("reserved"), "{}", parked[1].error);
    let raw = dead.show(parked[0].id).await?.expect("the raw dead letter");
    assert_eq!(raw.payload, vec![0x00, 0xff], "kept as it was written");

    let (status, page) = http_get(&address, "/metrics").await?;
    assert_eq!(status, 200);
    let name = outbox_core::metrics::WAL_SKIPPED;
    assert_eq!(counter(&page, name, "foreign_prefix"), Some(1.0), "{page}");
    assert_eq!(counter(&page, name, "malformed"), Some(2.0), "{page}");
    let status = relay.terminate().await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_refused_for_good_is_dead_lettered_the_stream_flows_on_and_a_replay_publishes_it()
-> anyhow::Result<()> {
    let (Fixture { db, topic }, slot) = wal::fixture(1).await?;
    let mut messages: Vec<Message> = (0..6)
        .map(|n| Message::builder(&topic).key("lane-key").json(&n))
        .collect::<Result<_, _>>()?;
    let poison = Message::builder(&topic)
        .key("lane-key")
        .bytes(vec![b'p'; 50_000], "application/octet-stream")?;
    messages.insert(3, poison.clone());
    wal::enqueue_committed(&db, &messages).await?;

    // A producer limited to 10 kB: the 50 kB message cannot go out.
    let mut flags = wal::relay_flags(&slot);
    flags.extend(
        [
            "-X",
            "message.max.bytes=10000",
            "--max-attempts",
            "2",
            "--initial-backoff",
            "20ms",
            "--max-backoff",
            "50ms",
        ]
        .map(str::to_owned),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = RelayProcess::spawn(relay_program(), &db, &flags)?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    relay.terminate().await?;

    let records = read_topic(&topic, 6, Duration::from_secs(5)).await?;
    let numbers: Vec<i64> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        numbers,
        vec![0, 1, 2, 3, 4, 5],
        "the rest of the lane, in order"
    );

    let (status, stdout, stderr) = run_relay_program_output(
        relay_program(),
        &["status", "--json", "--database-url", &db.url],
    )
    .await?;
    assert!(status.success(), "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(shown["dead_letters"], 1, "{stdout}");
    let (status, stdout, stderr) = run_relay_program_output(
        relay_program(),
        &["dead-letters", "list", "--json", "--database-url", &db.url],
    )
    .await?;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&poison.id.to_string()), "{stdout}");
    assert!(
        stdout.contains("too large") || stdout.contains("TooLarge"),
        "{stdout}"
    );

    // The cause is fixed (the producer accepts 1 MB again): replay it into the WAL.
    let (status, stdout, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "dead-letters",
            "replay",
            "--all",
            "--wal-prefix",
            "outbox",
            "--database-url",
            &db.url,
        ],
    )
    .await?;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("replayed 1 dead letter(s) into the WAL"),
        "{stdout}"
    );
    assert_eq!(db.dead_letter_count().await?, 0);
    assert_eq!(
        db.outbox_count().await?,
        0,
        "replayed into the WAL, not the table"
    );

    let flags = wal::relay_flags(&slot);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = RelayProcess::spawn(relay_program(), &db, &flags)?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    relay.terminate().await?;
    let records = read_topic(&topic, 7, Duration::from_secs(5)).await?;
    assert_eq!(records.len(), 7, "each message once, the replayed one last");
    assert_eq!(records[6].id(), Some(poison.id));
    assert_eq!(records[6].payload.len(), 50_000);
    Ok(())
}
