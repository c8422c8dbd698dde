//! Transactional outbox and inbox: the backend-independent core.
//!
//! A service writes its business rows and the [`Message`]s that describe them in one database
//! transaction. A relay ([`Relay`]) claims the stored messages in order, hands them to a
//! [`Publisher`], waits for the broker's acknowledgements and only then removes them from the outbox
//! ([`RelayStore`]): delivery is *at least once*, with per-key order. Consumers record every message id
//! in an [`Inbox`] inside the transaction that applies the message's effect, which turns redeliveries
//! into no-ops.
//!
//! ```
//! use outbox_core::Message;
//!
//! # fn main() -> Result<(), outbox_core::Error> {
//! let message = Message::builder("orders")
//!     .key("order-42")
//!     .event_type("OrderPlaced")
//!     .source("/orders-service")
//!     .json(&serde_json::json!({ "order_id": 42, "total_cents": 1999 }))?;
//! assert_eq!(message.content_type, "application/json");
//! # Ok(())
//! # }
//! ```
//!
//! This crate has no database or broker dependency; `outbox-postgres` and `outbox-kafka` provide them.
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `test-utils` | [`testing`]: an in-memory store and a scriptable publisher |
//! | `opentelemetry` | [`trace`]: W3C trace context from the writer's span, through the relay, to the consumer's handler |

pub mod error;
pub mod fence;
pub mod headers;
pub mod inbox;
pub mod lane;
pub mod message;
pub mod metrics;
pub mod publisher;
pub mod relay;
pub mod retry;
pub mod store;
#[doc(hidden)] // for the adapters
pub mod sync;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod topic_name;
pub mod trace;

pub use error::{BoxError, Error};
pub use fence::Fence;
pub use inbox::Inbox;
pub use message::{Message, MessageBuilder};
pub use publisher::Acknowledgements;
pub use publisher::{PublishError, PublishErrorKind, Publisher};
pub use relay::{Relay, RelayConfig, RelayStats};
pub use retry::RetryPolicy;
pub use store::{
    ClaimRequest, DeadLetter, Lane, LaneStore, Lease, RelayStore, Retry, Settled, Settlement,
    StoredMessage, WakeUps, Window,
};
pub use tokio_util::sync::CancellationToken;
