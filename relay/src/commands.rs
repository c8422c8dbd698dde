//! The subcommands.

use std::time::Duration;

use anyhow::Context;
use outbox_core::{CancellationToken, Relay, RelayConfig, RelayStats, RelayStore};
use outbox_kafka::KafkaPublisher;
use outbox_postgres::{PgRelayStore, PgStatus, PgWalStore};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::MigrateArgs;
use crate::settings::{Capture, Database, RunArgs, Settings, process_env, report};
use crate::{connect, observe};

/// `outbox-relay migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let database = Database::resolve(&args.database, &process_env)?;
    let pool = connect::database(&database, 1).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let applied = outbox_postgres::migrate(&mut conn, &database.tables)
        .await
        .context("migrating")?;
    if applied.is_empty() {
        println!("outbox schema is up to date");
    } else {
        println!("applied outbox migrations {applied:?}");
    }
    Ok(())
}

/// `outbox-relay run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // The signal handlers come first: a SIGTERM while the relay is still connecting is a clean stop
    // (exit status 0), not the default action that kills the process.
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(listen_for_signals()?, shutdown.clone()));
    tracing::info!("relay process started; SIGINT or SIGTERM stops it");

    let settings = Settings::resolve(&args, &process_env)?;
    let publisher = KafkaPublisher::new(&settings.kafka)
        .context("invalid Kafka producer settings")?
        .with_topic_route(settings.topic_route.clone());

    let connecting = async {
        let pool = connect::database(&settings.database, settings.pool_size).await?;
        connect::require_schema(&pool, &settings.database.tables).await?;
        publisher
            .check_reachable(settings.database.connect_timeout)
            .await
            .context("Kafka is not reachable")?;
        anyhow::Ok(pool)
    };
    let pool = tokio::select! {
        biased;
        () = shutdown.cancelled() => {
            tracing::info!("stopped while starting; nothing was claimed");
            return Ok(());
        }
        pool = connecting => pool?,
    };
    tracing::info!(
        brokers = %settings.brokers,
        lanes = settings.shown("relay.lanes"),
        batch_size = settings.shown("relay.batch_size"),
        topics = %settings.topic_route,
        "relay starting"
    );

    // The listener outlives the relay's shutdown, so that the drain stays observable.
    let listener_stop = CancellationToken::new();
    let observe = |ownership: observe::Ownership| async {
        if let Some(address) = settings.metrics_address {
            let probes = observe::Probes {
                pool: pool.clone(),
                broker: observe::broker_probe(&settings.kafka)?,
                ownership,
            };
            let status = PgStatus::new(pool.clone(), &settings.database.tables);
            observe::start(address, probes, status, listener_stop.clone()).await?;
        }
        anyhow::Ok(())
    };
    let stats = match settings.capture.clone() {
        Capture::Table => {
            let store = PgRelayStore::new(pool.clone(), settings.store.clone());
            store
                .check()
                .await
                .context("the database cannot give the relay its guarantees")?;
            observe(observe::Ownership::Lanes(store.owned_lane_count())).await?;
            relay(store, publisher, settings.relay.clone(), shutdown).await?
        }
        Capture::Wal(config) => {
            let store = PgWalStore::new(&pool, &settings.database.url, *config)
                .context("invalid WAL capture settings")?;
            let slot = store.slot().clone();
            store.check().await.with_context(|| {
                format!("the database cannot give WAL capture from slot `{slot}` its guarantees")
            })?;
            tracing::info!(%slot, "capturing from the WAL");
            observe(observe::Ownership::Slot {
                reading: store.reading(),
                slot,
                tables: settings.database.tables.clone(),
            })
            .await?;
            relay(store, publisher, settings.relay.clone(), shutdown).await?
        }
    };
    listener_stop.cancel();
    tracing::info!(
        published = stats.published,
        retried = stats.retried,
        dead_lettered = stats.dead_lettered,
        "relay finished"
    );
    pool.close().await;
    Ok(())
}

/// Runs the engine over `store` until `shutdown`.
async fn relay<S: RelayStore>(
    store: S,
    publisher: KafkaPublisher,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RelayStats> {
    let relay = Relay::new(store, publisher, config).context("invalid relay settings")?;
    Ok(relay.run(shutdown).await)
}

/// `outbox-relay config check`: resolves the settings as `run` would, without connecting, and
/// prints them.
pub fn config_check(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args, &process_env)?;
    KafkaPublisher::new(&settings.kafka).context("invalid Kafka producer settings")?;
    print!("{}", report::effective_lines(&settings.effective));
    println!("configuration is valid");
    Ok(())
}

/// `outbox-relay config table` (hidden): the table of every setting, as Markdown.
pub fn config_table() -> anyhow::Result<()> {
    print!("{}", report::markdown_table());
    Ok(())
}

/// SIGINT and SIGTERM, with their handlers installed by the time this returns.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

fn listen_for_signals() -> anyhow::Result<Signals> {
    Ok(Signals {
        interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
    })
}

async fn stop_on_signal(mut signals: Signals, shutdown: CancellationToken) {
    tokio::select! {
        _ = signals.interrupt.recv() => tracing::info!("SIGINT received; stopping"),
        _ = signals.terminate.recv() => tracing::info!("SIGTERM received; stopping"),
    }
    shutdown.cancel();
    // A second signal while draining is not awaited: the grace period bounds the stop.
    tokio::time::sleep(Duration::from_secs(3600)).await;
}
