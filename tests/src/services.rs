//! Where the services are: `DATABASE_URL`, `PGBOUNCER_URL` and `KAFKA_BROKERS`.
//!
//! With the `testcontainers` feature and a running Docker engine, unset variables are filled by
//! starting PostgreSQL and Kafka containers once per test binary.

use anyhow::bail;

const HOW: &str = "start the services with `scripts/services.sh` and export what it prints \
                   (or build the tests with `--features testcontainers` where Docker runs)";

/// The PostgreSQL URL the tests use.
pub fn database_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    #[cfg(feature = "testcontainers")]
    if let Some(url) = containers::get()?.database_url.clone() {
        return Ok(url);
    }
    bail!("DATABASE_URL is not set: {HOW}")
}

/// The URL of `database` through PgBouncer in transaction pooling mode (`PGBOUNCER_URL`, which
/// `scripts/services.sh` starts in front of the test server).
pub fn pgbouncer_url(database: &str) -> anyhow::Result<String> {
    let Ok(url) = std::env::var("PGBOUNCER_URL") else {
        bail!(
            "PGBOUNCER_URL is not set: start the services with `scripts/services.sh` and export what it prints"
        );
    };
    let mut url = url::Url::parse(&url)
        .map_err(|error| anyhow::anyhow!("PGBOUNCER_URL `{url}` is not a URL: {error}"))?;
    url.set_path(database);
    Ok(url.to_string())
}

/// The Kafka bootstrap servers the tests use.
pub fn brokers() -> anyhow::Result<String> {
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        return Ok(brokers);
    }
    #[cfg(feature = "testcontainers")]
    if let Some(brokers) = containers::get()?.brokers.clone() {
        return Ok(brokers);
    }
    bail!("KAFKA_BROKERS is not set: {HOW}")
}

#[cfg(feature = "testcontainers")]
mod containers {
    use std::sync::OnceLock;

    use anyhow::Context;
    use testcontainers_modules::kafka::apache::Kafka;
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{Container, ImageExt};

    pub struct Started {
        pub database_url: Option<String>,
        pub brokers: Option<String>,
        _postgres: Option<Container<Postgres>>,
        _kafka: Option<Container<Kafka>>,
    }

    static STARTED: OnceLock<Result<Started, String>> = OnceLock::new();

    pub fn get() -> anyhow::Result<&'static Started> {
        STARTED
            .get_or_init(|| start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("starting test containers failed: {e}"))
    }

    fn start() -> anyhow::Result<Started> {
        let (database_url, postgres) = if std::env::var("DATABASE_URL").is_err() {
            let container = Postgres::default()
                .with_tag("16-alpine")
                .start()
                .context("PostgreSQL container")?;
            let port = container.get_host_port_ipv4(5432)?;
            (
                Some(format!(
                    "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
                )),
                Some(container),
            )
        } else {
            (None, None)
        };
        let (brokers, kafka) = if std::env::var("KAFKA_BROKERS").is_err() {
            let container = Kafka::default().start().context("Kafka container")?;
            let port =
                container.get_host_port_ipv4(testcontainers_modules::kafka::apache::KAFKA_PORT)?;
            (Some(format!("127.0.0.1:{port}")), Some(container))
        } else {
            (None, None)
        };
        Ok(Started {
            database_url,
            brokers,
            _postgres: postgres,
            _kafka: kafka,
        })
    }
}
