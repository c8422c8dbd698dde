//! Errors of the core crate.

/// A boxed error, used where the cause comes from an adapter crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors raised while building messages or running the relay engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message was built with a value that can never be published.
    #[error("invalid message: {0}")]
    InvalidMessage(String),

    /// The payload could not be serialized as JSON.
    #[error("could not serialize the payload as JSON")]
    Serialize(#[source] serde_json::Error),

    /// The outbox store (the database) failed.
    #[error("outbox store failed")]
    Store(#[source] BoxError),

    /// A relay setting is out of range.
    #[error("invalid relay configuration: {0}")]
    Config(String),
}
