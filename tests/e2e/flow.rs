//! The happy path: what a committed transaction produces on the topic, and what a rolled-back one
//! does not.

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::Message;
use outbox_core::lane::java_partition;
use outbox_postgres::PgOutbox;
use outbox_tests::{Fixture, InProcessRelay, TestDb, init_logs, read_topic};

use crate::quick_config;

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_message_reaches_the_topic_with_key_payload_and_cloudevents_headers()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(3).await?;
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .execute(&db.pool)
        .await?;

    let message = Message::builder(&topic)
        .key("order-42")
        .event_type("OrderPlaced")
        .source("/orders-service")
        .header("tenant", "acme")
        .json(&serde_json::json!({ "order_id": 42, "total_cents": 1999 }))?;
    let mut tx = db.pool.begin().await?;
    sqlx::query("INSERT INTO orders VALUES (42, 1999)")
        .execute(&mut *tx)
        .await?;
    PgOutbox::new().enqueue(&mut tx, &message).await?;
    tx.commit().await?;

    let relay = InProcessRelay::start(&db, quick_config())?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    let stats = relay.stop().await?;
    assert_eq!(stats.published, 1);

    let records = read_topic(&topic, 1, Duration::from_secs(10)).await?;
    assert_eq!(records.len(), 1, "exactly one record on the topic");
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(&b"order-42"[..]));
    assert_eq!(record.payload, message.payload);
    assert_eq!(record.id(), Some(message.id));
    let h = &record.headers;
    assert_eq!(h["ce_type"], "OrderPlaced");
    assert_eq!(h["ce_source"], "/orders-service");
    assert_eq!(h["ce_specversion"], "1.0");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["tenant"], "acme");
    assert!(h.contains_key("ce_time"));
    assert_eq!(
        Some(record.partition as u32),
        java_partition(b"order-42", 3),
        "partition chosen as the Java client would"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_transaction_publishes_nothing() -> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(1).await?;
    let outbox = PgOutbox::new();

    let rolled_back = Message::builder(&topic).key("k").json(&"never")?;
    let mut tx = db.pool.begin().await?;
    outbox.enqueue(&mut tx, &rolled_back).await?;
    tx.rollback().await?;
    assert_eq!(db.outbox_count().await?, 0, "rollback left no outbox row");

    // A committed marker afterwards proves the relay ran past the point where the other would be.
    let marker = Message::builder(&topic).key("k").json(&"marker")?;
    let mut tx = db.pool.begin().await?;
    outbox.enqueue(&mut tx, &marker).await?;
    tx.commit().await?;

    let relay = InProcessRelay::start(&db, quick_config())?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    relay.stop().await?;
    let records = read_topic(&topic, 2, Duration::from_secs(3)).await?;
    let ids: Vec<_> = records.iter().filter_map(|r| r.id()).collect();
    assert_eq!(
        ids,
        vec![marker.id],
        "only the committed message was published"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_1000_messages_in_one_transaction_is_published_whole_and_in_order_per_key()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(4).await?;
    let messages: Vec<Message> = (0..1000)
        .map(|n| {
            Message::builder(&topic)
                .key(format!("key-{}", n % 10))
                .json(&n)
        })
        .collect::<Result<_, _>>()?;
    db.enqueue_committed(&messages).await?;
    assert_eq!(db.outbox_count().await?, 1000);

    let relay = InProcessRelay::start(&db, quick_config().batch_size(128)?)?;
    db.wait_until_drained(Duration::from_secs(60)).await?;
    relay.stop().await?;

    let records = read_topic(&topic, 1000, Duration::from_secs(10)).await?;
    assert_eq!(records.len(), 1000);
    let mut per_key: HashMap<Vec<u8>, Vec<i64>> = HashMap::new();
    for record in &records {
        let n: i64 = serde_json::from_slice(&record.payload)?;
        per_key
            .entry(record.key.clone().unwrap_or_default())
            .or_default()
            .push(n);
    }
    assert_eq!(per_key.len(), 10);
    for (key, numbers) in per_key {
        let key = String::from_utf8_lossy(&key).into_owned();
        let k: i64 = key.trim_start_matches("key-").parse()?;
        let expected: Vec<i64> = (0..1000).filter(|n| n % 10 == k).collect();
        assert_eq!(numbers, expected, "order of {key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_wakes_the_relay_long_before_its_next_poll() -> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(1).await?;
    let poll = Duration::from_secs(10);
    let relay = InProcessRelay::start(&db, quick_config().poll_interval(poll)?)?;
    // Let the relay reach its idle wait.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outbox = PgOutbox::new();
    let mut latencies = Vec::new();
    for n in 0..5 {
        let message = Message::builder(&topic).key("k").json(&n)?;
        let mut tx = db.pool.begin().await?;
        outbox.enqueue(&mut tx, &message).await?;
        tx.commit().await?;
        let committed = std::time::Instant::now();
        // The row disappears once the broker acknowledged the message.
        db.wait_until_drained(poll).await?;
        latencies.push(committed.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    relay.stop().await?;
    println!(
        "commit -> acknowledged and settled, with NOTIFY wake-ups and a {poll:?} poll: {latencies:?}"
    );
    for latency in &latencies {
        assert!(
            *latency < poll / 5,
            "{latency:?} is not well under the poll interval {poll:?}"
        );
    }
    assert_eq!(
        read_topic(&topic, 5, Duration::from_secs(10)).await?.len(),
        5
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_message_is_stamped_with_its_publish_time_so_retention_and_timestamp_bounds_keep_it()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    // Records older than a minute are refused; older than ten minutes, deleted by retention.
    let topic = outbox_tests::create_topic_configured(
        &outbox_tests::services::brokers()?,
        1,
        &[
            ("message.timestamp.before.max.ms", "60000"),
            ("retention.ms", "600000"),
        ],
    )
    .await?;
    // A backlog from a day-long outage (or a dead letter replayed a day later).
    let message = Message::builder(&topic).key("k").json(&"from yesterday")?;
    db.enqueue_committed(std::slice::from_ref(&message)).await?;
    sqlx::query("UPDATE outbox SET created_at = created_at - interval '1 day'")
        .execute(&db.pool)
        .await?;
    let created: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM outbox")
            .fetch_one(&db.pool)
            .await?;
    let before_publish = chrono::Utc::now().timestamp_millis();

    let relay = InProcessRelay::start(&db, quick_config())?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    let stats = relay.stop().await?;
    assert_eq!((stats.published, stats.dead_lettered), (1, 0), "{stats:?}");

    let records = read_topic(&topic, 1, Duration::from_secs(10)).await?;
    assert_eq!(records.len(), 1);
    let stamped = records[0].timestamp.unwrap_or_default();
    assert!(
        stamped >= before_publish - 1000,
        "the record's timestamp {stamped} is the publish time, not the creation time"
    );
    let ce_time = chrono::DateTime::parse_from_rfc3339(&records[0].headers["ce_time"])?;
    assert_eq!(
        ce_time.timestamp_micros(),
        created.timestamp_micros(),
        "ce_time keeps when the message was created"
    );
    Ok(())
}
