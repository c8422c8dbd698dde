//! Kafka side of the transactional outbox.
//!
//! * [`KafkaPublisher`]: the relay's publisher, an idempotent `acks=all` producer sending whole
//!   batches and classifying failures for retry or dead letter.
//! * [`TopicRoute`]: the Kafka topic of a message: its own topic, or a template such as
//!   `outbox.event.{topic}`.
//! * [`record`]: how a message becomes a Kafka record (CloudEvents Kafka binding, binary mode).
//! * [`InboxConsumer`]: a consumer-group runner that applies each consumed message once per
//!   consumer name through an [`outbox_core::Inbox`] (for example `outbox_postgres::PgInbox`):
//!   typed handlers by `ce_type`, partitions in parallel and each in order, offsets committed only
//!   after the database commit, retries with backoff, a [`dead_letter`] topic, inbox retention.

mod client_errors;
mod consumer;
pub mod dead_letter;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod offsets;
pub mod partition_watch;
mod producer_config;
mod producer_context;
mod publisher;
mod received;
pub mod record;
mod span;
mod topic_route;

pub use consumer::{
    ConsumerStats, InHand, InboxConsumer, InboxConsumerBuilder, InboxRetention, RECORD_STARTED,
    StatsHandle,
};
pub use dead_letter::DeadLetterReason;
pub use error::{Error, classify};
pub use handler::{Handler, HandlerFuture, UnknownTypes, handler_fn};
pub use producer_context::ProducerContext;
pub use publisher::{KafkaPublisher, Producer};
pub use rdkafka::ClientConfig;
pub use received::Received;
pub use topic_route::TopicRoute;
