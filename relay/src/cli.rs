//! Command-line flags and environment variables.

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

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,

    /// librdkafka producer property passed through, as key=value (repeatable).
    #[arg(short = 'X', long = "producer-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub producer_properties: Vec<(String, String)>,

    /// Most messages claimed and published in one pass (1 to 100000).
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// Longest sleep when idle without a wake-up (1ms to 1h).
    #[arg(long, env = "OUTBOX_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Number of lanes, the unit of ordering and ownership (a power of two up to 1024; the same for every relay).
    #[arg(long, env = "OUTBOX_LANES", default_value_t = 64)]
    pub lanes: u32,

    /// How long a relay that stopped answering keeps its lanes before another relay takes them over (at least 1s).
    #[arg(long, env = "OUTBOX_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,

    /// Keep published messages this long (for audit and replay) instead of deleting them once acknowledged; the relay purges older ones. Off by default.
    #[arg(long, env = "OUTBOX_RETENTION", value_parser = parse_retention)]
    pub retention: Option<Duration>,

    /// Publish attempts before a retriable failure becomes a dead letter (broker outages do not count).
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,

    /// Backoff after the first failed attempt; it doubles up to --max-backoff.
    #[arg(long, env = "OUTBOX_INITIAL_BACKOFF", default_value = "200ms", value_parser = parse_duration)]
    pub initial_backoff: Duration,

    /// Longest backoff between attempts.
    #[arg(long, env = "OUTBOX_MAX_BACKOFF", default_value = "60s", value_parser = parse_duration)]
    pub max_backoff: Duration,

    /// On shutdown, how long the in-flight batch may take before it is abandoned (and published again later).
    #[arg(long, env = "OUTBOX_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Connections in the relay's pool (the relay's own session comes on top).
    #[arg(long, env = "OUTBOX_POOL_SIZE", default_value_t = 2)]
    pub pool_size: u32,
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

fn parse_retention(text: &str) -> Result<Duration, String> {
    let retention = parse_duration(text)?;
    if retention.is_zero() {
        return Err(
            "a retention of 0 keeps nothing; leave --retention / OUTBOX_RETENTION unset to delete published messages".into(),
        );
    }
    Ok(retention)
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_properties_parse_or_explain() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").expect_err("bad").contains("500ms"));
        assert_eq!(
            parse_property("linger.ms=0"),
            Ok(("linger.ms".into(), "0".into()))
        );
        assert!(parse_property("=x").is_err());
        assert!(parse_property("novalue").is_err());
    }

    #[test]
    fn a_retention_of_zero_is_refused_naming_the_setting() {
        assert_eq!(
            parse_retention("7days"),
            Ok(Duration::from_secs(7 * 24 * 3600))
        );
        for zero in ["0s", "0ms"] {
            let error = parse_retention(zero).expect_err("zero");
            assert!(error.contains("--retention / OUTBOX_RETENTION"), "{error}");
        }
        assert!(parse_retention("soon").expect_err("bad").contains("500ms"));

        let run = |extra: &[&str]| {
            let base = [
                "outbox-relay",
                "run",
                "--database-url",
                "postgres://db",
                "--brokers",
                "k:9092",
            ];
            Cli::try_parse_from(base.iter().chain(extra))
        };
        let Command::Run(args) = run(&[]).expect("valid").command else {
            panic!("not run");
        };
        assert_eq!(args.retention, None, "off by default");
        let Command::Run(args) = run(&["--retention", "36h"]).expect("valid").command else {
            panic!("not run");
        };
        assert_eq!(args.retention, Some(Duration::from_secs(36 * 3600)));
        let error = run(&["--retention", "0s"]).expect_err("zero").to_string();
        assert!(error.contains("--retention"), "{error}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
