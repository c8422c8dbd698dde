//! Adopting the outbox with the `outbox` crate alone: a writer, an embedded relay and a consumer.
//!
//! Delivery guarantee: the order row and its `OrderPlaced` event commit together; the relay
//! publishes the event at least once, in per-key order; the consumer applies it once (its shipment
//! and its inbox row commit together). Needs PostgreSQL at `DATABASE_URL` and Kafka at
//! `KAFKA_BROKERS` (`eval "$(scripts/services.sh)"`); run with `cargo run -p outbox-examples --bin adopt`.

use std::time::Duration;

use outbox::kafka::{ClientConfig, InboxConsumer, Received};
use outbox::postgres::{PgInbox, PgOutbox, PgPool, Postgres, Transaction, sqlx};
use outbox::{CancellationToken, Message};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", std::env::var("KAFKA_BROKERS")?);
    outbox::postgres::migrate(&mut *pool.acquire().await?, &Default::default()).await?;
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS adopt_shipments (id BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await?;
    let (id, topic) = (
        i64::from(std::process::id()),
        format!("adopt-{}", std::process::id()),
    );

    // The service's own code: the writer, the relay and the consumer up to `.build()?`, and the
    // handler `ship` below (29 lines); the rest sets up and waits for the shipment.
    let mut tx = pool.begin().await?; // the business rows go into `tx` too
    let event = Message::builder(&topic)
        .key(id.to_string())
        .event_type("OrderPlaced");
    PgOutbox::new().enqueue(&mut tx, &event.json(&id)?).await?;
    tx.commit().await?;

    let stop = CancellationToken::new();
    let relay = outbox::spawn_relay(pool.clone(), &kafka, stop.clone())?;

    kafka
        .set("group.id", "adopt-shipping")
        .set("auto.offset.reset", "earliest");
    let consumer = InboxConsumer::builder(&kafka, PgInbox::new(pool), "shipping")
        .topics([topic.as_str()])
        .on("OrderPlaced", ship)
        .build()?;
    let (stats, consuming) = (consumer.stats(), tokio::spawn(consumer.run(stop.clone())));
    while stats.snapshot().applied == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let (published, applied) = (relay.await?.published, consuming.await??.applied);
    println!("order {id}: {published} event published, {applied} shipment applied once");
    Ok(())
}

/// The consumer's handler: the shipment, in the transaction that also records the inbox row.
fn ship<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    id: i64,
    _: &'a Received,
) -> outbox::kafka::HandlerFuture<'a> {
    Box::pin(async move {
        sqlx::query("INSERT INTO adopt_shipments (id) VALUES ($1)")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    })
}
