//! A consumer of payloads that are not JSON: a raw handler gets each record's bytes and headers.
//!
//! Delivery guarantee: each message's effect is applied once, as with typed handlers: the handler
//! runs in the inbox transaction, so its row and the inbox row commit together, and a redelivery
//! finds the inbox row and is skipped. A handler error rolls both back and the record is tried
//! again. Needs PostgreSQL at `DATABASE_URL` and Kafka at `KAFKA_BROKERS`
//! (`eval "$(scripts/services.sh)"`); run with `cargo run -p outbox-examples --bin raw-bytes`.

use std::time::Duration;

use outbox::kafka::{ClientConfig, InboxConsumer, Received, handler_fn};
use outbox::postgres::{PgInbox, PgOutbox, PgPool, Postgres, Transaction, sqlx};
use outbox::{CancellationToken, Message};

/// The content type the writer gives its bytes, and the one the handler accepts.
const CONTENT_TYPE: &str = "application/x-reading";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", std::env::var("KAFKA_BROKERS")?);
    outbox::postgres::migrate(&mut *pool.acquire().await?, &Default::default()).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS raw_readings (id UUID PRIMARY KEY, sensor TEXT, celsius REAL)",
    )
    .execute(&pool)
    .await?;
    let topic = format!("raw-bytes-{}", std::process::id());

    // A writer of a binary format: a sensor's reading as a little-endian f32.
    let mut tx = pool.begin().await?;
    let reading = Message::builder(&topic)
        .key("sensor-7")
        .bytes(21.5f32.to_le_bytes(), CONTENT_TYPE)?;
    PgOutbox::new().enqueue(&mut tx, &reading).await?;
    tx.commit().await?;

    let stop = CancellationToken::new();
    let relay = outbox::spawn_relay(pool.clone(), &kafka, stop.clone())?;
    kafka
        .set("group.id", "raw-bytes-readings")
        .set("auto.offset.reset", "earliest");
    let consumer = InboxConsumer::builder(&kafka, PgInbox::new(pool.clone()), "readings")
        .topics([topic.as_str()])
        .raw(handler_fn(record))
        .build()?;
    let (stats, consuming) = (consumer.stats(), tokio::spawn(consumer.run(stop.clone())));
    while stats.snapshot().applied == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    relay.await?;
    consuming.await??;
    let celsius: f32 = sqlx::query_scalar("SELECT celsius FROM raw_readings WHERE id = $1")
        .bind(reading.id)
        .fetch_one(&pool)
        .await?;
    println!("sensor-7 read {celsius} °C, applied once");
    Ok(())
}

/// The raw handler: decodes the bytes itself, and refuses what it cannot read (the record is then
/// retried, and dead-lettered once its attempts are spent).
fn record<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    received: &'a Received,
) -> outbox::kafka::HandlerFuture<'a> {
    Box::pin(async move {
        if received.content_type.as_deref() != Some(CONTENT_TYPE) {
            return Err(format!("unexpected content type {:?}", received.content_type).into());
        }
        let bytes: [u8; 4] = received
            .payload
            .as_slice()
            .try_into()
            .map_err(|_| format!("a reading is 4 bytes, got {}", received.payload.len()))?;
        sqlx::query("INSERT INTO raw_readings (id, sensor, celsius) VALUES ($1, $2, $3)")
            .bind(received.id)
            .bind(received.key_str())
            .bind(f32::from_le_bytes(bytes))
            .execute(&mut **tx)
            .await?;
        Ok(())
    })
}
