//! Kafka side of the transactional outbox.
//!
//! * [`KafkaPublisher`]: the relay's publisher, an idempotent `acks=all` producer sending whole
//!   batches and classifying failures for retry or dead letter.
//! * [`record`]: how a message becomes a Kafka record (CloudEvents Kafka binding, binary mode).
//! * [`InboxConsumer`]: applies each consumed message once per consumer name through an
//!   [`outbox_core::Inbox`] (for example `outbox_postgres::PgInbox`).

mod consumer;
mod error;
mod publisher;
pub mod record;

pub use consumer::{ConsumerStats, Handler, HandlerFuture, InboxConsumer, Received, handler_fn};
pub use error::{Error, classify};
pub use publisher::KafkaPublisher;
pub use rdkafka::ClientConfig;
