//! Handlers and the routing of records to them by event type (`ce_type`).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use outbox_core::BoxError;
use serde::de::DeserializeOwned;

use crate::received::Received;

/// A boxed future borrowing the transaction and the record, as handlers return.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// Applies a record's effect through the inbox transaction: the raw form, bytes and headers.
///
/// Closures of the shape `|tx, received| Box::pin(async move { ... })` implement it; wrap them in
/// [`handler_fn`] so the compiler infers the borrowed signature.
pub trait Handler<Tx>: Send + Sync {
    /// Applies `received` through `tx`. An error rolls back the transaction (the inbox row with it)
    /// and the record is tried again after a backoff, up to the configured attempts.
    fn handle<'a>(&'a self, tx: &'a mut Tx, received: &'a Received) -> HandlerFuture<'a>;
}

impl<Tx, F> Handler<Tx> for F
where
    F: for<'a> Fn(&'a mut Tx, &'a Received) -> HandlerFuture<'a> + Send + Sync,
{
    fn handle<'a>(&'a self, tx: &'a mut Tx, received: &'a Received) -> HandlerFuture<'a> {
        self(tx, received)
    }
}

/// Turns a closure into a [`Handler`], letting the compiler infer the borrowed signature:
///
/// ```
/// # use outbox_kafka::{handler_fn, Received};
/// # struct Tx;
/// let applied = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
/// let handler = handler_fn(move |_tx: &mut Tx, received: &Received| {
///     let applied = applied.clone();
///     let id = received.id;
///     Box::pin(async move {
///         applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         println!("applied {id}");
///         Ok(())
///     })
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<Tx, F>(f: F) -> F
where
    F: for<'a> Fn(&'a mut Tx, &'a Received) -> HandlerFuture<'a> + Send + Sync,
{
    f
}

/// What the runner does with a record whose `ce_type` no handler was declared for (and no raw
/// handler takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownTypes {
    /// Skip it: the offset advances, the record is logged at debug and counted
    /// ([`ConsumerStats::ignored`](crate::ConsumerStats::ignored)). The default: a topic often
    /// carries events a consumer has no interest in.
    #[default]
    Ignore,
    /// Send it to the dead-letter topic with reason `unknown-type`.
    DeadLetter,
}

/// Why a record could not be handed to its handler.
#[derive(Debug)]
pub(crate) struct DecodeError(pub String);

/// A handler behind the router: decodes the record for the user's handler and calls it.
pub(crate) trait Dispatch<Tx>: Send + Sync {
    /// The handler's future, or why the record does not decode as the handler's event type.
    fn dispatch<'a>(
        &'a self,
        tx: &'a mut Tx,
        received: &'a Received,
    ) -> Result<HandlerFuture<'a>, DecodeError>;
}

/// A typed handler: the payload decoded as JSON into `T`.
pub(crate) struct Typed<T, F> {
    handler: F,
    event: PhantomData<fn() -> T>,
}

impl<T, F> Typed<T, F> {
    pub(crate) fn new(handler: F) -> Self {
        Self {
            handler,
            event: PhantomData,
        }
    }
}

impl<Tx, T, F> Dispatch<Tx> for Typed<T, F>
where
    T: DeserializeOwned,
    F: for<'a> Fn(&'a mut Tx, T, &'a Received) -> HandlerFuture<'a> + Send + Sync,
{
    fn dispatch<'a>(
        &'a self,
        tx: &'a mut Tx,
        received: &'a Received,
    ) -> Result<HandlerFuture<'a>, DecodeError> {
        let event = decode_json::<T>(received)?;
        Ok((self.handler)(tx, event, received))
    }
}

/// Decodes the payload as JSON into `T`, refusing payloads whose content type says they are not.
fn decode_json<T: DeserializeOwned>(received: &Received) -> Result<T, DecodeError> {
    if let Some(content_type) = &received.content_type
        && !content_type.to_ascii_lowercase().contains("json")
    {
        return Err(DecodeError(format!(
            "content-type `{content_type}` is not JSON; a typed handler needs a JSON payload"
        )));
    }
    serde_json::from_slice(&received.payload).map_err(|error| {
        DecodeError(format!(
            "payload does not decode as {}: {error}",
            std::any::type_name::<T>()
        ))
    })
}

/// A raw handler: bytes and headers, no decoding.
pub(crate) struct Raw<H>(pub H);

impl<Tx, H: Handler<Tx>> Dispatch<Tx> for Raw<H> {
    fn dispatch<'a>(
        &'a self,
        tx: &'a mut Tx,
        received: &'a Received,
    ) -> Result<HandlerFuture<'a>, DecodeError> {
        Ok(self.0.handle(tx, received))
    }
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To its handler ([`Router::handler`]).
    Handle,
    /// Nowhere: skipped, counted.
    Ignore,
    /// To the dead-letter topic as an unknown type.
    DeadLetter,
}

/// The handlers of a consumer, by `ce_type`, with the raw handler and the policy for the rest.
pub(crate) struct Router<Tx> {
    typed: HashMap<String, Box<dyn Dispatch<Tx>>>,
    raw: Option<Box<dyn Dispatch<Tx>>>,
    unknown: UnknownTypes,
}

impl<Tx> Default for Router<Tx> {
    fn default() -> Self {
        Self {
            typed: HashMap::new(),
            raw: None,
            unknown: UnknownTypes::default(),
        }
    }
}

impl<Tx> Router<Tx> {
    /// Routes `event_type` to `handler`; returns `false` when a handler was already declared for it.
    pub fn on(&mut self, event_type: String, handler: Box<dyn Dispatch<Tx>>) -> bool {
        self.typed.insert(event_type, handler).is_none()
    }

    /// Routes every record without a typed handler to `handler`.
    pub fn raw(&mut self, handler: Box<dyn Dispatch<Tx>>) {
        self.raw = Some(handler);
    }

    /// Sets the policy for records nothing handles.
    pub fn unknown(&mut self, unknown: UnknownTypes) {
        self.unknown = unknown;
    }

    /// Whether any handler is declared.
    pub fn is_empty(&self) -> bool {
        self.typed.is_empty() && self.raw.is_none()
    }

    /// The handler of records of type `event_type`, if any.
    pub fn handler(&self, event_type: Option<&str>) -> Option<&dyn Dispatch<Tx>> {
        let typed = event_type.and_then(|t| self.typed.get(t));
        typed.or(self.raw.as_ref()).map(AsRef::as_ref)
    }

    /// The route of a record of type `event_type`.
    pub fn route(&self, event_type: Option<&str>) -> Route {
        match (self.handler(event_type), self.unknown) {
            (Some(_), _) => Route::Handle,
            (None, UnknownTypes::Ignore) => Route::Ignore,
            (None, UnknownTypes::DeadLetter) => Route::DeadLetter,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::received::tests::raw;

    #[derive(Debug, Deserialize)]
    struct OrderPlaced {
        total: i64,
    }

    /// The transaction of these tests: what the handlers saw.
    type Seen = Vec<String>;

    fn on_order<'a>(seen: &'a mut Seen, event: OrderPlaced, _: &'a Received) -> HandlerFuture<'a> {
        seen.push(format!("typed {}", event.total));
        Box::pin(async { Ok(()) })
    }

    fn typed_router(unknown: UnknownTypes) -> Router<Seen> {
        let mut router = Router::default();
        assert!(router.on("OrderPlaced".into(), Box::new(Typed::new(on_order))));
        router.unknown(unknown);
        router
    }

    fn received(event_type: &str, payload: &str) -> Received {
        let id = uuid::Uuid::now_v7().to_string();
        raw(&[("ce_id", &id), ("ce_type", event_type)], payload)
            .decode()
            .expect("decodes")
    }

    fn run(router: &Router<Seen>, received: &Received) -> Result<Seen, String> {
        let mut seen = Seen::new();
        match router.route(received.event_type.as_deref()) {
            Route::Handle => {
                let handler = router
                    .handler(received.event_type.as_deref())
                    .ok_or("routed to a handler that is not there")?;
                let future = handler.dispatch(&mut seen, received).map_err(|e| e.0)?;
                drop(future);
            }
            Route::Ignore => seen.push("ignored".into()),
            Route::DeadLetter => seen.push("dead letter".into()),
        }
        Ok(seen)
    }

    #[test]
    fn declared_types_reach_their_handler_decoded() {
        let router = typed_router(UnknownTypes::Ignore);
        let seen = run(&router, &received("OrderPlaced", r#"{"total": 42}"#)).expect("routes");
        assert_eq!(seen, ["typed 42"]);
    }

    #[test]
    fn unknown_types_are_ignored_or_dead_lettered_as_configured() {
        let ignoring = typed_router(UnknownTypes::Ignore);
        assert_eq!(
            run(&ignoring, &received("OrderShipped", "{}")).expect("routes"),
            ["ignored"]
        );
        let strict = typed_router(UnknownTypes::DeadLetter);
        assert_eq!(
            run(&strict, &received("OrderShipped", "{}")).expect("routes"),
            ["dead letter"]
        );
    }

    #[test]
    fn a_raw_handler_takes_what_no_typed_handler_takes() {
        let mut router = typed_router(UnknownTypes::DeadLetter);
        let raw_handler = handler_fn(|seen: &mut Seen, received: &Received| {
            seen.push(format!(
                "raw {}",
                received.event_type.as_deref().unwrap_or("-")
            ));
            Box::pin(async { Ok(()) })
        });
        router.raw(Box::new(Raw(raw_handler)));
        assert_eq!(
            run(&router, &received("OrderShipped", "x")).expect("routes"),
            ["raw OrderShipped"]
        );
        assert_eq!(
            run(&router, &received("OrderPlaced", r#"{"total": 1}"#)).expect("routes"),
            ["typed 1"]
        );
    }

    #[test]
    fn payloads_that_do_not_decode_as_the_declared_type_are_refused_with_the_reason() {
        let router = typed_router(UnknownTypes::Ignore);
        let error = run(&router, &received("OrderPlaced", "{not json")).expect_err("bad json");
        assert!(error.contains("OrderPlaced"), "{error}");
        let mut text = received("OrderPlaced", r#"{"total": 1}"#);
        text.content_type = Some("text/plain".into());
        let error = run(&router, &text).expect_err("not json");
        assert!(error.contains("text/plain"), "{error}");
    }

    #[test]
    fn declaring_a_type_twice_is_reported() {
        let mut router = typed_router(UnknownTypes::Ignore);
        assert!(!router.on("OrderPlaced".into(), Box::new(Typed::new(on_order))));
    }
}
