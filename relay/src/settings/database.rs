//! The settings every subcommand uses: where the outbox lives and how long to try reaching it.

use std::time::Duration;

use outbox_postgres::{SlotName, Tables};

use super::layers::{Layers, SettingError};
use super::scope::{DatabaseScope, SettingArgs, WalScope};
use super::table::{CONNECT_TIMEOUT, DATABASE_URL, OUTBOX_TABLE, SCHEMA, WAL_SLOT};

/// The database and its tables, validated. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct Database {
    /// The PostgreSQL URL (with its password: redact it before showing it).
    pub url: String,
    /// The outbox's tables.
    pub tables: Tables,
    /// How long to keep trying to reach the database at start-up.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &crate::connect::redact(&self.url))
            .field("tables", &self.tables)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Database {
    /// Takes the database settings from `layers`.
    ///
    /// # Errors
    /// The first setting missing or invalid.
    pub fn from_layers(layers: &mut Layers<'_>) -> Result<Self, SettingError> {
        let url = layers.value(&DATABASE_URL)?;
        let schema = layers.value(&SCHEMA)?;
        let outbox_table = layers.value(&OUTBOX_TABLE)?;
        let tables = Tables::default()
            .schema(&schema)
            .and_then(|tables| tables.outbox(&outbox_table))
            .map_err(|e| SettingError::Conflict(e.to_string()))?;
        let connect_timeout = layers.value(&CONNECT_TIMEOUT)?;
        Ok(Self {
            url,
            tables,
            connect_timeout,
        })
    }

    /// The database settings of `migrate`, `status` and `dead-letters`.
    ///
    /// # Errors
    /// The config file cannot be used, or a setting is missing or invalid.
    pub fn resolve(
        args: &SettingArgs<DatabaseScope>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingError> {
        Self::from_layers(&mut Layers::new(args, env)?)
    }
}

/// The settings of the `wal` subcommands: the database and the replication slot.
#[derive(Debug, Clone)]
pub struct WalSlot {
    /// The database.
    pub database: Database,
    /// The slot.
    pub slot: SlotName,
}

impl WalSlot {
    /// Resolves them.
    ///
    /// # Errors
    /// The config file cannot be used, or a setting is missing or invalid.
    pub fn resolve(
        args: &SettingArgs<WalScope>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingError> {
        let mut layers = Layers::new(args, env)?;
        let database = Database::from_layers(&mut layers)?;
        let slot = layers.value(&WAL_SLOT)?;
        Ok(Self { database, slot })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, WalCommand};
    use crate::settings::Origin;
    use crate::settings::tests::config_file;

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// The database settings of `outbox-relay ARGV...` (a `migrate` or `status`).
    fn database(argv: &[&str], env: &[(&str, &str)]) -> Result<Database, SettingError> {
        let cli =
            Cli::try_parse_from(std::iter::once(&"outbox-relay").chain(argv)).expect("parses");
        let args = match cli.command {
            Command::Migrate(args) => args.database,
            Command::Status(args) => args.database,
            other => panic!("not migrate or status: {other:?}"),
        };
        let env = env_of(env);
        Database::resolve(&args, &|name| env.get(name).cloned())
    }

    fn wal_slot(argv: &[&str], env: &[(&str, &str)]) -> Result<WalSlot, SettingError> {
        let cli = Cli::try_parse_from(["outbox-relay", "wal"].iter().chain(argv)).expect("parses");
        let args = match cli.command {
            Command::Wal(WalCommand::CreateSlot(args) | WalCommand::DropSlot(args)) => args,
            Command::Wal(WalCommand::Status(args)) => args.slot,
            other => panic!("not wal: {other:?}"),
        };
        let env = env_of(env);
        WalSlot::resolve(&args.settings, &|name| env.get(name).cloned())
    }

    /// A file that `run` also reads: its Kafka and relay settings are no error for `status`.
    const FILE: &str = "[database]\nurl = \"postgres://file@db/app\"\nschema = \"relay\"\n\
                        table = \"events\"\nconnect_timeout = \"3s\"\n\
                        [kafka]\nbrokers = \"k:9092\"\n[relay]\nlanes = 16\n[wal]\nslot = \"from_file\"\n";

    #[test]
    fn status_and_migrate_take_the_database_from_the_config_file() {
        let file = config_file(FILE);
        let path = file.path().to_str().expect("utf-8 path");
        for command in ["status", "migrate"] {
            let database = database(&[command, "--config", path], &[]).expect("valid");
            assert_eq!(database.url, "postgres://file@db/app", "{command}");
            assert_eq!(database.tables.outbox_table(), "\"relay\".\"events\"");
            assert_eq!(database.connect_timeout, Duration::from_secs(3));
        }
        let database = database(&["status"], &[("OUTBOX_CONFIG", path)]).expect("valid");
        assert_eq!(
            database.url, "postgres://file@db/app",
            "the file from OUTBOX_CONFIG"
        );
    }

    #[test]
    fn for_admin_commands_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default()
     {
        let file =
            config_file("[database]\nurl = \"postgres://file@db/app\"\nschema = \"from_file\"\n");
        let path = file.path().to_str().expect("utf-8 path");
        let database = database(
            &["status", "--config", path, "--outbox-table", "from_flag"],
            &[("OUTBOX_TABLE", "from_env"), ("OUTBOX_SCHEMA", "from_env")],
        )
        .expect("valid");
        assert_eq!(
            database.tables.outbox_table(),
            "\"from_env\".\"from_flag\"",
            "flag over env (table), env over file (schema)"
        );
        assert_eq!(database.url, "postgres://file@db/app", "file over nothing");
        assert_eq!(database.connect_timeout, Duration::from_secs(30), "default");

        let file = config_file(FILE);
        let path = file.path().to_str().expect("utf-8 path");
        let slot = wal_slot(&["status", "--config", path], &[]).expect("valid");
        assert_eq!(slot.slot.as_str(), "from_file");
        let slot = wal_slot(
            &["create-slot", "--config", path],
            &[("OUTBOX_WAL_SLOT", "env")],
        )
        .expect("valid");
        assert_eq!(slot.slot.as_str(), "env");
        let slot = wal_slot(
            &["drop-slot", "--config", path, "--slot", "flag"],
            &[("OUTBOX_WAL_SLOT", "env")],
        )
        .expect("valid");
        assert_eq!(slot.slot.as_str(), "flag");
        assert_eq!(slot.database.url, "postgres://file@db/app");
    }

    #[test]
    fn a_bad_value_in_the_file_names_the_key_the_file_and_what_is_allowed() {
        let file =
            config_file("[database]\nurl = \"postgres://db/app\"\nconnect_timeout = \"2h\"\n");
        let path = file.path().to_str().expect("utf-8 path");
        let error = database(&["status", "--config", path], &[])
            .expect_err("too long")
            .to_string();
        assert_eq!(
            error,
            format!(
                "invalid database.connect_timeout `2h` in the config file {path}: must be a duration from 1ms to 1h, like 500ms, 10s or 2m"
            )
        );
        let file = config_file("[wal]\nslot = \"Bad-Slot\"\n");
        let path = file.path().to_str().expect("utf-8 path");
        let error = wal_slot(
            &[
                "status",
                "--config",
                path,
                "--database-url",
                "postgres://db/app",
            ],
            &[],
        )
        .expect_err("bad slot")
        .to_string();
        assert!(
            error.contains("invalid wal.slot `Bad-Slot` in the config file"),
            "{error}"
        );
        assert!(error.contains(path), "{error}");
        let error = wal_slot(
            &["status", "--slot", "Bad", "--database-url", "postgres://db"],
            &[],
        )
        .expect_err("bad slot")
        .to_string();
        assert!(
            error.starts_with("invalid --slot `Bad`"),
            "named as given: {error}"
        );
    }

    #[test]
    fn a_missing_database_url_says_every_way_to_give_it() {
        let error = database(&["migrate"], &[]).expect_err("no url").to_string();
        for part in [
            "database.url is required",
            "--database-url",
            "DATABASE_URL",
            "config file",
        ] {
            assert!(error.contains(part), "{error}");
        }
        let database = database(&["migrate"], &[("DATABASE_URL", "postgres://env/app")])
            .expect("from the environment");
        assert_eq!(database.url, "postgres://env/app");
    }

    #[test]
    fn admin_flags_are_named_as_the_subcommand_names_them() {
        let file = config_file("");
        let path = file.path().to_str().expect("utf-8 path");
        let mut layers_args = crate::settings::SettingArgs::<WalScope>::default();
        layers_args.config = Some(path.into());
        layers_args.given.push(("wal.slot", "given".into()));
        layers_args
            .given
            .push(("database.url", "postgres://db".into()));
        let mut layers = Layers::new(&layers_args, &|_| None).expect("file");
        assert_eq!(layers.value(&WAL_SLOT).expect("valid").as_str(), "given");
        assert_eq!(layers.origin("wal.slot"), Origin::Flag("--slot"));
    }
}
