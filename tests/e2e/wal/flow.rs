//! The happy path of WAL capture: what a committed transaction produces on the topic, in commit
//! order per key, and what a rolled-back one does not.

use std::time::Duration;

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use outbox_tests::{
    Fixture, RelayProcess, create_topic, init_logs, keyed, read_topic, services, wal,
};
use sqlx::Connection;

use crate::relay_program;

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_message_reaches_the_topic_and_a_rolled_back_one_never_does()
-> anyhow::Result<()> {
    let (Fixture { db, topic }, slot) = wal::fixture(3).await?;
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
    let (Fixture { db, topic }, slot) = wal::fixture(6).await?;
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

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_outlives_the_servers_wal_sender_timeout() -> anyhow::Result<()> {
    init_logs();
    // The server ends a replication connection that sends no status update for a second.
    let server = wal::logical_server(&["wal_sender_timeout = '1s'"]).await?;
    let url = server.url();
    let slot = outbox_postgres::SlotName::new("idle")?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    outbox_postgres::wal::create_slot(&mut conn, &outbox_postgres::Tables::default(), &slot)
        .await?;
    let topic = create_topic(1).await?;
    let flags = wal::relay_flags(&slot);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = RelayProcess::spawn_with(relay_program(), &url, &services::brokers()?, &flags)?;
    relay
        .wait_for_log("replication stream started", Duration::from_secs(60))
        .await?;
    let reader = walsender(&mut conn, &slot).await?;
    assert!(reader.is_some(), "the relay reads the slot");

    // Idle for five timeouts: the stream must be kept alive, not ended and reopened.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        walsender(&mut conn, &slot).await?,
        reader,
        "the same walsender reads the slot"
    );
    let message = Message::builder(&topic)
        .key("k")
        .json(&"after a quiet while")?;
    let mut tx = conn.begin().await?;
    PgOutbox::wal().enqueue(&mut tx, &message).await?;
    tx.commit().await?;
    let records = read_topic(&topic, 1, Duration::from_secs(5)).await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id(), Some(message.id));
    let log = std::fs::read_to_string(&relay.log)?;
    assert!(!log.contains("replication stream ended"), "{log}");
    assert!(relay.terminate().await?.success());
    Ok(())
}

async fn walsender(
    conn: &mut sqlx::PgConnection,
    slot: &outbox_postgres::SlotName,
) -> anyhow::Result<Option<i32>> {
    Ok(
        sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot.as_str())
            .fetch_one(conn)
            .await?,
    )
}
