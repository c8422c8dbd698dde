//! Command-line flags and environment variables.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

/// Publishes a PostgreSQL outbox to Kafka, at least once, in per-key order.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the outbox tables.
    Migrate(MigrateArgs),
    /// Relay messages from the outbox to Kafka until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Show the backlog per topic, the dead letters and the running relays.
    Status(StatusArgs),
    /// List, show, replay or purge dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Create, drop or inspect the replication slot of WAL capture (`run --capture wal`).
    #[command(subcommand)]
    Wal(WalCommand),
    /// Check a configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// The subcommands of `wal`.
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Create the slot (logical, pgoutput) and its publication, and register them with this
    /// outbox; idempotent. Run it before writers enqueue in WAL mode: WAL written before the slot
    /// exists is not captured.
    CreateSlot(WalSlotArgs),
    /// Drop the slot, its publication and its registration; refused while a relay reads it.
    DropSlot(WalSlotArgs),
    /// Show the slot: who reads it, the confirmed position, and the lag in bytes and seconds.
    Status(WalStatusArgs),
}

/// Which slot a `wal` subcommand acts on.
#[derive(Debug, Args)]
pub struct WalSlotArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The replication slot (its publication has the same name).
    #[arg(long, env = "OUTBOX_WAL_SLOT", default_value = "outbox")]
    pub slot: String,
}

/// Flags of `wal status`.
#[derive(Debug, Args)]
pub struct WalStatusArgs {
    /// The slot.
    #[command(flatten)]
    pub slot: WalSlotArgs,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The subcommands of `dead-letters`.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List the matching dead letters, oldest first.
    List(DeadLetterListArgs),
    /// Print one dead letter in full, headers and payload included.
    Show(DeadLetterShowArgs),
    /// Move the matching dead letters back into the outbox, in their original order.
    Replay(DeadLetterChangeArgs),
    /// Delete the matching dead letters for good.
    Purge(DeadLetterChangeArgs),
}

/// Which dead letters a subcommand applies to; all given criteria must match.
#[derive(Debug, Args)]
pub struct DeadLetterFilterArgs {
    /// Only this message id (repeatable).
    #[arg(long = "id", value_name = "UUID")]
    pub ids: Vec<Uuid>,

    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,

    /// Only this key (as UTF-8 text).
    #[arg(long)]
    pub key: Option<String>,

    /// Only errors containing this text (case-insensitive).
    #[arg(long = "error", value_name = "TEXT")]
    pub error: Option<String>,

    /// Only dead-lettered at or after this time (RFC 3339, e.g. 2024-05-01T12:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,

    /// Only dead-lettered before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,

    /// At most this many, oldest first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: Option<i64>,
}

impl DeadLetterFilterArgs {
    /// Whether no criterion is given (the filter matches every dead letter).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.topic.is_none()
            && self.key.is_none()
            && self.error.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.limit.is_none()
    }
}

/// Flags of `dead-letters list`.
#[derive(Debug, Args)]
pub struct DeadLetterListArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Which dead letters.
    #[command(flatten)]
    pub filter: DeadLetterFilterArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `dead-letters show`.
#[derive(Debug, Args)]
pub struct DeadLetterShowArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The message id.
    #[arg(long, value_name = "UUID")]
    pub id: Uuid,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `dead-letters replay` and `dead-letters purge`.
#[derive(Debug, Args)]
pub struct DeadLetterChangeArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Which dead letters.
    #[command(flatten)]
    pub filter: DeadLetterFilterArgs,

    /// Apply to every dead letter; required when no filter is given.
    #[arg(long)]
    pub all: bool,

    /// Print what would be affected and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// `replay` only: enqueue them again as logical messages with this prefix, for a relay that
    /// runs with `--capture wal`, instead of into the outbox table.
    #[arg(long, value_name = "PREFIX")]
    pub wal_prefix: Option<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the outbox lives.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Schema of the outbox tables.
    #[arg(long, env = "OUTBOX_SCHEMA", default_value = "public")]
    pub schema: String,

    /// Name of the outbox table.
    #[arg(long, env = "OUTBOX_TABLE", default_value = "outbox")]
    pub outbox_table: String,

    /// How long to keep trying to reach the database (and the brokers) at start-up before giving up.
    #[arg(long, env = "OUTBOX_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

/// Flags of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Flags of `run` and `config check`.
///
/// Each setting comes from its flag, else its environment variable, else the config file, else its
/// default (see [`crate::settings`], which parses and validates them all the same way).
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// TOML config file [env: OUTBOX_CONFIG]. Flags override environment variables, which override the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// PostgreSQL URL, e.g. postgres://user@host:5432/db [env: DATABASE_URL] [file: database.url]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,

    /// Connections in the relay's pool, besides its own session [env: OUTBOX_POOL_SIZE] [file: database.pool_size] [default: 2]
    #[arg(long, value_name = "N")]
    pub pool_size: Option<String>,

    /// Schema of the outbox tables [env: OUTBOX_SCHEMA] [file: database.schema] [default: public]
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,

    /// Name of the outbox table [env: OUTBOX_TABLE] [file: database.table] [default: outbox]
    #[arg(long, value_name = "NAME")]
    pub outbox_table: Option<String>,

    /// How long to keep trying to reach the database and the brokers at start-up [env: OUTBOX_CONNECT_TIMEOUT] [file: database.connect_timeout] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// Kafka bootstrap servers, comma-separated host:port [env: KAFKA_BROKERS] [file: kafka.brokers]
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,

    /// librdkafka producer property passed through, as key=value (repeatable) [file: [kafka.properties]]
    #[arg(short = 'X', long = "producer-property", value_name = "KEY=VALUE")]
    pub producer_properties: Vec<String>,

    /// Kafka topic of each message: `{topic}` is the message's topic, e.g. outbox.event.{topic} [env: OUTBOX_TOPIC_TEMPLATE] [file: kafka.topic_template] [default: {topic}]
    #[arg(long, value_name = "TEMPLATE")]
    pub topic_template: Option<String>,

    /// Most messages one claim takes over all of its lane windows, 1 to 100000 [env: OUTBOX_BATCH_SIZE] [file: relay.batch_size] [default: 500]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<String>,

    /// Most messages of one lane in flight at once, 1 to 100000 [env: OUTBOX_WINDOW] [file: relay.window] [default: 256]
    #[arg(long, value_name = "N")]
    pub window: Option<String>,

    /// Most messages handed to Kafka and not yet settled, over all lanes, 1 to 1000000 [env: OUTBOX_MAX_IN_FLIGHT] [file: relay.max_in_flight] [default: 2000]
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<String>,

    /// Longest sleep when idle without a wake-up, 1ms to 1h [env: OUTBOX_POLL_INTERVAL] [file: relay.poll_interval] [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub poll_interval: Option<String>,

    /// Number of lanes, the unit of ordering and ownership: a power of two up to 1024, the same for every relay [env: OUTBOX_LANES] [file: relay.lanes] [default: 64]
    #[arg(long, value_name = "N")]
    pub lanes: Option<String>,

    /// How long a relay that stopped answering keeps its lanes before another takes them over, at least 1s; sends must fit in a fifth of it [env: OUTBOX_LEASE] [file: relay.lease] [default: 25s]
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,

    /// Keep published messages this long (for audit and replay) instead of deleting them once acknowledged, or `off` [env: OUTBOX_RETENTION] [file: relay.retention] [default: off]
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,

    /// On shutdown, how long the in-flight batch may take before it is abandoned (and published again later) [env: OUTBOX_SHUTDOWN_GRACE] [file: relay.shutdown_grace] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub shutdown_grace: Option<String>,

    /// Publish attempts before a failing message becomes a dead letter; broker outages do not count [env: OUTBOX_MAX_ATTEMPTS] [file: retry.max_attempts] [default: 10]
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<String>,

    /// Backoff after the first failed attempt; it doubles up to the longest backoff [env: OUTBOX_INITIAL_BACKOFF] [file: retry.initial_backoff] [default: 200ms]
    #[arg(long, value_name = "DURATION")]
    pub initial_backoff: Option<String>,

    /// Longest backoff between attempts [env: OUTBOX_MAX_BACKOFF] [file: retry.max_backoff] [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub max_backoff: Option<String>,

    /// Where messages are read: `table` (the outbox table) or `wal` (logical decoding messages written by `PgOutbox::wal`, from a replication slot) [env: OUTBOX_CAPTURE] [file: relay.capture] [default: table]
    #[arg(long, value_name = "MODE")]
    pub capture: Option<String>,

    /// With --capture wal: the replication slot to read, created beforehand with `outbox-relay wal create-slot` [env: OUTBOX_WAL_SLOT] [file: wal.slot] [default: outbox]
    #[arg(long, value_name = "NAME")]
    pub wal_slot: Option<String>,

    /// With --capture wal: the prefix of the logical messages to publish; others are skipped [env: OUTBOX_WAL_PREFIX] [file: wal.prefix] [default: outbox]
    #[arg(long, value_name = "PREFIX")]
    pub wal_prefix: Option<String>,

    /// Where to serve /metrics, /healthz and /readyz, e.g. 0.0.0.0:9464, or `off` [env: OUTBOX_METRICS_ADDRESS] [file: metrics.address] [default: off]
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_address: Option<String>,
}

/// The subcommands of `config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the settings `run` would use and print them, secrets redacted, with where each came from.
    Check(RunArgs),
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 2s or 1m: {e}"))
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time like 2024-05-01T12:00:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse_or_explain() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").expect_err("bad").contains("500ms"));
        assert!(parse_time("2024-05-01T12:00:00Z").is_ok());
        assert!(
            parse_time("yesterday")
                .expect_err("bad")
                .contains("RFC 3339")
        );
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
