//! The tracing span every handler runs in.
//!
//! This is the only place the runner creates a handler span, so that continuing the writer's trace
//! (the W3C `traceparent`/`tracestate` headers, which [`Received::headers`] keeps) needs a change
//! here and nowhere else.

use crate::received::Received;

/// The span a record's handling runs in: every attempt, the inbox check and the handler itself.
/// Fields: `topic`, `partition`, `offset`, `ce_id`, `ce_type`.
/// With the `opentelemetry` feature of `outbox-core`, the span continues the trace of the message's
/// `traceparent` header (see [`outbox_core::trace`]).
pub fn handler_span(received: &Received) -> tracing::Span {
    let span = tracing::info_span!(
        "handle",
        topic = %received.topic,
        partition = received.partition,
        offset = received.offset,
        ce_id = %received.id,
        ce_type = received.event_type.as_deref().unwrap_or(""),
    );
    outbox_core::trace::continue_trace(&span, &received.headers);
    span
}
