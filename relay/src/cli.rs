//! The subcommands and their own flags. The settings' flags (with their environment variables and
//! config file keys) are generated from the table in [`crate::settings::table`]: each subcommand
//! flattens the [`SettingArgs`] of its scope.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::settings::{DatabaseScope, RunArgs, SettingArgs, WalScope};

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

/// Which slot a `wal` subcommand acts on (`--slot`), and the database.
#[derive(Debug, Args)]
pub struct WalSlotArgs {
    /// Database and slot settings.
    #[command(flatten)]
    pub settings: SettingArgs<WalScope>,
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
    pub database: SettingArgs<DatabaseScope>,

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
    pub database: SettingArgs<DatabaseScope>,

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
    pub database: SettingArgs<DatabaseScope>,

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
    pub database: SettingArgs<DatabaseScope>,

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

/// Flags of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: SettingArgs<DatabaseScope>,
}

/// The subcommands of `config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the settings `run` would use and print them, secrets redacted, with where each came from.
    Check(RunArgs),
    /// Print the table of every setting as Markdown (the one in docs/operations.md).
    #[command(hide = true)]
    Table,
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
    fn times_parse_or_explain() {
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
