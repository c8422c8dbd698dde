//! Carrying a trace across the outbox: W3C Trace Context (`traceparent`, `tracestate`) in the
//! message headers.
//!
//! * The writer: a message enqueued inside a `tracing` span that has an OpenTelemetry context gets
//!   that context's `traceparent` and `tracestate` headers ([`current_context_headers`]), unless it
//!   already has a `traceparent`.
//! * The relay: its publish span links to the context of every message it publishes
//!   ([`link_to_messages`]): one batch serves many traces, so links rather than one parent.
//! * The consumer: the span around the user's handler continues the message's trace
//!   ([`continue_trace`]).
//!
//! All of this needs the `opentelemetry` feature and, at run time, a subscriber with the
//! `tracing-opentelemetry` layer. Without the feature every function here does nothing; without
//! the layer spans have no OpenTelemetry context and no header is written.

use std::collections::BTreeMap;

use crate::store::StoredMessage;

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// The trace headers of the current span's OpenTelemetry context; empty when it has none.
pub fn current_context_headers() -> BTreeMap<String, String> {
    imp::current_context_headers()
}

/// Adds the current span's trace headers to `headers` unless it holds a `traceparent` already.
pub fn inject_current(headers: &mut BTreeMap<String, String>) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    for (name, value) in current_context_headers() {
        headers.entry(name).or_insert(value);
    }
}

/// Links `span` to the trace of each message of `batch` that carries one.
pub fn link_to_messages(span: &tracing::Span, batch: &[StoredMessage]) {
    imp::link_to_messages(span, batch);
}

/// Makes `span` a child of the trace in `headers` (when they carry a valid `traceparent`).
pub fn continue_trace(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    imp::continue_trace(span, headers);
}

#[cfg(feature = "opentelemetry")]
mod imp {
    use std::collections::{BTreeMap, HashMap};

    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::store::StoredMessage;

    struct Headers<'a>(&'a BTreeMap<String, String>);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    struct Collect(HashMap<String, String>);

    impl Injector for Collect {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    fn context_of(headers: &BTreeMap<String, String>) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(&Headers(headers))
    }

    pub fn current_context_headers() -> BTreeMap<String, String> {
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return BTreeMap::new();
        }
        let mut collected = Collect(HashMap::new());
        TraceContextPropagator::new().inject_context(&context, &mut collected);
        collected.0.into_iter().collect()
    }

    pub fn link_to_messages(span: &tracing::Span, batch: &[StoredMessage]) {
        for stored in batch {
            if !stored.message.headers.contains_key(super::TRACEPARENT) {
                continue;
            }
            let linked = context_of(&stored.message.headers)
                .span()
                .span_context()
                .clone();
            if linked.is_valid() {
                span.add_link(linked);
            }
        }
    }

    pub fn continue_trace(span: &tracing::Span, headers: &BTreeMap<String, String>) {
        if !headers.contains_key(super::TRACEPARENT) {
            return;
        }
        let parent = context_of(headers);
        if parent.span().span_context().is_valid() {
            // Fails only when the span is disabled or already started elsewhere; nothing to do then.
            let _ = span.set_parent(parent);
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod imp {
    use std::collections::BTreeMap;

    use crate::store::StoredMessage;

    pub fn current_context_headers() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    pub fn link_to_messages(_span: &tracing::Span, _batch: &[StoredMessage]) {}

    pub fn continue_trace(_span: &tracing::Span, _headers: &BTreeMap<String, String>) {}
}
