//! Support for the end-to-end tests: services, fresh databases and topics, reading a topic back,
//! running the relay in-process or as a child process.
//!
//! Services come from `DATABASE_URL` and `KAFKA_BROKERS` (`scripts/services.sh` starts both and
//! prints them). A missing service fails the test with a message saying how to start it; nothing is
//! skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use outbox_core::{CancellationToken, Relay, RelayConfig, RelayStats};
use outbox_kafka::{ClientConfig, KafkaPublisher};
use outbox_postgres::{PgRelayStore, PgRelayStoreConfig, Tables};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub mod consumers;
pub mod keyed;
pub mod private;
pub mod secure;
pub mod services;
pub mod wal;

/// Installs a log subscriber once (controlled by `RUST_LOG`, quiet by default).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A database of its own for one test, migrated, dropped when the value is dropped.
pub struct TestDb {
    /// A pool on the test database.
    pub pool: PgPool,
    /// The URL of the test database (for child processes).
    pub url: String,
    /// The test database's name.
    pub name: String,
    admin: PgConnectOptions,
}

impl TestDb {
    /// Creates a fresh database and applies the outbox migrations.
    pub async fn create() -> anyhow::Result<Self> {
        let base = services::database_url()?;
        let admin =
            PgConnectOptions::from_str(&base).context("DATABASE_URL is not a PostgreSQL URL")?;
        let name = format!("outbox_e2e_{}", Uuid::now_v7().simple());
        let mut conn = admin
            .connect()
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at DATABASE_URL ({base}); start it with scripts/services.sh"))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let options = admin.clone().database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        outbox_postgres::migrate(&mut *pool.acquire().await?, &Tables::default()).await?;
        Ok(Self {
            pool,
            url,
            name,
            admin,
        })
    }

    /// Enqueues `messages` in one transaction of their own and commits it.
    pub async fn enqueue_committed(&self, messages: &[outbox_core::Message]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        outbox_postgres::PgOutbox::new()
            .enqueue_all(&mut tx, messages)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Messages still in the outbox.
    pub async fn outbox_count(&self) -> anyhow::Result<i64> {
        keyed::outbox_count(&self.pool).await
    }

    /// Messages in the dead-letter table.
    pub async fn dead_letter_count(&self) -> anyhow::Result<i64> {
        keyed::dead_letter_count(&self.pool).await
    }

    /// Waits until at most `left` messages wait in the outbox; returns how many do.
    pub async fn wait_until_backlog_at_most(
        &self,
        left: i64,
        within: Duration,
    ) -> anyhow::Result<i64> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let count = self.outbox_count().await?;
            if count <= left {
                return Ok(count);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the backlog is still {count} after {within:?} (waiting for {left})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the outbox is empty.
    pub async fn wait_until_drained(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.outbox_count().await?;
            if left == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("outbox still holds {left} messages after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Not `pool.close()` first: the pool's connections belong to the test's runtime, which
        // waits for the dropping thread; closing one over TLS waits for the server's goodbye,
        // which that runtime would have to read. The forced drop ends the sessions instead.
        drop_database(&self.admin, &self.name, Vec::new());
    }
}

/// Drops database `name` (its replication slots first, its sessions forced out), then runs each
/// of `then` (e.g. `DROP ROLE`), connected with `admin`. Runs on a thread and runtime of its own,
/// so that it works from any `Drop`, inside a runtime or not; errors are ignored.
pub(crate) fn drop_database(admin: &PgConnectOptions, name: &str, then: Vec<String>) {
    let admin = admin.clone();
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let Ok(mut conn) = admin.connect().await else {
                return;
            };
            drop_replication_slots(&mut conn, &name).await;
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
            for statement in then {
                let _ = sqlx::raw_sql(&statement).execute(&mut conn).await;
            }
        });
    })
    .join();
}

/// Drops the replication slots of database `name` (a database with one cannot be dropped), ending
/// their readers first.
async fn drop_replication_slots(conn: &mut PgConnection, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _ = sqlx::query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE database = $1 AND active_pid IS NOT NULL",
        )
        .bind(name)
        .execute(&mut *conn)
        .await;
        let _ = sqlx::query(
            "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
             WHERE database = $1 AND NOT active",
        )
        .bind(name)
        .execute(&mut *conn)
        .await;
        let left: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE database = $1")
                .bind(name)
                .fetch_one(&mut *conn)
                .await;
        if matches!(left, Ok(0)) || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kafka client settings for the test broker.
pub fn kafka_config() -> anyhow::Result<ClientConfig> {
    Ok(kafka_config_for(&services::brokers()?))
}

/// Kafka client settings for the brokers at `brokers` (e.g. a [`private::PrivateBroker`]).
pub fn kafka_config_for(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// What most end-to-end tests start from: logs on, a database of the test's own, a fresh topic.
pub struct Fixture {
    /// The test's database (dropped with it).
    pub db: TestDb,
    /// A topic no other test uses.
    pub topic: String,
}

impl Fixture {
    /// A fresh database and a fresh topic of `partitions` partitions.
    pub async fn new(partitions: i32) -> anyhow::Result<Self> {
        init_logs();
        Ok(Self {
            db: TestDb::create().await?,
            topic: create_topic(partitions).await?,
        })
    }
}

/// Creates a topic with a fresh random name, so that tests never see each other's records.
pub async fn create_topic(partitions: i32) -> anyhow::Result<String> {
    create_topic_on(&services::brokers()?, partitions).await
}

/// Creates a topic with a fresh random name on the brokers at `brokers`.
pub async fn create_topic_on(brokers: &str, partitions: i32) -> anyhow::Result<String> {
    create_topic_configured(brokers, partitions, &[]).await
}

/// Creates a topic with a fresh random name and the given topic settings on the brokers at
/// `brokers`.
pub async fn create_topic_configured(
    brokers: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> anyhow::Result<String> {
    create_topic_named(brokers, "e2e-", partitions, settings).await
}

/// Creates a topic named `prefix` and a fresh random suffix, with the given topic settings, on the
/// brokers at `brokers` (whose plaintext listener allows it).
pub async fn create_topic_named(
    brokers: &str,
    prefix: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> anyhow::Result<String> {
    let name = format!("{prefix}{}", Uuid::now_v7().simple());
    let admin: AdminClient<DefaultClientContext> = kafka_config_for(brokers).create()?;
    // Replication -1: the broker's default (1 on the single node, 3 on the three-node cluster).
    let mut topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(-1));
    for (key, value) in settings {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("creating a topic failed; is the broker at {brokers} running? (KAFKA_BROKERS: scripts/services.sh)"))?;
    for result in results {
        if let Err((topic, code)) = result {
            bail!("creating topic {topic} failed: {code}");
        }
    }
    Ok(name)
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers as text.
    pub headers: BTreeMap<String, String>,
    /// The record's timestamp, milliseconds since the epoch (CreateTime unless the topic says
    /// LogAppendTime).
    pub timestamp: Option<i64>,
}

impl Record {
    /// The `ce_id` header.
    pub fn id(&self) -> Option<Uuid> {
        self.headers
            .get("ce_id")
            .and_then(|id| Uuid::parse_str(id).ok())
    }
}

/// Reads `topic` from the beginning of every partition until `expected` records arrived, or until no
/// new record came for `idle` (then returns what it has: callers assert on the count).
pub async fn read_topic(
    topic: &str,
    expected: usize,
    idle: Duration,
) -> anyhow::Result<Vec<Record>> {
    read_topic_from(&services::brokers()?, topic, expected, idle).await
}

/// [`read_topic`] from the brokers at `brokers`.
pub async fn read_topic_from(
    brokers: &str,
    topic: &str,
    expected: usize,
    idle: Duration,
) -> anyhow::Result<Vec<Record>> {
    let topic = topic.to_owned();
    let config = kafka_config_for(brokers);
    tokio::task::spawn_blocking(move || read_topic_blocking(&config, &topic, expected, idle))
        .await?
}

fn read_topic_blocking(
    config: &ClientConfig,
    topic: &str,
    expected: usize,
    idle: Duration,
) -> anyhow::Result<Vec<Record>> {
    let mut config = config.clone();
    config
        .set("group.id", format!("reader-{}", Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .context("topic not in metadata")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::with_capacity(expected.min(100_000));
    let mut last = std::time::Instant::now();
    while records.len() < expected && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last = std::time::Instant::now();
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                    timestamp: message.timestamp().to_millis(),
                });
            }
            // A broker that restarts or moves leadership makes the client report connection
            // errors while it reconnects; they end nothing but the idle wait.
            Some(Err(error)) if is_transport_error(&error) => {
                tracing::debug!(%error, topic, "reading the topic: the client reconnects");
            }
            Some(Err(error)) => bail!("reading {topic} failed: {error}"),
            None => {}
        }
    }
    Ok(records)
}

/// Whether a consumer error says only that a connection to a broker failed (the client retries).
fn is_transport_error(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve)
    )
}

/// A relay running in this process over the test database and broker.
pub struct InProcessRelay {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<RelayStats>,
}

impl InProcessRelay {
    /// Starts a relay with `config`, the test broker and the default store settings.
    pub fn start(db: &TestDb, config: RelayConfig) -> anyhow::Result<Self> {
        Self::start_with(db, config, &kafka_config()?, PgRelayStoreConfig::default())
    }

    /// Starts a relay with the given producer and store settings.
    pub fn start_with(
        db: &TestDb,
        config: RelayConfig,
        kafka: &ClientConfig,
        store: PgRelayStoreConfig,
    ) -> anyhow::Result<Self> {
        let publisher = KafkaPublisher::new(kafka)?;
        let store = PgRelayStore::new(db.pool.clone(), store);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let relay = Relay::new(store, publisher, config)?;
        let task = tokio::spawn(async move { relay.run(token).await });
        Ok(Self { shutdown, task })
    }

    /// Stops it and returns its counters.
    pub async fn stop(self) -> anyhow::Result<RelayStats> {
        self.shutdown.cancel();
        Ok(tokio::time::timeout(Duration::from_secs(30), self.task).await??)
    }
}

/// A program under test as a child process, its stderr in a log file. Its log level is
/// `OUTBOX_LOG` if set in the test's environment, else info. Killed when dropped.
pub struct ChildProgram {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// What it is, for messages (`relay`, `consumer`).
    what: &'static str,
}

impl ChildProgram {
    /// Starts `program` with `args`; its log is named after `what`.
    pub fn spawn(program: &Path, args: &[&str], what: &'static str) -> anyhow::Result<Self> {
        Self::spawn_with_env(program, args, &[], what)
    }

    /// [`Self::spawn`] with the variables `env` added to its environment.
    pub fn spawn_with_env(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        what: &'static str,
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{what}-{}.log", Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log)?;
        let level = std::env::var("OUTBOX_LOG").unwrap_or_else(|_| "info".to_owned());
        let child = Command::new(program)
            .args(args)
            .env("OUTBOX_LOG", level)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {what} program"))?;
        Ok(Self { child, log, what })
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits up to `within` for it to exit.
    pub async fn terminate(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("the {} already exited", self.what))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(tokio::time::timeout(within, self.child.wait()).await??)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process is still running (`Ok(Some(status))` once it exited).
    pub fn exit_status(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

/// What the relay program logs once SIGINT and SIGTERM stop it cleanly.
pub const SIGNALS_INSTALLED: &str = "relay process started; SIGINT or SIGTERM stops it";

/// The relay program (`run`) as a child process; [`ChildProgram`] for the rest.
pub struct RelayProcess(ChildProgram);

impl std::ops::Deref for RelayProcess {
    type Target = ChildProgram;

    fn deref(&self) -> &ChildProgram {
        &self.0
    }
}

impl std::ops::DerefMut for RelayProcess {
    fn deref_mut(&mut self) -> &mut ChildProgram {
        &mut self.0
    }
}

impl RelayProcess {
    /// Starts `program run` (the relay program) on `db` with extra flags.
    pub fn spawn(program: &Path, db: &TestDb, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with(program, &db.url, &services::brokers()?, extra)
    }

    /// Starts `program run` against the database at `database_url` and the brokers at `brokers`
    /// with extra flags.
    pub fn spawn_with(
        program: &Path,
        database_url: &str,
        brokers: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_with_env(program, database_url, brokers, extra, &[])
    }

    /// [`Self::spawn_with`] with the variables `env` added to the relay's environment.
    pub fn spawn_with_env(
        program: &Path,
        database_url: &str,
        brokers: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut args = vec!["run", "--database-url", database_url, "--brokers", brokers];
        args.extend_from_slice(extra);
        Ok(Self(ChildProgram::spawn_with_env(
            program, &args, env, "relay",
        )?))
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(self) -> anyhow::Result<()> {
        self.0.kill().await
    }

    /// SIGTERM, then waits for a clean exit. The signal is sent once the relay logged that its
    /// handlers are installed (a SIGTERM an instant after `exec`, before any code of the relay ran,
    /// would take the default action, as for any program).
    pub async fn terminate(self) -> anyhow::Result<std::process::ExitStatus> {
        self.wait_for_log(SIGNALS_INSTALLED, Duration::from_secs(30))
            .await?;
        self.0.terminate(Duration::from_secs(30)).await
    }

    /// Waits until the relay's log contains `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> anyhow::Result<()> {
        self.wait_for_log_line(text, within).await.map(drop)
    }

    /// Waits until the relay logged a line containing `text`; returns that line, without its
    /// terminal colours.
    async fn wait_for_log_line(&self, text: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(log) = std::fs::read_to_string(&self.0.log)
                && let Some(line) = log.lines().find(|line| line.contains(text))
            {
                return Ok(without_colours(line));
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the relay did not log `{text}` within {within:?}; its log ({}):\n{}",
                    self.0.log.display(),
                    private::log_tail(&self.0.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address the relay's `/metrics`, `/healthz` and `/readyz` listen on, once they do.
    /// Start the relay with `--metrics-address` [`ANY_PORT`], so that no other program can take
    /// its port between a choice and the bind.
    pub async fn metrics_address(&self) -> anyhow::Result<String> {
        let line = self
            .wait_for_log_line(METRICS_LISTENING, Duration::from_secs(60))
            .await?;
        line.rsplit_once("address=")
            .map(|(_, address)| address.trim().to_owned())
            .with_context(|| format!("no address in the relay's log line `{line}`"))
    }

    /// Waits until `/readyz` at `address` answers `status`; returns the body. Fails with the
    /// relay's log and the last answer when it does not within `within`.
    pub async fn wait_for_readiness(
        &self,
        address: &str,
        status: u16,
        within: Duration,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let answer = http_get(address, "/readyz").await;
            match &answer {
                Ok((got, body)) if *got == status => return Ok(body.clone()),
                _ if tokio::time::Instant::now() > deadline => bail!(
                    "/readyz at {address} did not answer {status} within {within:?}; the last answer: {answer:?}; the relay's log ({}):\n{}",
                    self.0.log.display(),
                    private::log_tail(&self.0.log, 30)
                ),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// `--metrics-address` on a port the system chooses; [`RelayProcess::metrics_address`] tells which.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// What the relay logs once its listener is bound, followed by `address=`.
const METRICS_LISTENING: &str = "serving /metrics, /healthz and /readyz";

/// `text` (a program's log) without the escape sequences of terminal colours.
pub fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An SGR sequence: ESC [ parameters m.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Runs the relay program to completion with `args` and without the services' variables; returns
/// its exit status and stderr.
pub async fn run_relay_program(
    program: &Path,
    args: &[&str],
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let (status, _stdout, stderr) = run_relay_program_output(program, args).await?;
    Ok((status, stderr))
}

/// Runs the relay program to completion like [`run_relay_program`]; returns its exit status,
/// stdout and stderr.
pub async fn run_relay_program_output(
    program: &Path,
    args: &[&str],
) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
    run_relay_program_with_env(program, args, &[]).await
}

/// [`run_relay_program_output`] with the variables `env` added to the program's environment.
pub async fn run_relay_program_with_env(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .envs(env.iter().copied());
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Opens a plain connection to the test database (outside its pool).
pub async fn connect(db: &TestDb) -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&db.url).await?)
}

/// `GET path` from an HTTP/1.1 server at `address` (host:port); returns the status code and body.
/// Enough for the relay's own endpoints, which answer with a plain body and close when asked.
pub async fn http_get(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{address}{path} took over 10 s"))??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: not an HTTP response: {response}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The payload of a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..size), rest.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        body = after.trim_start_matches("\r\n");
    }
    out
}
