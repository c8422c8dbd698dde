//! The benchmark's own database and topics on the services of `DATABASE_URL` and `KAFKA_BROKERS`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use outbox_kafka::ClientConfig;
use outbox_postgres::{PgWalStoreConfig, SlotName, Tables};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::Options;

/// The business table the writers insert into next to their messages.
const BUSINESS_TABLE: &str = "CREATE TABLE bench_orders (
    id           BIGSERIAL   PRIMARY KEY,
    customer     INTEGER     NOT NULL,
    amount_cents BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// A database of the benchmark's own (migrated, with a business table) and the broker's settings.
pub struct Bench {
    /// Pool on the benchmark database: writers, listeners, counters.
    pub pool: PgPool,
    /// Options of the benchmark database, for dedicated connections.
    pub connect: PgConnectOptions,
    /// Producer and admin settings: `bootstrap.servers` and the `-X` properties; the publisher adds
    /// its own defaults.
    pub kafka: ClientConfig,
    /// The engine settings every relay of the run starts with (batch size and poll interval are
    /// set per part).
    pub engine: outbox_core::RelayConfig,
    /// The benchmark database's URL, for the replication connection of WAL capture.
    pub url: String,
    /// The replication slot of WAL capture, named after the database (created by the WAL part).
    pub slot: SlotName,
    /// Messages a WAL relay reads ahead: twice the in-flight budget, as `outbox-relay run` sets it.
    pub wal_buffer: usize,
    /// Replicas of each topic created.
    replication: i32,
    /// The topics this run created, deleted at its end.
    topics: std::sync::Mutex<Vec<String>>,
    name: String,
    admin: PgConnectOptions,
}

impl Bench {
    /// Creates a fresh database `outbox_bench_<time>` and migrates it.
    ///
    /// # Errors
    /// When a service is missing or unreachable.
    pub async fn create(options: &Options) -> anyhow::Result<Self> {
        const HOW: &str = "start the services with `eval \"$(scripts/services.sh)\"`";
        let url = options
            .database_url
            .clone()
            .with_context(|| format!("DATABASE_URL is not set: {HOW}"))?;
        let brokers = options
            .brokers
            .clone()
            .with_context(|| format!("KAFKA_BROKERS is not set: {HOW}"))?;
        let admin =
            PgConnectOptions::from_str(&url).context("DATABASE_URL is not a PostgreSQL URL")?;
        let name = format!("outbox_bench_{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
        crate::slot::drop_stale(&admin).await;
        let mut conn = admin
            .connect()
            .await
            .with_context(|| format!("cannot connect to PostgreSQL: {HOW}"))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let connect = admin.clone().database(&name).disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .connect_with(connect.clone())
            .await?;
        outbox_postgres::migrate(&mut *pool.acquire().await?, &Tables::default()).await?;
        sqlx::raw_sql(BUSINESS_TABLE).execute(&pool).await?;
        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", &brokers);
        for (key, value) in options.producer_properties() {
            kafka.set(key, value);
        }
        crate::progress(format!("database {name} created; broker {brokers}"));
        let engine = outbox_core::RelayConfig::default()
            .window(options.window)?
            .max_in_flight(options.max_in_flight)?
            .phases(options.phases)?;
        Ok(Self {
            pool,
            connect,
            kafka,
            engine,
            url: with_database(&url, &name),
            slot: SlotName::new(&name)?,
            wal_buffer: options.max_in_flight.saturating_mul(2).clamp(1, 1_000_000),
            replication: options.replication_factor(),
            topics: std::sync::Mutex::new(Vec::new()),
            name,
            admin,
        })
    }

    /// The settings of a WAL relay's store: the benchmark's slot and read-ahead, everything else
    /// at the defaults `outbox-relay run --capture wal` uses (64 lanes, 25 s lease).
    ///
    /// # Errors
    /// When a setting is refused.
    pub fn wal_store(&self) -> anyhow::Result<PgWalStoreConfig> {
        Ok(PgWalStoreConfig::default()
            .slot(self.slot.clone())
            .buffer_messages(self.wal_buffer)?)
    }

    /// The benchmark database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Empties the outbox and the business table between runs.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn reset(&self) -> anyhow::Result<()> {
        sqlx::raw_sql("TRUNCATE outbox, outbox_dead_letters, bench_orders")
            .execute(&self.pool)
            .await?;
        sqlx::raw_sql("VACUUM ANALYZE outbox")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates a topic with a fresh name (names never repeat); [`Bench::clean_up`] deletes it.
    ///
    /// # Errors
    /// When the broker refuses or does not answer.
    pub async fn topic(&self, part: &str, partitions: i32) -> anyhow::Result<String> {
        let name = format!("bench-{part}-{}", uuid::Uuid::now_v7().simple());
        let admin: AdminClient<DefaultClientContext> = self.kafka.create()?;
        let results = admin
            .create_topics(
                [&NewTopic::new(
                    &name,
                    partitions,
                    TopicReplication::Fixed(self.replication),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .context("creating a topic failed; is the broker running?")?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic} failed: {code}");
            }
        }
        outbox_core::sync::lock(&self.topics).push(name.clone());
        Ok(name)
    }

    /// Deletes the topics of the run and drops its database (failures are only reported): a
    /// broker that kept every run's records would fill its disk.
    pub async fn clean_up(&self) {
        let topics = std::mem::take(&mut *outbox_core::sync::lock(&self.topics));
        if !topics.is_empty() {
            let deleted = async {
                let admin: AdminClient<DefaultClientContext> = self.kafka.create()?;
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                let results = admin
                    .delete_topics(
                        &names,
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                    )
                    .await?;
                anyhow::Ok(results.iter().filter(|result| result.is_ok()).count())
            };
            match deleted.await {
                Ok(count) => crate::progress(format!("{count} of {} topics deleted", topics.len())),
                Err(error) => {
                    crate::progress(format!("could not delete the run's topics: {error:#}"))
                }
            }
        }
        self.drop_database().await;
    }

    /// Drops the benchmark database and, first, any replication slot left in it (failures are only
    /// reported).
    async fn drop_database(&self) {
        match crate::slot::drop_all_in(&self.connect).await {
            Ok(slots) if !slots.is_empty() => {
                crate::progress(format!("replication slot(s) {} dropped", slots.join(", ")));
            }
            Ok(_) => {}
            Err(error) => crate::progress(format!(
                "could not drop the slots of {}: {error:#}",
                self.name
            )),
        }
        self.pool.close().await;
        let dropped = async {
            let mut conn = self.admin.connect().await?;
            sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await?;
            anyhow::Ok(())
        };
        match dropped.await {
            Ok(()) => crate::progress(format!("database {} dropped", self.name)),
            Err(error) => {
                crate::progress(format!("could not drop database {}: {error}", self.name))
            }
        }
    }
}

/// `url` with its database (the path) replaced by `database`; user, password, host, port and
/// parameters kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5433", "b"),
            "postgres://h:5433/b"
        );
    }
}
