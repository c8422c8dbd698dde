//! The happy path of WAL capture: what a committed transaction produces on the topic, in commit
//! order per key, and what a rolled-back one does not.

use std::time::Duration;

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use outbox_tests::{RelayProcess, TestDb, create_topic, init_logs, keyed, read_topic, wal};

use crate::relay_program;

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_message_reaches_the_topic_and_a_rolled_back_one_never_does()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let slot = wal::create_slot(&db).await?;
    let topic = create_topic(3).await?;
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .execute(&db.pool)
        .await?;
    let outbox = PgOutbox::wal();

    let rolled_back = Message::builder(&topic)
        .key("order-1")
        .json(&"rolled back")?;
    let mut tx = db.pool.begin().await?;
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await?;
    outbox.enqueue(&mut tx, &rolled_back).await?;
    tx.rollback().await?;

    let committed = Message::builder(&topic)
        .key("order-2")
        .event_type("OrderPlaced")
        .header("tenant", "acme")
        .json(&serde_json::json!({ "order_id": 2 }))?;
    let mut tx = db.pool.begin().await?;
    sqlx::query("INSERT INTO orders VALUES (2)")
        .execute(&mut *tx)
        .await?;
    outbox.enqueue(&mut tx, &committed).await?;
    tx.commit().await?;

    let flags = wal::relay_flags(&slot);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = RelayProcess::spawn(relay_program(), &db, &flags)?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    let status = relay.terminate().await?;
    assert!(status.success(), "the relay stops cleanly: {status}");

    let records = read_topic(&topic, 1, Duration::from_secs(5)).await?;
    assert_eq!(records.len(), 1, "only the committed message: {records:?}");
    let record = &records[0];
    assert_eq!(record.id(), Some(committed.id));
    assert_eq!(record.key.as_deref(), Some(&b"order-2"[..]));
    assert_eq!(record.payload, committed.payload);
    assert_eq!(record.headers["ce_type"], "OrderPlaced");
    assert_eq!(record.headers["tenant"], "acme");
    assert_eq!(db.outbox_count().await?, 0, "WAL mode writes no row");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_of_many_transactions_arrive_in_commit_order_per_key() -> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let slot = wal::create_slot(&db).await?;
    let topic = create_topic(6).await?;
    let flags = wal::relay_flags(&slot);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = RelayProcess::spawn(relay_program(), &db, &flags)?;

    let enqueued = keyed::enqueue_through(&PgOutbox::wal(), &db.pool, &topic, 0..5_000, 37).await?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    relay.terminate().await?;
    let records = read_topic(&topic, enqueued.len(), Duration::from_secs(5)).await?;
    let duplicates = keyed::verify(&records, &enqueued)?;
    assert_eq!(duplicates, 0, "a clean run publishes each message once");
    Ok(())
}
