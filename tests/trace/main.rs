//! One trace from the writer's span, through the outbox, the relay and Kafka, to the consumer's
//! handler span (W3C trace context in the message headers).
//!
//! A test binary of its own: it installs an OpenTelemetry tracing subscriber for the whole process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use outbox_core::{CancellationToken, Message, RelayConfig};
use outbox_kafka::{InboxConsumer, Received, handler_fn};
use outbox_postgres::{PgInbox, PgOutbox};
use outbox_tests::{InProcessRelay, TestDb, create_topic, kafka_config};
use sqlx::{Postgres, Transaction};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

/// The trace and span id of `span`'s OpenTelemetry context.
fn ids(span: &tracing::Span) -> (TraceId, SpanId) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (span_context.trace_id(), span_context.span_id())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_goes_from_the_writer_to_the_consumer_handler() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-trace-test")));
    tracing::subscriber::set_global_default(subscriber)?;

    let db = TestDb::create().await?;
    let topic = create_topic(1).await?;

    // The writer: the business transaction runs in a span of its own.
    let writer = tracing::info_span!("place_order");
    let (writer_trace, writer_span) = ids(&writer);
    assert_ne!(
        writer_trace,
        TraceId::INVALID,
        "the writer's span has a trace"
    );
    let message = Message::builder(&topic).key("order-1").json(&"placed")?;
    async {
        let mut tx = db.pool.begin().await?;
        PgOutbox::new().enqueue(&mut tx, &message).await?;
        tx.commit().await?;
        anyhow::Ok(())
    }
    .instrument(writer.clone())
    .await?;
    drop(writer);
    let stored: serde_json::Value = sqlx::query_scalar("SELECT headers FROM outbox WHERE id = $1")
        .bind(message.id)
        .fetch_one(&db.pool)
        .await?;
    let traceparent = stored["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        traceparent.contains(&writer_trace.to_string()),
        "the outbox row carries the writer's trace: {stored}"
    );

    // The relay, outside any trace.
    let relay = InProcessRelay::start(&db, RelayConfig::default())?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    relay.stop().await?;

    // The consumer: the handler notes the trace it runs in.
    let seen: Arc<Mutex<Option<(TraceId, String)>>> = Arc::default();
    let noted = seen.clone();
    let mut config = kafka_config()?;
    config
        .set("group.id", format!("trace-{}", Uuid::now_v7().simple()))
        .set("fetch.wait.max.ms", "10");
    let consumer = InboxConsumer::builder(&config, PgInbox::new(db.pool.clone()), "shipping")
        .topics([topic.as_str()])
        .raw(handler_fn(
            move |_tx: &mut Transaction<'static, Postgres>, received: &Received| {
                let noted = noted.clone();
                let (trace, _) = ids(&tracing::Span::current());
                let header = received
                    .header("traceparent")
                    .unwrap_or_default()
                    .to_owned();
                Box::pin(async move {
                    *noted.lock().expect("not poisoned") = Some((trace, header));
                    Ok(())
                })
            },
        ))
        .build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (handler_trace, header) = loop {
        if let Some(seen) = seen.lock().expect("not poisoned").clone() {
            break seen;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running).await???;

    assert_eq!(
        header, traceparent,
        "the record carries the stored traceparent"
    );
    assert_eq!(
        handler_trace, writer_trace,
        "the handler runs in the writer's trace"
    );

    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    let handle = spans
        .iter()
        .find(|span| span.name == "handle")
        .ok_or_else(|| anyhow::anyhow!("no handler span among {spans:?}"))?;
    assert_eq!(handle.span_context.trace_id(), writer_trace);
    assert_eq!(
        handle.parent_span_id, writer_span,
        "a child of the writer's span"
    );
    let publish = spans
        .iter()
        .find(|span| span.name == "outbox.publish")
        .ok_or_else(|| anyhow::anyhow!("no publish span among {spans:?}"))?;
    assert!(
        publish
            .links
            .iter()
            .any(|link| link.span_context.trace_id() == writer_trace),
        "the relay's publish span links to the writer's trace: {:?}",
        publish.links
    );
    Ok(())
}
