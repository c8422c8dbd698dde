//! Reliable "write to the database **and** publish an event" for Rust services on PostgreSQL and
//! Kafka: the transactional outbox (writers), a relay (publishing, at least once, in per-key
//! order), and the inbox (consumers apply each message once).
//!
//! This is the crate a service depends on; it re-exports what a service uses from the crates
//! behind it (`outbox-core`, `outbox-postgres`, `outbox-kafka`), by feature:
//!
//! | feature | module | what it adds |
//! | --- | --- | --- |
//! | `postgres` (default) | [`postgres`] | [`postgres::PgOutbox`] (enqueue in the caller's transaction, as rows or WAL messages), the relay stores, [`postgres::PgInbox`], dead letters, status, migrations |
//! | `kafka` (default) | [`kafka`] | [`kafka::KafkaPublisher`], [`kafka::InboxConsumer`] |
//! | `opentelemetry` | — | W3C trace context from the writer's span to the consumer's handler |
//! | `test-utils` | `engine::testing` | in-memory store and publisher doubles |
//!
//! A writer, an embedded relay and a consumer, with this crate alone
//! (`examples/adopt.rs` runs it):
//!
//! ```no_run
//! use outbox::kafka::{ClientConfig, InboxConsumer, Received};
//! use outbox::postgres::{PgInbox, PgOutbox, PgPool, Postgres, Transaction};
//! use outbox::{CancellationToken, Message};
//!
//! # async fn run(pool: PgPool, kafka: ClientConfig, consumer: ClientConfig) -> anyhow::Result<()> {
//! // Writer: the business row and its event in one transaction.
//! let mut tx = pool.begin().await?;
//! outbox::postgres::sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
//! PgOutbox::new().enqueue(&mut tx, &Message::builder("orders").key("42").event_type("OrderPlaced").json(&42)?).await?;
//! tx.commit().await?;
//!
//! // Relay, embedded: publishes at least once, in per-key order, until `stop`.
//! let stop = CancellationToken::new();
//! let relay = outbox::spawn_relay(pool.clone(), &kafka, stop.clone())?;
//!
//! // Consumer: the effect and the inbox row in one transaction; redeliveries are absorbed.
//! InboxConsumer::builder(&consumer, PgInbox::new(pool), "shipping")
//!     .topics(["orders"])
//!     .on("OrderPlaced", |tx: &mut Transaction<'static, Postgres>, id: i64, _: &Received| Box::pin(async move {
//!         outbox::postgres::sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)").bind(id).execute(&mut **tx).await?;
//!         Ok(())
//!     }))
//!     .build()?
//!     .run(stop)
//!     .await?;
//! relay.await.map_err(anyhow::Error::msg)?;
//! # Ok(())
//! # }
//! ```
//!
//! How a message travels and which file holds each step: `docs/architecture.md`. Every window in
//! which a duplicate or a reorder can happen: `docs/guarantees.md`.

pub use outbox_core::{
    BoxError, CancellationToken, Error, Message, MessageBuilder, Relay, RelayConfig, RelayStats,
    RetryPolicy,
};

/// Starts a relay inside the service, on the runtime it runs on: the outbox in `pool`'s database
/// (default tables and settings, table mode) published to the brokers of `kafka`, until `stop` is
/// cancelled. The handle resolves to what it published once it has drained and stopped. Several
/// service instances may each run one: they share the lanes. For other settings, or WAL mode, build
/// a [`Relay`] from a store and a publisher as this function does.
///
/// # Errors
/// When the Kafka settings are refused (see [`kafka::KafkaPublisher::new`]) or do not fit the
/// store's lease.
#[cfg(all(feature = "postgres", feature = "kafka"))]
pub fn spawn_relay(
    pool: postgres::PgPool,
    kafka: &kafka::ClientConfig,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<RelayStats>, SpawnError> {
    let store = postgres::PgRelayStore::new(pool, postgres::PgRelayStoreConfig::default());
    let publisher = kafka::KafkaPublisher::new(kafka).map_err(SpawnError::Kafka)?;
    let relay = Relay::new(store, publisher, RelayConfig::default()).map_err(SpawnError::Relay)?;
    Ok(tokio::spawn(async move { relay.run(stop).await }))
}

/// Why [`spawn_relay`] could not start a relay.
#[cfg(all(feature = "postgres", feature = "kafka"))]
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// The Kafka settings are refused.
    Kafka(outbox_kafka::Error),
    /// The relay's settings do not fit together (a send timeout the lease does not cover).
    Relay(Error),
}

#[cfg(all(feature = "postgres", feature = "kafka"))]
impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka(_) => f.write_str("invalid Kafka producer settings"),
            Self::Relay(_) => f.write_str("invalid relay settings"),
        }
    }
}

#[cfg(all(feature = "postgres", feature = "kafka"))]
impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Kafka(error) => Some(error),
            Self::Relay(error) => Some(error),
        }
    }
}

/// What a custom store, publisher or inbox implements, and what the engine hands them: for
/// building the outbox on another database or broker.
pub mod engine {
    pub use outbox_core::fence::{self, Fence};
    pub use outbox_core::metrics;
    pub use outbox_core::{
        Acknowledgements, ClaimRequest, DeadLetter, Inbox, Lane, LaneStore, Lease, PublishError,
        PublishErrorKind, Publisher, RelayStore, Retry, Settled, Settlement, StoredMessage,
        WakeUps, Window,
    };

    /// In-memory doubles of the store and the publisher.
    #[cfg(feature = "test-utils")]
    pub use outbox_core::testing;
}

/// The PostgreSQL side: writing, relay stores, the inbox, dead letters, status, migrations.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use outbox_postgres::wal;
    pub use outbox_postgres::{
        DEFAULT_MAX_MESSAGE_BYTES, DeadLetterFilter, DeadLetterRow, Migration, OutboxStatus,
        PgDeadLetters, PgInbox, PgOutbox, PgRelayStore, PgRelayStoreConfig, PgStatus, PgWalStore,
        PgWalStoreConfig, SlotName, Tables, migrate, migrations, pending_migrations,
    };
    pub use outbox_postgres::{DeadLetter, Error};
    /// The sqlx types a service passes in: its pool, its transactions.
    pub use sqlx::{self, PgConnection, PgPool, Postgres, Transaction};
}

/// The Kafka side: the relay's publisher and the inbox consumer.
#[cfg(feature = "kafka")]
pub mod kafka {
    pub use outbox_kafka::{
        ClientConfig, ConsumerStats, DeadLetterReason, Error, Handler, HandlerFuture, InHand,
        InboxConsumer, InboxConsumerBuilder, InboxRetention, KafkaPublisher, Received, StatsHandle,
        TopicRoute, UnknownTypes, handler_fn,
    };
}
