//! The subcommands.

use std::time::Duration;

use anyhow::Context;
use outbox_core::{CancellationToken, Relay, RelayConfig, RetryPolicy};
use outbox_kafka::{ClientConfig, KafkaPublisher};
use outbox_postgres::{PgRelayStore, PgRelayStoreConfig};

use crate::cli::{MigrateArgs, RunArgs};
use crate::connect;

/// `outbox-relay migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let tables = connect::tables(&args.database)?;
    let pool = connect::database(&args.database, 1).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let applied = outbox_postgres::migrate(&mut conn, &tables)
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
    let tables = connect::tables(&args.database)?;
    let retry = RetryPolicy::default()
        .max_attempts(args.max_attempts)
        .context("invalid --max-attempts / OUTBOX_MAX_ATTEMPTS")?
        .backoff(args.initial_backoff, args.max_backoff)
        .context("invalid --initial-backoff / --max-backoff")?;
    let config = RelayConfig::default()
        .batch_size(args.batch_size)
        .context("invalid --batch-size / OUTBOX_BATCH_SIZE")?
        .poll_interval(args.poll_interval)
        .context("invalid --poll-interval / OUTBOX_POLL_INTERVAL")?
        .retry(retry)
        .shutdown_grace(args.shutdown_grace);
    let store_config = PgRelayStoreConfig::default()
        .tables(tables.clone())
        .lanes(args.lanes)
        .context("invalid --lanes / OUTBOX_LANES")?
        .lease(args.lease)
        .context("invalid --lease / OUTBOX_LEASE")?
        .retention(args.retention)
        .context("invalid --retention / OUTBOX_RETENTION")?;
    if args.brokers.trim().is_empty() {
        anyhow::bail!("--brokers / KAFKA_BROKERS is empty");
    }
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &args.brokers);
    for (key, value) in &args.producer_properties {
        kafka.set(key, value);
    }
    send_timeout_within_lease(&mut kafka, args.lease)?;
    let publisher = KafkaPublisher::new(&kafka).context("invalid Kafka producer settings")?;

    let pool = connect::database(&args.database, args.pool_size).await?;
    connect::require_schema(&pool, &tables).await?;
    publisher
        .check_reachable(args.database.connect_timeout)
        .await
        .context("Kafka is not reachable")?;
    tracing::info!(brokers = %args.brokers, lanes = args.lanes, batch_size = args.batch_size, "relay starting");

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let relay = Relay::new(
        PgRelayStore::new(pool.clone(), store_config),
        publisher,
        config,
    );
    let stats = relay.run(shutdown).await;
    drop(relay);
    tracing::info!(
        published = stats.published,
        retried = stats.retried,
        dead_lettered = stats.dead_lettered,
        "relay finished"
    );
    pool.close().await;
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
        () = terminate => tracing::info!("SIGTERM received; stopping"),
    }
    shutdown.cancel();
    // A second signal while draining is not awaited: the grace period bounds the stop.
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// A message must be delivered or given up well within the lease; otherwise a relay resumed after
/// its lease could still send what it queued before it was paused. Sets `message.timeout.ms` to half
/// the lease (at most 5 s) unless given, and refuses a given value that is not below 4/5 of the lease.
fn send_timeout_within_lease(kafka: &mut ClientConfig, lease: Duration) -> anyhow::Result<()> {
    let limit = lease - lease / 5;
    for key in ["message.timeout.ms", "delivery.timeout.ms"] {
        if let Some(value) = kafka.get(key) {
            let millis: u64 = value.parse().with_context(|| {
                format!("invalid -X {key}={value}: not a number of milliseconds")
            })?;
            if Duration::from_millis(millis) >= limit || millis == 0 {
                anyhow::bail!(
                    "invalid -X {key}={value}: must be between 1 and {} ms (4/5 of --lease {lease:?}) so that a paused relay cannot send after losing its lanes",
                    limit.as_millis() - 1
                );
            }
            return Ok(());
        }
    }
    let timeout = (lease / 2).min(Duration::from_secs(5));
    kafka.set("message.timeout.ms", timeout.as_millis().to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_timeout_defaults_inside_the_lease_and_longer_ones_are_refused() {
        let mut kafka = ClientConfig::new();
        send_timeout_within_lease(&mut kafka, Duration::from_secs(10)).expect("default");
        assert_eq!(kafka.get("message.timeout.ms"), Some("5000"));
        let mut kafka = ClientConfig::new();
        send_timeout_within_lease(&mut kafka, Duration::from_secs(2)).expect("default");
        assert_eq!(kafka.get("message.timeout.ms"), Some("1000"));
        let mut kafka = ClientConfig::new();
        kafka.set("message.timeout.ms", "300000");
        let error =
            send_timeout_within_lease(&mut kafka, Duration::from_secs(10)).expect_err("too long");
        assert!(
            error.to_string().contains("message.timeout.ms=300000"),
            "{error}"
        );
        let mut kafka = ClientConfig::new();
        kafka.set("delivery.timeout.ms", "soon");
        assert!(send_timeout_within_lease(&mut kafka, Duration::from_secs(10)).is_err());
    }
}
