//! The relay's HTTP listener: Prometheus metrics at `/metrics`, liveness at `/healthz`, readiness at
//! `/readyz`.
//!
//! The metrics themselves are recorded where things happen (see [`outbox_core::metrics`]); this
//! module installs the Prometheus recorder, reads the backlog gauges from the database at each
//! scrape (so that they are never older than the scrape), and answers the probes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics::gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_core::CancellationToken;
use outbox_core::metrics as names;
use outbox_kafka::ClientConfig;
use outbox_postgres::wal::Reading;
use outbox_postgres::{OwnedLaneCount, PgStatus, SlotName, Tables};
use rdkafka::producer::{BaseProducer, Producer};
use sqlx::PgPool;

/// How often the recorder's upkeep runs.
const UPKEEP: Duration = Duration::from_secs(5);

/// How long one readiness check, or reading the backlog for a scrape, may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Commit → acknowledgement buckets, in seconds: from a few milliseconds to minutes of backlog.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Messages per batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// What the probes look at.
pub struct Probes {
    /// The relay's pool.
    pub pool: PgPool,
    /// A client used only to ask the brokers for metadata.
    pub broker: Arc<BaseProducer>,
    /// What the relay must hold to do its work.
    pub ownership: Ownership,
}

/// What a relay holds while it works: lanes of the outbox table, or the replication slot.
pub enum Ownership {
    /// Table mode: lanes owned.
    Lanes(OwnedLaneCount),
    /// WAL capture: whether this relay reads the slot.
    Slot {
        /// Set while the relay reads.
        reading: Reading,
        /// The slot.
        slot: SlotName,
        /// The outbox (its slot registry).
        tables: Tables,
    },
}

/// Installs the Prometheus recorder, binds `address` and serves the endpoints until `shutdown`.
/// Each scrape first reads the backlog through `status`.
///
/// # Errors
/// When the address cannot be bound or the recorder cannot be installed.
pub async fn start(
    address: SocketAddr,
    probes: Probes,
    status: PgStatus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::PUBLISH_LATENCY.into()),
            LATENCY_BUCKETS,
        )
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full(names::WINDOW_SIZE.into()), BATCH_BUCKETS)
        })
        .context("configuring the Prometheus recorder")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    names::describe();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on --metrics-address {address}"))?;
    let address = listener.local_addr()?;

    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            handle: handle.clone(),
            probes: Arc::new(probes),
            backlog: Arc::new(Backlog {
                status,
                topics: tokio::sync::Mutex::new(BTreeSet::new()),
            }),
        });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
    tokio::spawn(upkeep(handle, shutdown));
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    Ok(())
}

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    probes: Arc<Probes>,
    backlog: Arc<Backlog>,
}

/// The backlog gauges' source, and the topics they have reported.
struct Backlog {
    status: PgStatus,
    topics: tokio::sync::Mutex<BTreeSet<String>>,
}

async fn metrics(State(state): State<AppState>) -> String {
    state.backlog.refresh().await;
    state.handle.render()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the database and a broker answer and the relay owns lanes; 503 otherwise. The body
/// names each check and its outcome.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let probes = &state.probes;
    let database = async {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&probes.pool);
        match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("unreachable: {error}")),
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    };
    let broker = async {
        let client = probes.broker.clone();
        let asked = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(None, CHECK_TIMEOUT)
                .map(|_| ())
        })
        .await;
        match asked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("unreachable: {error}")),
            Err(error) => Err(format!("check failed: {error}")),
        }
    };
    let (database, broker) = tokio::join!(database, broker);
    let (held, holding) = holding(probes).await;
    let mut ready = true;
    let mut body = String::new();
    let checks = [
        ("database", database.map(|()| None)),
        ("broker", broker.map(|()| None)),
        (held, holding),
    ];
    for (check, outcome) in checks {
        gauge!(names::READY, "check" => check).set(if outcome.is_ok() { 1.0 } else { 0.0 });
        match outcome {
            Ok(Some(detail)) => body.push_str(&format!("{check}: ok ({detail})\n")),
            Ok(None) => body.push_str(&format!("{check}: ok\n")),
            Err(why) => {
                ready = false;
                body.push_str(&format!("{check}: {why}\n"));
            }
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// The readiness check of what the relay holds: its name and its outcome, with a detail.
async fn holding(probes: &Probes) -> (&'static str, Result<Option<String>, String>) {
    match &probes.ownership {
        Ownership::Lanes(lanes) => {
            let owned = lanes.get();
            let outcome = if owned > 0 {
                Ok(Some(format!("{owned} owned")))
            } else {
                Err("owns no lane (starting, or more relays than lanes)".to_owned())
            };
            ("lanes", outcome)
        }
        Ownership::Slot {
            reading,
            slot,
            tables,
        } => {
            if reading.get() {
                return ("slot", Ok(Some(format!("reading `{slot}`"))));
            }
            let status = async {
                let mut conn = probes.pool.acquire().await.map_err(|e| e.to_string())?;
                outbox_postgres::wal::slot_status(&mut conn, tables, slot)
                    .await
                    .map_err(|e| outbox_core::relay::error_chain(&e))
            };
            let why = match tokio::time::timeout(CHECK_TIMEOUT, status).await {
                Ok(Ok(status)) if !status.exists => format!(
                    "the replication slot `{slot}` is missing: create it with `outbox-relay wal create-slot`"
                ),
                Ok(Ok(status)) if status.active => format!(
                    "does not read the slot: walsender pid {} reads `{slot}` (another relay, standing by until it stops)",
                    status.active_pid.unwrap_or_default()
                ),
                Ok(Ok(_)) => format!("does not read `{slot}` yet (starting)"),
                Ok(Err(why)) => why,
                Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
            };
            ("slot", Err(why))
        }
    }
}

impl Backlog {
    /// Sets the backlog gauges from the database. A topic that drained reports 0 rather than
    /// vanishing, so that alerts see the age fall. On failure the gauges keep their last values.
    async fn refresh(&self) {
        let mut seen = self.topics.lock().await;
        let now = match tokio::time::timeout(CHECK_TIMEOUT, self.status.status()).await {
            Ok(Ok(now)) => now,
            Ok(Err(error)) => {
                names::database_error("status");
                tracing::warn!(error = %outbox_core::relay::error_chain(&error), "reading the backlog for the metrics failed");
                return;
            }
            Err(_) => {
                names::database_error("status");
                tracing::warn!(
                    "reading the backlog for the metrics took longer than {CHECK_TIMEOUT:?}"
                );
                return;
            }
        };
        let mut drained = seen.clone();
        for topic in &now.backlog {
            drained.remove(&topic.topic);
            seen.insert(topic.topic.clone());
            gauge!(names::BACKLOG, "topic" => topic.topic.clone()).set(topic.messages as f64);
            gauge!(names::OLDEST_AGE, "topic" => topic.topic.clone())
                .set(topic.oldest_age.as_secs_f64());
        }
        for topic in drained {
            gauge!(names::BACKLOG, "topic" => topic.clone()).set(0.0);
            gauge!(names::OLDEST_AGE, "topic" => topic).set(0.0);
        }
        gauge!(names::DEAD_LETTERS).set(now.dead_letters as f64);
    }
}

async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(UPKEEP) => handle.run_upkeep(),
        }
    }
}

/// A client for the broker probe, with the producer's settings (brokers, security).
pub fn broker_probe(kafka: &ClientConfig) -> anyhow::Result<Arc<BaseProducer>> {
    let client = kafka
        .create()
        .context("creating the Kafka client for readiness checks")?;
    Ok(Arc::new(client))
}
