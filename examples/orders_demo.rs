//! The whole flow in one program: an order service, the relay, and an inbox-backed consumer.
//!
//! Delivery guarantee: each order and its `OrderPlaced` event are written in one PostgreSQL
//! transaction, so an event exists exactly when its order does. The relay publishes events to Kafka
//! *at least once*, in order per order id; the shipping consumer records every event id in its inbox
//! in the same transaction as its shipment, so each event is applied *once* however often Kafka
//! delivers it. The demo shows both halves: a rolled-back order publishes nothing, and a full replay
//! of the topic (as after a consumer crash before its offsets were committed) is absorbed by the inbox.
//!
//! With `--wal` the events travel as logical decoding messages instead of outbox rows (WAL mode):
//! the program creates a replication slot, writes with `PgOutbox::wal()`, relays with
//! `PgWalStore`, and drops the slot at the end.
//!
//! Needs PostgreSQL at `DATABASE_URL` and a Kafka broker at `KAFKA_BROKERS`; `scripts/demo.sh`
//! starts both and runs this program (`scripts/demo.sh --wal` for WAL mode).

use std::time::Duration;

use anyhow::Context;
use outbox_core::{CancellationToken, Message, Relay, RelayConfig, RelayStats, RelayStore};
use outbox_kafka::{
    ClientConfig, ConsumerStats, HandlerFuture, InboxConsumer, InboxRetention, KafkaPublisher,
    Received,
};
use outbox_postgres::{
    PgInbox, PgOutbox, PgRelayStore, PgRelayStoreConfig, PgWalStore, PgWalStoreConfig, SlotName,
    Tables,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The event the order service publishes.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: Uuid,
    customer: String,
    total_cents: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let database_url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set (scripts/demo.sh sets it)")?;
    let brokers = std::env::var("KAFKA_BROKERS")
        .context("KAFKA_BROKERS is not set (scripts/demo.sh sets it)")?;
    let pool = PgPool::connect(&database_url)
        .await
        .context("connecting to PostgreSQL")?;
    outbox_postgres::migrate(&mut *pool.acquire().await?, &Tables::default()).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS demo_orders (id UUID PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL);
         CREATE TABLE IF NOT EXISTS demo_shipments (order_id UUID PRIMARY KEY, shipped_at TIMESTAMPTZ NOT NULL DEFAULT now());",
    )
    .execute(&pool)
    .await?;
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &brokers);
    let topic = format!("orders-demo-{}", Uuid::now_v7().simple());
    create_topic(&kafka, &topic).await?;
    println!("topic {topic}");

    // The relay, in-process here; in production it is the `outbox-relay run` process.
    let wal = std::env::args().any(|arg| arg == "--wal");
    let slot = SlotName::new("orders_demo")?;
    let stop_relay = CancellationToken::new();
    let publisher = KafkaPublisher::new(&kafka)?;
    let (relay_task, outbox) = if wal {
        // The slot exists before the first event is written: WAL from before it is not decoded.
        let mut conn = pool.acquire().await?;
        outbox_postgres::wal::create_slot(&mut conn, &Tables::default(), &slot).await?;
        println!("WAL mode: events are logical decoding messages, read from slot {slot}");
        let config = PgWalStoreConfig::default().slot(slot.clone());
        let store = PgWalStore::new(&pool, &database_url, config)?;
        (start_relay(store, publisher, &stop_relay)?, PgOutbox::wal())
    } else {
        let store = PgRelayStore::new(pool.clone(), PgRelayStoreConfig::default());
        (start_relay(store, publisher, &stop_relay)?, PgOutbox::new())
    };

    // The order service.
    let mut placed = Vec::new();
    for (customer, total_cents) in [("ada", 1999), ("grace", 4500), ("linus", 120)] {
        placed.push(place_order(&pool, &outbox, &topic, customer, total_cents, true).await?);
    }
    let refused = place_order(&pool, &outbox, &topic, "mallory", 999_999, false).await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM demo_orders WHERE id = $1")
        .bind(refused)
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(left == 0, "a rolled-back order must leave no row");
    println!("order {refused} for mallory rolled back: neither the order nor its event exists");

    // The shipping service, first run.
    let first = run_consumer(&pool, &kafka, &topic, "shipping-1", &placed).await?;
    println!(
        "shipping consumer: applied {}, deduplicated {}",
        first.applied, first.duplicates
    );

    // A replay of the whole topic, as after a crash before offsets were committed: a new consumer
    // group reads from the start, under the same inbox name.
    placed.push(place_order(&pool, &outbox, &topic, "margaret", 3000, true).await?);
    let replay = run_consumer(&pool, &kafka, &topic, "shipping-2", &placed).await?;
    println!(
        "shipping consumer after replay: applied {}, deduplicated {}",
        replay.applied, replay.duplicates
    );

    stop_relay.cancel();
    let relay_stats = relay_task.await?;
    if wal {
        let mut conn = pool.acquire().await?;
        outbox_postgres::wal::drop_slot(&mut conn, &Tables::default(), &slot).await?;
    }
    let shipments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM demo_shipments WHERE order_id = ANY($1)")
            .bind(&placed)
            .fetch_one(&pool)
            .await?;
    println!(
        "summary: {} orders committed, {} events published, {} shipments (one per order), {} redeliveries absorbed by the inbox",
        placed.len(),
        relay_stats.published,
        shipments,
        first.duplicates + replay.duplicates
    );
    anyhow::ensure!(
        shipments == placed.len() as i64,
        "every committed order is shipped exactly once"
    );
    Ok(())
}

/// Runs a relay over `store` until `stop`.
fn start_relay<S: RelayStore + 'static>(
    store: S,
    publisher: KafkaPublisher,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<RelayStats>> {
    let relay = Relay::new(store, publisher, RelayConfig::default())?;
    let stop = stop.clone();
    Ok(tokio::spawn(async move { relay.run(stop).await }))
}

/// Writes an order and its event in one transaction; commits it or rolls it back.
async fn place_order(
    pool: &PgPool,
    outbox: &PgOutbox,
    topic: &str,
    customer: &str,
    total_cents: i64,
    commit: bool,
) -> anyhow::Result<Uuid> {
    let order_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO demo_orders (id, customer, total_cents) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(customer)
        .bind(total_cents)
        .execute(&mut *tx)
        .await?;
    let event = Message::builder(topic)
        .key(order_id.to_string())
        .event_type("OrderPlaced")
        .source("/orders-service")
        .json(&OrderPlaced {
            order_id,
            customer: customer.into(),
            total_cents,
        })?;
    outbox.enqueue(&mut tx, &event).await?;
    if commit {
        tx.commit().await?;
        println!(
            "order {order_id} for {customer} committed with event {}",
            event.id
        );
    } else {
        tx.rollback().await?;
    }
    Ok(order_id)
}

/// The shipping service's handler for `OrderPlaced`: runs in the same transaction as the inbox row.
fn ship<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    event: OrderPlaced,
    received: &'a Received,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        sqlx::query("INSERT INTO demo_shipments (order_id) VALUES ($1)")
            .bind(event.order_id)
            .execute(&mut **tx)
            .await?;
        println!(
            "  applied {} for order {} ({} cents)",
            received.event_type.as_deref().unwrap_or("?"),
            event.order_id,
            event.total_cents
        );
        Ok(())
    })
}

/// Consumes until the last order of `placed` is shipped (the topic has one partition, so every
/// earlier event was handled by then).
async fn run_consumer(
    pool: &PgPool,
    kafka: &ClientConfig,
    topic: &str,
    group: &str,
    placed: &[Uuid],
) -> anyhow::Result<ConsumerStats> {
    let mut config = kafka.clone();
    config.set("group.id", format!("{topic}-{group}"));
    let inbox = PgInbox::new(pool.clone());
    let consumer = InboxConsumer::builder(&config, inbox, "shipping")
        .topics([topic])
        .on("OrderPlaced", ship)
        // Inbox rows older than the topic's retention can go: no redelivery reaches back further.
        .inbox_retention(InboxRetention::keep(Duration::from_secs(7 * 86_400)))
        .build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    let last = placed.last().copied().context("no order placed")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shipped: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM demo_shipments WHERE order_id = $1)")
                .bind(last)
                .fetch_one(pool)
                .await?;
        if shipped {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "order {last} was not shipped within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    Ok(task.await??)
}

async fn create_topic(kafka: &ClientConfig, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let results = admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("creating the demo topic (is the broker at KAFKA_BROKERS running?)")?;
    for result in results {
        result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name} failed: {code}"))?;
    }
    Ok(())
}
