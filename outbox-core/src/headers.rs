//! Header names of the Kafka record mapping (CloudEvents Kafka binding, binary mode).

/// The message id; what inboxes deduplicate on.
pub const CE_ID: &str = "ce_id";
/// The event type.
pub const CE_TYPE: &str = "ce_type";
/// The event source.
pub const CE_SOURCE: &str = "ce_source";
/// The CloudEvents spec version; always [`SPEC_VERSION`].
pub const CE_SPECVERSION: &str = "ce_specversion";
/// When the message was created, RFC 3339.
pub const CE_TIME: &str = "ce_time";
/// The payload's MIME type.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context: the writer's trace.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context: vendor state.
pub const TRACESTATE: &str = "tracestate";

/// The CloudEvents spec version the mapping follows.
pub const SPEC_VERSION: &str = "1.0";

/// Source used when a message sets none (CloudEvents requires one).
pub const DEFAULT_SOURCE: &str = "/outbox";

/// Type used when a message sets none (CloudEvents requires one).
pub const DEFAULT_TYPE: &str = "outbox.message";

/// Whether `name` is set by the relay from the message's own fields, so users may not set it. Case
/// is ignored: a consumer that compares header names without it must not be fooled either.
pub fn is_reserved(name: &str) -> bool {
    name.get(..3)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("ce_"))
        || name.eq_ignore_ascii_case(CONTENT_TYPE)
}
