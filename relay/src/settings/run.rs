//! Everything `outbox-relay run` (and `config check`) needs, built from the table's values into the
//! libraries' validated configurations.

use std::net::SocketAddr;

use outbox_core::{RelayConfig, RetryPolicy};
use outbox_kafka::{ClientConfig, TopicRoute};
use outbox_postgres::{PgRelayStoreConfig, PgWalStoreConfig};

use super::database::Database;
use super::kafka;
use super::layers::{Effective, Layers, SettingError};
use super::scope::{RunScope, SettingArgs};
use super::table::{
    BATCH_SIZE, BROKERS, CAPTURE, INITIAL_BACKOFF, LANES, LEASE, MAX_ATTEMPTS, MAX_BACKOFF,
    MAX_IN_FLIGHT, METRICS_ADDRESS, POLL_INTERVAL, POOL_SIZE, RETENTION, SHUTDOWN_GRACE,
    TOPIC_TEMPLATE, WAL_PREFIX, WAL_SLOT, WINDOW,
};
use super::values::CaptureMode;

/// The flags of `run` and `config check`.
pub type RunArgs = SettingArgs<RunScope>;

/// Everything `run` needs, validated. Its `Debug` shows the values as `config check` does, secrets
/// redacted.
pub struct Settings {
    /// The database and its tables.
    pub database: Database,
    /// Connections in the relay's pool.
    pub pool_size: u32,
    /// The producer's configuration: brokers, pass-through properties, the send timeout.
    pub kafka: ClientConfig,
    /// The bootstrap servers.
    pub brokers: String,
    /// Which Kafka topic each message goes to.
    pub topic_route: TopicRoute,
    /// The engine's settings.
    pub relay: RelayConfig,
    /// The PostgreSQL store's settings.
    pub store: PgRelayStoreConfig,
    /// Where messages are read: the outbox table, or the WAL through a replication slot.
    pub capture: Capture,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub metrics_address: Option<SocketAddr>,
    /// What was used and where it came from.
    pub effective: Vec<Effective>,
}

/// Where the relay reads messages.
#[derive(Debug, Clone)]
pub enum Capture {
    /// The outbox table (the relay store's settings apply).
    Table,
    /// Logical decoding messages, from this replication slot.
    Wal(Box<PgWalStoreConfig>),
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut settings = f.debug_map();
        for effective in &self.effective {
            settings.entry(&effective.key, &effective.shown);
        }
        settings.finish()
    }
}

impl Settings {
    /// How the value of the setting `key` (`relay.lanes`) is shown, secrets redacted; empty for a
    /// key that is not a setting.
    pub fn shown(&self, key: &str) -> &str {
        self.effective
            .iter()
            .find(|effective| effective.key == key)
            .map_or("", |effective| effective.shown.as_str())
    }

    /// Resolves the settings of `run` from `args`, the environment as `env` reports it, and the
    /// config file named by `--config` or `OUTBOX_CONFIG`.
    ///
    /// # Errors
    /// The config file cannot be used, a setting is missing or invalid, or two do not go together.
    pub fn resolve(
        args: &RunArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingError> {
        Self::from_layers(Layers::new(args, env)?, args)
    }

    /// Resolves the settings of `run` from `layers`, made of `args` (whose `-X` properties it
    /// reads).
    ///
    /// # Errors
    /// A setting is missing or invalid, or two do not go together.
    pub(crate) fn from_layers(
        mut layers: Layers<'_>,
        args: &RunArgs,
    ) -> Result<Self, SettingError> {
        let r = &mut layers;
        let database = Database::from_layers(r)?;
        let pool_size = r.value(&POOL_SIZE)?;
        let brokers = r.value(&BROKERS)?;
        let topic_route = r.value(&TOPIC_TEMPLATE)?;
        let batch_size = r.value(&BATCH_SIZE)?;
        let window = r.value(&WINDOW)?;
        let max_in_flight = r.value(&MAX_IN_FLIGHT)?;
        let poll_interval = r.value(&POLL_INTERVAL)?;
        let lanes = r.value(&LANES)?;
        let lease = r.value(&LEASE)?;
        let retention = r.value(&RETENTION)?;
        let shutdown_grace = r.value(&SHUTDOWN_GRACE)?;
        let max_attempts = r.value(&MAX_ATTEMPTS)?;
        let initial_backoff = r.value(&INITIAL_BACKOFF)?;
        let max_backoff = r.value(&MAX_BACKOFF)?;
        let capture = r.value(&CAPTURE)?;
        let wal_slot = r.value(&WAL_SLOT)?;
        let wal_prefix = r.value(&WAL_PREFIX)?;
        let metrics_address = r.value(&METRICS_ADDRESS)?;

        // The builders check each value again; a refusal names the setting and what it allows.
        let retry = RetryPolicy::default()
            .max_attempts(max_attempts)
            .map_err(|_| r.refused(&MAX_ATTEMPTS.spec))?
            .backoff(initial_backoff, max_backoff)
            .map_err(|_| {
                r.conflict(
                    &[&INITIAL_BACKOFF.spec, &MAX_BACKOFF.spec],
                    "the initial backoff must not exceed the longest one",
                )
            })?;
        let relay = RelayConfig::default()
            .batch_size(batch_size)
            .map_err(|_| r.refused(&BATCH_SIZE.spec))?
            .window(window)
            .map_err(|_| r.refused(&WINDOW.spec))?
            .max_in_flight(max_in_flight)
            .map_err(|_| r.refused(&MAX_IN_FLIGHT.spec))?
            .poll_interval(poll_interval)
            .map_err(|_| r.refused(&POLL_INTERVAL.spec))?
            .retry(retry)
            .shutdown_grace(shutdown_grace);
        let store = PgRelayStoreConfig::default()
            .tables(database.tables.clone())
            .lanes(lanes)
            .map_err(|_| r.refused(&LANES.spec))?
            .lease(lease)
            .map_err(|_| r.refused(&LEASE.spec))?
            .retention(retention)
            .map_err(|_| r.refused(&RETENTION.spec))?;
        let capture = match capture {
            CaptureMode::Table => Capture::Table,
            CaptureMode::Wal => Capture::Wal(Box::new(
                PgWalStoreConfig::default()
                    .tables(database.tables.clone())
                    .slot(wal_slot)
                    .prefix(wal_prefix)
                    .and_then(|wal| wal.lanes(lanes))
                    .and_then(|wal| wal.lease(lease))
                    .and_then(|wal| {
                        wal.buffer_messages(max_in_flight.saturating_mul(2).min(1_000_000))
                    })
                    .map_err(|e| SettingError::Conflict(e.to_string()))?,
            )),
        };

        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &brokers);
        kafka::producer_properties(r, &args.producer_properties, &mut client)?;
        kafka::send_timeout_within_lease(r, &mut client, lease)?;

        Ok(Self {
            database,
            pool_size,
            kafka: client,
            brokers,
            topic_route,
            relay,
            store,
            capture,
            metrics_address,
            effective: layers.into_effective(),
        })
    }
}
