//! The inbox consumer: redeliveries apply their effect once; handler errors roll back and retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox_core::{CancellationToken, Message, Publisher, StoredMessage};
use outbox_kafka::{
    ConsumerStats, HandlerFuture, InboxConsumer, InboxConsumerBuilder, KafkaPublisher, Received,
    handler_fn,
};
use outbox_postgres::PgInbox;
use outbox_tests::{TestDb, create_topic, init_logs, kafka_config};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

async fn publish(topic: &str, messages: &[Message]) -> anyhow::Result<()> {
    let publisher = KafkaPublisher::new(&kafka_config()?)?;
    let batch: Vec<StoredMessage> = messages
        .iter()
        .enumerate()
        .map(|(seq, message)| StoredMessage {
            seq: seq as i64,
            attempts: 0,
            message: message.clone(),
        })
        .collect();
    for outcome in publisher
        .publish(&batch, &outbox_core::Fence::unbounded())
        .await
    {
        outcome?;
    }
    let _ = topic;
    Ok(())
}

async fn effects(db: &TestDb, id: Uuid) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM applied WHERE message_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await?,
    )
}

/// Runs `consumer` until `marker`'s effect is in the database, then stops it.
async fn consume_until(
    db: &TestDb,
    consumer: InboxConsumerBuilder<PgInbox>,
    marker: Uuid,
) -> anyhow::Result<ConsumerStats> {
    let consumer = consumer.build()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while effects(db, marker).await? == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "marker never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    Ok(tokio::time::timeout(Duration::from_secs(30), task).await???)
}

fn consumer(db: &TestDb, topic: &str) -> anyhow::Result<InboxConsumerBuilder<PgInbox>> {
    let mut config = kafka_config()?;
    config
        .set("group.id", format!("inbox-{}", Uuid::now_v7().simple()))
        .set("fetch.wait.max.ms", "50");
    Ok(InboxConsumer::builder(&config, PgInbox::new(db.pool.clone()), "billing").topics([topic]))
}

fn record_effect<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    received: &'a Received,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        sqlx::query("INSERT INTO applied (message_id) VALUES ($1)")
            .bind(received.id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_applies_its_effect_once() -> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    sqlx::query("CREATE TABLE applied (n BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL)")
        .execute(&db.pool)
        .await?;
    let topic = create_topic(1).await?;
    let message = Message::builder(&topic).key("a").json(&"pay invoice 7")?;
    let marker = Message::builder(&topic).key("a").json(&"marker")?;
    // The same message twice (as a relay that crashed before settling would send it), then a marker.
    publish(&topic, &[message.clone(), message.clone(), marker.clone()]).await?;

    let stats = consume_until(&db, consumer(&db, &topic)?.raw(record_effect), marker.id).await?;
    assert_eq!(
        effects(&db, message.id).await?,
        1,
        "effect applied once despite two deliveries"
    );
    assert_eq!(stats.duplicates, 1);
    assert_eq!(stats.applied, 2);
    let inbox_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = 'billing'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(inbox_rows, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_handler_rolls_back_its_inbox_row_and_the_message_is_retried_until_applied()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    sqlx::query("CREATE TABLE applied (n BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL)")
        .execute(&db.pool)
        .await?;
    let topic = create_topic(1).await?;
    let flaky = Message::builder(&topic).key("a").json(&"flaky")?;
    let marker = Message::builder(&topic).key("a").json(&"marker")?;
    publish(&topic, &[flaky.clone(), marker.clone()]).await?;

    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky_id = flaky.id;
    let handler = handler_fn(
        move |tx: &mut Transaction<'static, Postgres>, received: &Received| {
            let counter = counter.clone();
            Box::pin(async move {
                // The effect is written before the failure: the rollback must undo it.
                sqlx::query("INSERT INTO applied (message_id) VALUES ($1)")
                    .bind(received.id)
                    .execute(&mut **tx)
                    .await?;
                if received.id == flaky_id && counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("downstream unavailable".into());
                }
                Ok(())
            })
        },
    );
    let stats = consume_until(
        &db,
        consumer(&db, &topic)?.raw(handler).retry(fast_retry()),
        marker.id,
    )
    .await?;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert_eq!(stats.failures, 2);
    assert_eq!(
        effects(&db, flaky.id).await?,
        1,
        "failed attempts left no effect; the third applied once"
    );
    Ok(())
}

fn fast_retry() -> outbox_core::RetryPolicy {
    outbox_core::RetryPolicy::default()
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .expect("valid backoff")
}
