//! In-memory doubles of the store and the publisher, for tests of code built on the relay engine.
//!
//! They keep the contract of the real adapters that matters to the engine. The store numbers
//! messages in enqueue order, maps each key to a lane as the PostgreSQL store does, hands out lane
//! windows only from idle lanes it owns, holds back a topic in a lane while its oldest message waits
//! for a retry, drains the lanes it gives up, and forgets the windows of a session whose lease it
//! lost. It also checks the engine: a second window of a lane, or a settlement naming a message that
//! is not in a window of the current session, is recorded as a [violation](MemoryStore::violations).
//! The publisher records what it acknowledged, in order, fails the messages a script tells it to,
//! and never acknowledges a message after an earlier one of the same topic and key in the same
//! hand-over failed.

mod publisher;
mod store;

pub use publisher::MemoryPublisher;
pub use store::{InjectedFailure, MemoryStore};
