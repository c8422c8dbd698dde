//! A poison message: parked after the configured attempts, the rest of its lane delivered, and
//! replayed once the cause is fixed.

use std::time::Duration;

use outbox_core::{Message, RetryPolicy};
use outbox_postgres::{DeadLetterFilter, PgDeadLetters, PgRelayStoreConfig, Tables};
use outbox_tests::{Fixture, InProcessRelay, kafka_config, read_topic};

use crate::quick_config;

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_is_parked_the_lane_flows_on_and_replay_delivers_it_after_the_fix()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(1).await?;
    let mut messages: Vec<Message> = (0..6)
        .map(|n| Message::builder(&topic).key("lane-key").json(&n))
        .collect::<Result<_, _>>()?;
    let poison = Message::builder(&topic)
        .key("lane-key")
        .bytes(vec![b'p'; 50_000], "application/octet-stream")?;
    messages.insert(3, poison.clone());
    db.enqueue_committed(&messages).await?;

    // A producer limited to 10 kB: the 50 kB message cannot go out.
    let mut limited = kafka_config()?;
    limited.set("message.max.bytes", "10000");
    let config = quick_config().retry(
        RetryPolicy::default()
            .max_attempts(3)?
            .backoff(Duration::from_millis(20), Duration::from_millis(50))?,
    );
    let relay = InProcessRelay::start_with(&db, config, &limited, PgRelayStoreConfig::default())?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    let stats = relay.stop().await?;
    assert_eq!((stats.published, stats.dead_lettered), (6, 1));

    let dead_letters = PgDeadLetters::new(db.pool.clone(), &Tables::default());
    let parked = dead_letters
        .list(&DeadLetterFilter {
            error_contains: Some("too large".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, poison.id);
    assert_eq!(parked[0].payload_bytes, 50_000);
    let records = read_topic(&topic, 6, Duration::from_secs(10)).await?;
    let numbers: Vec<i64> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        numbers,
        vec![0, 1, 2, 3, 4, 5],
        "the rest of the lane, in order"
    );

    // The cause is fixed (the producer accepts 1 MB again); replay the parked message.
    let replayed = dead_letters
        .replay(&DeadLetterFilter {
            ids: Some(vec![poison.id]),
            ..Default::default()
        })
        .await?;
    assert_eq!(replayed, 1);
    assert_eq!(db.dead_letter_count().await?, 0);
    assert_eq!(
        db.outbox_count().await?,
        1,
        "the message is back in the outbox"
    );
    let relay = InProcessRelay::start(&db, quick_config())?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    relay.stop().await?;
    let records = read_topic(&topic, 7, Duration::from_secs(10)).await?;
    assert_eq!(records.len(), 7);
    assert_eq!(
        records[6].id(),
        Some(poison.id),
        "delivered after the replay, behind the lane's others"
    );
    assert_eq!(records[6].payload.len(), 50_000);
    Ok(())
}
