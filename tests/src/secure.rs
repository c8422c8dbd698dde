//! The services with security on, as `scripts/services.sh` starts them: PostgreSQL over TLS with
//! SCRAM passwords for the roles of the group `outbox_tls_scram`, and the Kafka node's SASL_SSL
//! listener (SCRAM-SHA-512, ACLs) with the principals `outbox-relay` and `outbox-consumer`.
//!
//! [`SecuredDb`] is a database of a test's own, owned by a migration role of its own, with a
//! writer, a relay and a consumer role that may log in only over TLS with their passwords.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use outbox_kafka::ClientConfig;
use outbox_postgres::{Role, Tables};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

use crate::services;

const HOW: &str = "start the services with `scripts/services.sh` and export what it prints";

/// The group whose members log in only over TLS with a SCRAM password (`pg_hba.conf`).
pub const SECURED_GROUP: &str = "outbox_tls_scram";

/// The Kafka principal of the relay, allowed to write the topics named `secure.*`.
pub const RELAY_PRINCIPAL: &str = "outbox-relay";
/// The Kafka principal of consumers, allowed to read `secure.*` in groups `secure.*` and to write
/// `secure-dead-letters.*`.
pub const CONSUMER_PRINCIPAL: &str = "outbox-consumer";
/// Topics the relay principal may write.
pub const ALLOWED_TOPICS: &str = "secure.";
/// Topics no principal but the super user may touch.
pub const FORBIDDEN_TOPICS: &str = "forbidden.";

/// Where the secured services are and what they trust.
#[derive(Clone)]
pub struct SecureServices {
    /// The CA that signed the services' certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing the services use.
    pub other_ca: PathBuf,
    /// The SASL_SSL listener.
    pub brokers: String,
    passwords: HashMap<String, String>,
}

impl std::fmt::Debug for SecureServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureServices")
            .field("ca", &self.ca)
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

fn variable(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: {HOW}"))
}

impl SecureServices {
    /// Reads `OUTBOX_TLS_CA`, `OUTBOX_TLS_OTHER_CA`, `KAFKA_SECURE_BROKERS` and the SCRAM passwords
    /// from the file `KAFKA_SCRAM_PASSWORDS` names.
    pub fn from_env() -> anyhow::Result<Self> {
        let file = variable("KAFKA_SCRAM_PASSWORDS")?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading the SCRAM passwords in {file}: {HOW}"))?;
        let passwords = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(user, password)| (user.to_owned(), password.to_owned()))
            .collect();
        Ok(Self {
            ca: variable("OUTBOX_TLS_CA")?.into(),
            other_ca: variable("OUTBOX_TLS_OTHER_CA")?.into(),
            brokers: variable("KAFKA_SECURE_BROKERS")?,
            passwords,
        })
    }

    /// The SCRAM password of `principal`.
    pub fn kafka_password(&self, principal: &str) -> anyhow::Result<&str> {
        self.passwords
            .get(principal)
            .map(String::as_str)
            .with_context(|| format!("no SCRAM password for {principal} in KAFKA_SCRAM_PASSWORDS"))
    }

    /// The client properties of `principal` on the SASL_SSL listener, trusting `ca`, as `-X`
    /// `KEY=VALUE` pairs, with the password left out: give it as `sasl.password`.
    pub fn kafka_properties(&self, principal: &str, ca: &Path) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", principal),
            ("ssl.ca.location", &ca.display().to_string()),
        ]
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
    }

    /// A client configuration of `principal` on the SASL_SSL listener, password included.
    pub fn kafka_client(&self, principal: &str) -> anyhow::Result<ClientConfig> {
        let mut config = crate::kafka_config_for(&self.brokers);
        for (key, value) in self.kafka_properties(principal, &self.ca) {
            config.set(key, value);
        }
        config.set("sasl.password", self.kafka_password(principal)?);
        Ok(config)
    }
}

/// A login role of a [`SecuredDb`].
#[derive(Clone)]
pub struct Login {
    /// The role's name.
    pub name: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A database of the test's own whose outbox tables belong to a migration role, with a writer, a
/// relay and a consumer role (see `outbox_postgres::Role`), each a member of
/// [`SECURED_GROUP`]. Dropped, with its roles, when the value is dropped.
pub struct SecuredDb {
    /// The database's name.
    pub name: String,
    /// Owns the database and migrates it (and may create replication slots).
    pub migrator: Login,
    /// Enqueues.
    pub writer: Login,
    /// Relays (and may read a replication slot).
    pub relay: Login,
    /// Consumes through the inbox.
    pub consumer: Login,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    admin: PgConnectOptions,
}

impl SecuredDb {
    /// Creates the roles and the database (owned by the migration role); the tables are not
    /// migrated yet.
    pub async fn create(services: &SecureServices) -> anyhow::Result<Self> {
        let base = services::database_url()?;
        let admin =
            PgConnectOptions::from_str(&base).context("DATABASE_URL is not a PostgreSQL URL")?;
        let name = format!("outbox_sec_{}", &Uuid::now_v7().simple().to_string()[20..]);
        let login = |role: &str| Login {
            name: format!("{name}_{role}"),
            password: Uuid::now_v7().simple().to_string(),
        };
        let db = Self {
            migrator: login("migrator"),
            writer: login("writer"),
            relay: login("relay"),
            consumer: login("consumer"),
            name,
            ca: services.ca.clone(),
            admin,
        };
        let mut conn = db.admin.connect().await.with_context(|| {
            format!("cannot connect to PostgreSQL at DATABASE_URL ({base}): {HOW}")
        })?;
        let group_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(SECURED_GROUP)
                .fetch_one(&mut conn)
                .await?;
        if !group_exists {
            bail!("the role {SECURED_GROUP} does not exist: {HOW}");
        }
        for (login, attributes) in [
            (&db.migrator, "REPLICATION"),
            (&db.writer, ""),
            (&db.relay, "REPLICATION"),
            (&db.consumer, ""),
        ] {
            sqlx::raw_sql(&format!(
                "CREATE ROLE {} LOGIN {attributes} PASSWORD '{}' IN ROLE {SECURED_GROUP}",
                login.name, login.password
            ))
            .execute(&mut conn)
            .await?;
        }
        sqlx::raw_sql(&format!(
            "CREATE DATABASE {} OWNER {}",
            db.name, db.migrator.name
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(db)
    }

    /// The URL of this database as `login`, TLS verified against `ca` (`verify-full`).
    pub fn url_as(&self, login: &Login, ca: &Path) -> String {
        let mut url = url::Url::parse("postgres://127.0.0.1:5432/").expect("a fixed URL");
        url.set_path(&self.name);
        let _ = url.set_username(&login.name);
        let _ = url.set_password(Some(&login.password));
        url.query_pairs_mut()
            .append_pair("sslmode", "verify-full")
            .append_pair("sslrootcert", &ca.display().to_string());
        url.to_string()
    }

    /// [`Self::url_as`] with the services' CA.
    pub fn url(&self, login: &Login) -> String {
        self.url_as(login, &self.ca)
    }

    /// A pool on this database as `login`, over verified TLS.
    pub async fn pool(&self, login: &Login) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url(login))
            .await
            .with_context(|| format!("connecting as {} over TLS", login.name))
    }

    /// Runs the grants of every role, as the migration role (which owns the migrated tables).
    pub async fn grant(&self, tables: &Tables) -> anyhow::Result<()> {
        let pool = self.pool(&self.migrator).await?;
        for (role, login) in [
            (Role::Writer, &self.writer),
            (Role::Relay, &self.relay),
            (Role::Consumer, &self.consumer),
        ] {
            sqlx::raw_sql(&tables.grants(role, &login.name)?)
                .execute(&pool)
                .await
                .with_context(|| format!("granting {role:?} to {}", login.name))?;
        }
        pool.close().await;
        Ok(())
    }
}

impl Drop for SecuredDb {
    fn drop(&mut self) {
        let roles = [&self.writer, &self.relay, &self.consumer, &self.migrator]
            .map(|login| format!("DROP ROLE IF EXISTS {}", login.name))
            .to_vec();
        crate::drop_database(&self.admin, &self.name, roles);
    }
}
