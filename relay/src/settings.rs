//! The settings of `outbox-relay run`, resolved from flags, environment variables, an optional TOML
//! file and defaults, in that order of precedence.
//!
//! Every setting has one name in each source (`--lanes`, `OUTBOX_LANES`, `relay.lanes`), one parser
//! and one validation, so an invalid value gets the same explanation wherever it came from, naming
//! the source, the value and what is allowed. [`Settings::effective`] keeps what was used and where
//! it came from, for `outbox-relay config check`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use outbox_core::{RelayConfig, RetryPolicy};
use outbox_kafka::{ClientConfig, TopicRoute};
use outbox_postgres::{PgRelayStoreConfig, PgWalStoreConfig, SlotName, Tables};

use crate::cli::{DatabaseArgs, RunArgs};
use crate::config_file::{ConfigFile, FileError, PROPERTIES_TABLE};
use crate::connect::redact;

/// One setting's names in each source and its default (as text, parsed like any other value).
#[derive(Debug)]
pub struct Spec {
    /// Its name in the config file, `table.key`.
    pub key: &'static str,
    /// Its flag.
    pub flag: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// Its default, or `None` when it must be given.
    pub default: Option<&'static str>,
}

macro_rules! specs {
    ($($name:ident: $key:literal, $flag:literal, $env:literal, $default:expr;)*) => {
        $(
            #[doc = concat!("`", $key, "`")]
            pub const $name: Spec = Spec { key: $key, flag: $flag, env: $env, default: $default };
        )*
        /// Every setting, in the order `config check` prints them.
        pub const ALL: &[&Spec] = &[$(&$name),*];
    };
}

specs! {
    DATABASE_URL: "database.url", "--database-url", "DATABASE_URL", None;
    POOL_SIZE: "database.pool_size", "--pool-size", "OUTBOX_POOL_SIZE", Some("2");
    SCHEMA: "database.schema", "--schema", "OUTBOX_SCHEMA", Some("public");
    OUTBOX_TABLE: "database.table", "--outbox-table", "OUTBOX_TABLE", Some("outbox");
    CONNECT_TIMEOUT: "database.connect_timeout", "--connect-timeout", "OUTBOX_CONNECT_TIMEOUT", Some("30s");
    BROKERS: "kafka.brokers", "--brokers", "KAFKA_BROKERS", None;
    TOPIC_TEMPLATE: "kafka.topic_template", "--topic-template", "OUTBOX_TOPIC_TEMPLATE", Some("{topic}");
    BATCH_SIZE: "relay.batch_size", "--batch-size", "OUTBOX_BATCH_SIZE", Some("500");
    WINDOW: "relay.window", "--window", "OUTBOX_WINDOW", Some("256");
    MAX_IN_FLIGHT: "relay.max_in_flight", "--max-in-flight", "OUTBOX_MAX_IN_FLIGHT", Some("2000");
    POLL_INTERVAL: "relay.poll_interval", "--poll-interval", "OUTBOX_POLL_INTERVAL", Some("1s");
    LANES: "relay.lanes", "--lanes", "OUTBOX_LANES", Some("64");
    LEASE: "relay.lease", "--lease", "OUTBOX_LEASE", Some("25s");
    RETENTION: "relay.retention", "--retention", "OUTBOX_RETENTION", Some("off");
    SHUTDOWN_GRACE: "relay.shutdown_grace", "--shutdown-grace", "OUTBOX_SHUTDOWN_GRACE", Some("10s");
    MAX_ATTEMPTS: "retry.max_attempts", "--max-attempts", "OUTBOX_MAX_ATTEMPTS", Some("10");
    INITIAL_BACKOFF: "retry.initial_backoff", "--initial-backoff", "OUTBOX_INITIAL_BACKOFF", Some("200ms");
    MAX_BACKOFF: "retry.max_backoff", "--max-backoff", "OUTBOX_MAX_BACKOFF", Some("60s");
    CAPTURE: "relay.capture", "--capture", "OUTBOX_CAPTURE", Some("table");
    WAL_SLOT: "wal.slot", "--wal-slot", "OUTBOX_WAL_SLOT", Some("outbox");
    WAL_PREFIX: "wal.prefix", "--wal-prefix", "OUTBOX_WAL_PREFIX", Some("outbox");
    METRICS_ADDRESS: "metrics.address", "--metrics-address", "OUTBOX_METRICS_ADDRESS", Some("off");
}

/// The environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "OUTBOX_CONFIG";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// The config file, under this key.
    File(PathBuf, String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => f.write_str(flag),
            Origin::Env(name) => f.write_str(name),
            Origin::File(path, key) => write!(f, "{key} in {}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A value that was used, shown with secrets redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The setting's file name (`relay.lanes`, `kafka.properties.linger.ms`).
    pub key: String,
    /// The value, secrets redacted.
    pub shown: String,
    /// Where it came from.
    pub origin: Origin,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// The config file cannot be used.
    #[error(transparent)]
    File(#[from] FileError),
    /// A required setting has no value in any source.
    #[error("{key} is required: give {flag}, set {env} or put `{key}` in the config file")]
    Missing {
        /// The file key.
        key: &'static str,
        /// The flag.
        flag: &'static str,
        /// The environment variable.
        env: &'static str,
    },
    /// A value is invalid.
    #[error("invalid {setting} `{shown}`{from}: {allowed}")]
    Invalid {
        /// How the setting was named where the value came from.
        setting: String,
        /// The value, secrets redacted.
        shown: String,
        /// Where it came from, when not obvious from the name.
        from: String,
        /// What is wrong and what is allowed.
        allowed: String,
    },
    /// Two values that are each valid do not go together.
    #[error("{0}")]
    Conflict(String),
}

/// Everything `run` needs, validated.
#[derive(Debug)]
pub struct Settings {
    /// The database and its tables.
    pub database: DatabaseArgs,
    /// The validated table names.
    pub tables: Tables,
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

/// Resolves the settings of `run` from `args`, the environment as `env` reports it, and the config
/// file named by `--config` or `OUTBOX_CONFIG`.
pub fn resolve(
    args: &RunArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, SettingError> {
    let file_path = args
        .config
        .clone()
        .or_else(|| env(CONFIG_ENV).map(PathBuf::from));
    let known: Vec<&str> = ALL.iter().map(|spec| spec.key).collect();
    let file = file_path
        .map(|path| ConfigFile::load(&path, &known))
        .transpose()?;
    Resolver {
        env,
        file,
        effective: Vec::new(),
    }
    .resolve(args)
}

struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<ConfigFile>,
    effective: Vec<Effective>,
}

impl Resolver<'_> {
    fn resolve(mut self, args: &RunArgs) -> Result<Settings, SettingError> {
        let database_url = self.get(&DATABASE_URL, args.database_url.as_deref(), |text| {
            if text.trim().is_empty() {
                return Err("must not be empty; e.g. postgres://user@host:5432/db".into());
            }
            url::Url::parse(text)
                .ok()
                .filter(|url| matches!(url.scheme(), "postgres" | "postgresql"))
                .map(|_| text.to_owned())
                .ok_or_else(|| {
                    "must be a postgres:// URL, e.g. postgres://user@host:5432/db".into()
                })
        })?;
        let pool_size = self.get(&POOL_SIZE, args.pool_size.as_deref(), |text| {
            number_in(text, 1, 100)
        })?;
        let schema = self.get(&SCHEMA, args.schema.as_deref(), |text| {
            Tables::default()
                .schema(text)
                .map(|_| text.to_owned())
                .map_err(|e| e.to_string())
        })?;
        let outbox_table = self.get(&OUTBOX_TABLE, args.outbox_table.as_deref(), |text| {
            Tables::default()
                .outbox(text)
                .map(|_| text.to_owned())
                .map_err(|e| e.to_string())
        })?;
        let tables = Tables::default()
            .schema(&schema)
            .and_then(|tables| tables.outbox(&outbox_table))
            .map_err(|e| SettingError::Conflict(e.to_string()))?;
        let connect_timeout =
            self.get(&CONNECT_TIMEOUT, args.connect_timeout.as_deref(), |text| {
                duration_in(text, Duration::from_millis(1), Duration::from_secs(3600))
            })?;

        let brokers = self.get(&BROKERS, args.brokers.as_deref(), |text| {
            if text.split(',').all(|broker| broker.trim().contains(':')) {
                Ok(text.to_owned())
            } else {
                Err("must be a comma-separated list of host:port".into())
            }
        })?;
        let topic_route = self.get(&TOPIC_TEMPLATE, args.topic_template.as_deref(), |text| {
            TopicRoute::parse(text).map_err(|e| e.to_string())
        })?;

        let batch_size = self.get(&BATCH_SIZE, args.batch_size.as_deref(), |text| {
            let size = number_in(text, 1, 100_000)?;
            Ok(size as usize)
        })?;
        let window = self.get(&WINDOW, args.window.as_deref(), |text| {
            Ok(number_in(text, 1, 100_000)? as usize)
        })?;
        let max_in_flight = self.get(&MAX_IN_FLIGHT, args.max_in_flight.as_deref(), |text| {
            Ok(number_in(text, 1, 1_000_000)? as usize)
        })?;
        let poll_interval = self.get(&POLL_INTERVAL, args.poll_interval.as_deref(), |text| {
            duration_in(text, Duration::from_millis(1), Duration::from_secs(3600))
        })?;
        let lanes = self.get(&LANES, args.lanes.as_deref(), |text| {
            let lanes = number_in(text, 1, outbox_core::lane::SLOTS)?;
            PgRelayStoreConfig::default()
                .lanes(lanes)
                .map(|_| lanes)
                .map_err(|_| {
                    format!(
                        "must be a power of two from 1 to {} (the same for every relay)",
                        outbox_core::lane::SLOTS
                    )
                })
        })?;
        let lease = self.get(&LEASE, args.lease.as_deref(), |text| {
            duration_in(text, Duration::from_secs(1), Duration::from_secs(3600))
        })?;
        let retention = self.get(&RETENTION, args.retention.as_deref(), |text| {
            if text == "off" {
                return Ok(None);
            }
            duration_in(
                text,
                Duration::from_millis(1),
                Duration::from_secs(100 * 365 * 86_400),
            )
            .map(Some)
            .map_err(|e| format!("{e}; or `off` to delete published messages"))
        })?;
        let shutdown_grace = self.get(&SHUTDOWN_GRACE, args.shutdown_grace.as_deref(), |text| {
            duration_in(text, Duration::ZERO, Duration::from_secs(3600))
        })?;

        let max_attempts = self.get(&MAX_ATTEMPTS, args.max_attempts.as_deref(), |text| {
            number_in(text, 1, 1000)
        })?;
        let initial_backoff =
            self.get(&INITIAL_BACKOFF, args.initial_backoff.as_deref(), |text| {
                duration_in(text, Duration::from_millis(1), Duration::from_secs(86_400))
            })?;
        let max_backoff = self.get(&MAX_BACKOFF, args.max_backoff.as_deref(), |text| {
            duration_in(text, Duration::from_millis(1), Duration::from_secs(86_400))
        })?;
        let capture = self.get(&CAPTURE, args.capture.as_deref(), |text| match text {
            "table" => Ok(false),
            "wal" => Ok(true),
            _ => Err("must be `table` (read the outbox table) or `wal` (read logical decoding messages from a replication slot)".into()),
        })?;
        let wal_slot = self.get(&WAL_SLOT, args.wal_slot.as_deref(), |text| {
            SlotName::new(text).map_err(|e| e.to_string())
        })?;
        let wal_prefix = self.get(&WAL_PREFIX, args.wal_prefix.as_deref(), |text| {
            PgWalStoreConfig::default()
                .prefix(text)
                .map(|_| text.to_owned())
                .map_err(|e| e.to_string())
        })?;
        let metrics_address = self.get(&METRICS_ADDRESS, args.metrics_address.as_deref(), |text| {
            if text == "off" {
                return Ok(None);
            }
            text.parse::<SocketAddr>().map(Some).map_err(|_| {
                "must be `off` or an address to listen on such as 0.0.0.0:9464 or 127.0.0.1:9464".into()
            })
        })?;

        let retry = RetryPolicy::default()
            .max_attempts(max_attempts)
            .and_then(|retry| retry.backoff(initial_backoff, max_backoff))
            .map_err(|_| {
                self.conflict(
                    &[&INITIAL_BACKOFF, &MAX_BACKOFF],
                    "the initial backoff must not exceed the longest one",
                )
            })?;
        let relay = RelayConfig::default()
            .batch_size(batch_size)
            .and_then(|relay| relay.window(window))
            .and_then(|relay| relay.max_in_flight(max_in_flight))
            .and_then(|relay| relay.poll_interval(poll_interval))
            .map_err(|e| SettingError::Conflict(e.to_string()))?
            .retry(retry)
            .shutdown_grace(shutdown_grace);
        let store = PgRelayStoreConfig::default()
            .tables(tables.clone())
            .lanes(lanes)
            .and_then(|store| store.lease(lease))
            .and_then(|store| store.retention(retention))
            .map_err(|e| SettingError::Conflict(e.to_string()))?;

        let capture = if capture {
            Capture::Wal(Box::new(
                PgWalStoreConfig::default()
                    .tables(tables.clone())
                    .slot(wal_slot)
                    .prefix(wal_prefix)
                    .and_then(|wal| wal.lanes(lanes))
                    .and_then(|wal| wal.lease(lease))
                    .and_then(|wal| {
                        wal.buffer_messages(max_in_flight.saturating_mul(2).min(1_000_000))
                    })
                    .map_err(|e| SettingError::Conflict(e.to_string()))?,
            ))
        } else {
            Capture::Table
        };

        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", &brokers);
        self.producer_properties(args, &mut kafka)?;
        self.send_timeout_within_lease(&mut kafka, lease)?;

        Ok(Settings {
            database: DatabaseArgs {
                database_url,
                schema,
                outbox_table,
                connect_timeout,
            },
            tables,
            pool_size,
            kafka,
            brokers,
            topic_route,
            relay,
            capture,
            store,
            metrics_address,
            effective: self.effective,
        })
    }

    /// The value of `spec`: the flag, else the environment variable, else the file, else the
    /// default; parsed by `parse`, whose error says what is allowed.
    fn get<T>(
        &mut self,
        spec: &'static Spec,
        flag: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, SettingError> {
        let (text, origin) = if let Some(text) = flag {
            (text.to_owned(), Origin::Flag(spec.flag))
        } else if let Some(text) = (self.env)(spec.env) {
            (text, Origin::Env(spec.env))
        } else if let Some((text, path)) = self
            .file
            .as_ref()
            .and_then(|file| Some((file.values.get(spec.key)?.clone(), file.path.clone())))
        {
            (text, Origin::File(path, spec.key.to_owned()))
        } else if let Some(default) = spec.default {
            (default.to_owned(), Origin::Default)
        } else {
            return Err(SettingError::Missing {
                key: spec.key,
                flag: spec.flag,
                env: spec.env,
            });
        };
        let shown = shown(spec.key, &text);
        let value =
            parse(text.trim()).map_err(|allowed| invalid(&origin, spec.key, &shown, allowed))?;
        self.effective.push(Effective {
            key: spec.key.to_owned(),
            shown,
            origin,
        });
        Ok(value)
    }

    /// Pass-through producer properties: each one from `-X`, else the file.
    fn producer_properties(
        &mut self,
        args: &RunArgs,
        kafka: &mut ClientConfig,
    ) -> Result<(), SettingError> {
        let mut properties: Vec<(String, String, Origin)> = Vec::new();
        if let Some(file) = &self.file {
            for (name, value) in &file.properties {
                let key = format!("{PROPERTIES_TABLE}.{name}");
                properties.push((
                    name.clone(),
                    value.clone(),
                    Origin::File(file.path.clone(), key),
                ));
            }
        }
        for text in &args.producer_properties {
            let Some((name, value)) = text
                .split_once('=')
                .filter(|(name, _)| !name.trim().is_empty())
            else {
                // Not a KEY=VALUE: the text may well be a secret typed with another separator.
                let shown = if looks_secret(text) {
                    "***"
                } else {
                    text.as_str()
                };
                return Err(invalid(
                    &Origin::Flag("-X"),
                    "",
                    shown,
                    "must be KEY=VALUE, a librdkafka producer property".into(),
                ));
            };
            let name = name.trim().to_owned();
            properties.retain(|(existing, _, _)| *existing != name);
            properties.push((name, value.to_owned(), Origin::Flag("-X")));
        }
        for (name, value, origin) in properties {
            if name == "bootstrap.servers" {
                return Err(invalid(
                    &origin,
                    &format!("{PROPERTIES_TABLE}.{name}"),
                    &value,
                    format!(
                        "set the brokers with {} / {} / {}",
                        BROKERS.flag, BROKERS.env, BROKERS.key
                    ),
                ));
            }
            let key = format!("{PROPERTIES_TABLE}.{name}");
            self.effective.push(Effective {
                shown: shown(&key, &value),
                key,
                origin,
            });
            kafka.set(name, value);
        }
        Ok(())
    }

    /// A message must be delivered or given up within the fifth of the lease that follows the
    /// fence (`outbox_core::fence`); otherwise a record handed over just before a paused relay's
    /// fence closed could reach the broker after its successor's. Sets `message.timeout.ms` to that
    /// fifth (at most 5 s) unless given, and refuses a given value above it.
    fn send_timeout_within_lease(
        &mut self,
        kafka: &mut ClientConfig,
        lease: Duration,
    ) -> Result<(), SettingError> {
        let limit = outbox_core::fence::max_send_timeout(lease);
        for name in ["message.timeout.ms", "delivery.timeout.ms"] {
            let Some(value) = kafka.get(name) else {
                continue;
            };
            let key = format!("{PROPERTIES_TABLE}.{name}");
            let origin = self.origin_of(&key);
            let millis: u64 = value.parse().map_err(|_| {
                invalid(
                    &origin,
                    &key,
                    value,
                    "must be a number of milliseconds".into(),
                )
            })?;
            if millis == 0 || Duration::from_millis(millis) > limit {
                return Err(invalid(
                    &origin,
                    &key,
                    value,
                    format!(
                        "must be between 1 and {} ms (a fifth of the lease, {}) so that a paused relay cannot send after losing its lanes",
                        limit.as_millis(),
                        humantime::format_duration(lease)
                    ),
                ));
            }
            return Ok(());
        }
        let timeout = limit.min(Duration::from_secs(5));
        let millis = timeout.as_millis().to_string();
        self.effective.push(Effective {
            key: format!("{PROPERTIES_TABLE}.message.timeout.ms"),
            shown: millis.clone(),
            origin: Origin::Default,
        });
        kafka.set("message.timeout.ms", millis);
        Ok(())
    }

    fn origin_of(&self, key: &str) -> Origin {
        self.effective
            .iter()
            .find(|effective| effective.key == key)
            .map_or(Origin::Default, |effective| effective.origin.clone())
    }

    fn conflict(&self, specs: &[&Spec], why: &str) -> SettingError {
        let values: Vec<String> = specs
            .iter()
            .map(|spec| {
                let effective = self
                    .effective
                    .iter()
                    .find(|effective| effective.key == spec.key);
                match effective {
                    Some(effective) => format!(
                        "{} `{}` (from {})",
                        spec.key, effective.shown, effective.origin
                    ),
                    None => spec.key.to_owned(),
                }
            })
            .collect();
        SettingError::Conflict(format!(
            "invalid combination {}: {why}",
            values.join(" and ")
        ))
    }
}

fn invalid(origin: &Origin, key: &str, shown: &str, allowed: String) -> SettingError {
    let (setting, from) = match origin {
        Origin::Flag(flag) if key.starts_with(PROPERTIES_TABLE) => {
            (key.to_owned(), format!(" (from {flag})"))
        }
        Origin::Flag(flag) => ((*flag).to_owned(), String::new()),
        Origin::Env(name) => ((*name).to_owned(), String::new()),
        Origin::File(path, _) => (
            key.to_owned(),
            format!(" in the config file {}", path.display()),
        ),
        Origin::Default => (key.to_owned(), " (the default)".to_owned()),
    };
    SettingError::Invalid {
        setting,
        shown: shown.to_owned(),
        from,
        allowed,
    }
}

/// Parts of producer property names whose values are secrets.
const SECRET_PROPERTY_PARTS: &[&str] = &["password", "secret", "key.pem", "oauthbearer.config"];

fn looks_secret(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    SECRET_PROPERTY_PARTS.iter().any(|part| text.contains(part))
}

/// `text` as it may be printed: database URLs and secret-looking producer properties redacted.
fn shown(key: &str, text: &str) -> String {
    if key == DATABASE_URL.key {
        return redact(text);
    }
    if key.starts_with(PROPERTIES_TABLE) && looks_secret(key) {
        return "***".to_owned();
    }
    text.to_owned()
}

fn number_in<T>(text: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    text.parse::<T>()
        .ok()
        .filter(|number| (min..=max).contains(number))
        .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
}

fn duration_in(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let allowed = || {
        format!(
            "must be a duration from {} to {}, like 500ms, 10s or 2m",
            humantime::format_duration(min),
            humantime::format_duration(max)
        )
    };
    let duration = humantime::parse_duration(text).map_err(|_| allowed())?;
    if duration < min || duration > max {
        return Err(allowed());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    /// The `run` flags of `argv` (after `outbox-relay run`).
    fn args(argv: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["outbox-relay", "run"].iter().chain(argv)).expect("parses");
        match cli.command {
            Command::Run(args) => args,
            other => panic!("not run: {other:?}"),
        }
    }

    fn resolve_with(argv: &[&str], env: &[(&str, &str)]) -> Result<Settings, SettingError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        resolve(&args(argv), &|name| env.get(name).cloned())
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    fn origin(settings: &Settings, key: &str) -> Origin {
        settings
            .effective
            .iter()
            .find(|effective| effective.key == key)
            .map(|effective| effective.origin.clone())
            .unwrap_or_else(|| panic!("{key} not in {:?}", settings.effective))
    }

    const REQUIRED: &[&str] = &["--database-url", "postgres://db/app", "--brokers", "k:9092"];

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
        let file = config_file(
            "[database]\nurl = \"postgres://file/app\"\n[kafka]\nbrokers = \"file:9092\"\n\
             [relay]\nlanes = 16\nbatch_size = 100\npoll_interval = \"3s\"\n",
        );
        let path = file.path().to_str().expect("utf-8 path");
        let settings = resolve_with(
            &["--config", path, "--lanes", "8"],
            &[("OUTBOX_LANES", "32"), ("OUTBOX_BATCH_SIZE", "200")],
        )
        .expect("valid");
        assert_eq!(settings.store.get_lanes(), 8, "flag over env and file");
        assert_eq!(origin(&settings, "relay.lanes"), Origin::Flag("--lanes"));
        assert_eq!(settings.relay.get_batch_size(), 200, "env over file");
        assert_eq!(
            origin(&settings, "relay.batch_size"),
            Origin::Env("OUTBOX_BATCH_SIZE")
        );
        assert_eq!(
            settings.relay.get_poll_interval(),
            Duration::from_secs(3),
            "file over default"
        );
        assert_eq!(
            origin(&settings, "relay.poll_interval"),
            Origin::File(file.path().to_owned(), "relay.poll_interval".into())
        );
        assert_eq!(settings.database.database_url, "postgres://file/app");
        assert_eq!(settings.brokers, "file:9092");
        assert_eq!(origin(&settings, "relay.lease"), Origin::Default);
        assert_eq!(settings.database.schema, "public");
        assert_eq!(settings.metrics_address, None, "metrics are off by default");
        assert_eq!(settings.kafka.get("message.timeout.ms"), Some("5000"));
    }

    #[test]
    fn the_config_file_can_come_from_the_environment_and_properties_merge_by_name() {
        let file = config_file(
            "[kafka.properties]\n\"compression.type\" = \"zstd\"\n\"linger.ms\" = 20\n\
             \"sasl.password\" = \"hunter2\"\n[metrics]\naddress = \"127.0.0.1:9464\"\n",
        );
        let path = file.path().to_str().expect("utf-8 path");
        let settings = resolve_with(
            &[
                REQUIRED,
                &[
                    "-X",
                    "linger.ms=1",
                    "--topic-template",
                    "outbox.event.{topic}",
                ],
            ]
            .concat(),
            &[(CONFIG_ENV, path)],
        )
        .expect("valid");
        assert_eq!(settings.kafka.get("compression.type"), Some("zstd"));
        assert_eq!(
            settings.kafka.get("linger.ms"),
            Some("1"),
            "-X beats the file"
        );
        assert_eq!(settings.kafka.get("sasl.password"), Some("hunter2"));
        assert_eq!(
            origin(&settings, "kafka.properties.linger.ms"),
            Origin::Flag("-X")
        );
        let shown: Vec<&str> = settings
            .effective
            .iter()
            .map(|e| e.shown.as_str())
            .collect();
        assert!(
            !shown.contains(&"hunter2"),
            "secrets are redacted: {shown:?}"
        );
        assert_eq!(
            settings.topic_route.route("orders").as_deref(),
            Ok("outbox.event.orders")
        );
        assert_eq!(
            settings.metrics_address,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
    }

    #[test]
    fn database_passwords_never_show() {
        let settings = resolve_with(
            &["--brokers", "k:9092"],
            &[("DATABASE_URL", "postgres://app:s3cret@db:5432/app")],
        )
        .expect("valid");
        let url = settings
            .effective
            .iter()
            .find(|e| e.key == "database.url")
            .expect("url");
        assert!(!url.shown.contains("s3cret"), "{url:?}");
        assert_eq!(
            settings.database.database_url,
            "postgres://app:s3cret@db:5432/app"
        );

        let error = resolve_with(
            &[
                "--brokers",
                "k:9092",
                "--database-url",
                "mysql://app:s3cret@db",
            ],
            &[],
        )
        .expect_err("not postgres")
        .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("--database-url"), "{error}");
    }

    /// Every invalid value: the message names where it came from, the value and what is allowed.
    #[test]
    fn every_invalid_value_is_explained() {
        /// Flags, environment, and what the error must say.
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (
                &["--lanes", "100"],
                &[],
                &["--lanes `100`", "power of two from 1 to 1024"],
            ),
            (
                &[],
                &[("OUTBOX_LANES", "0")],
                &["OUTBOX_LANES `0`", "from 1 to 1024"],
            ),
            (
                &["--batch-size", "0"],
                &[],
                &["--batch-size `0`", "from 1 to 100000"],
            ),
            (
                &["--batch-size", "many"],
                &[],
                &["--batch-size `many`", "whole number"],
            ),
            (
                &["--pool-size", "0"],
                &[],
                &["--pool-size `0`", "from 1 to 100"],
            ),
            (
                &["--poll-interval", "soon"],
                &[],
                &["--poll-interval `soon`", "like 500ms"],
            ),
            (&["--poll-interval", "2h"], &[], &["`2h`", "to 1h"]),
            (&["--lease", "500ms"], &[], &["--lease `500ms`", "from 1s"]),
            (&["--retention", "0s"], &[], &["--retention `0s`", "`off`"]),
            (
                &["--shutdown-grace", "x"],
                &[],
                &["--shutdown-grace `x`", "duration"],
            ),
            (
                &["--max-attempts", "0"],
                &[],
                &["--max-attempts `0`", "from 1 to 1000"],
            ),
            (
                &["--initial-backoff", "0s"],
                &[],
                &["--initial-backoff `0s`", "from 1ms"],
            ),
            (
                &["--max-backoff", "1d 1s"],
                &[],
                &["--max-backoff", "to 1day"],
            ),
            (
                &["--initial-backoff", "2m", "--max-backoff", "1m"],
                &[],
                &[
                    "retry.initial_backoff `2m` (from --initial-backoff)",
                    "retry.max_backoff `1m`",
                    "must not exceed",
                ],
            ),
            (&["--schema", "Bad-Name"], &[], &["--schema `Bad-Name`"]),
            (
                &["--outbox-table", "x;drop"],
                &[],
                &["--outbox-table `x;drop`"],
            ),
            (
                &["--connect-timeout", "forever"],
                &[],
                &["--connect-timeout `forever`"],
            ),
            (
                &["--topic-template", "a/{topic}"],
                &[],
                &["--topic-template `a/{topic}`", "`/` cannot be part"],
            ),
            (
                &["--metrics-address", "everywhere"],
                &[],
                &["--metrics-address `everywhere`", "0.0.0.0:9464"],
            ),
            (&["-X", "linger.ms"], &[], &["-X `linger.ms`", "KEY=VALUE"]),
            (&["-X", "bootstrap.servers=x:1"], &[], &["-X", "--brokers"]),
            (
                &["-X", "message.timeout.ms=9000"],
                &[],
                &[
                    "kafka.properties.message.timeout.ms",
                    "between 1 and 5000 ms",
                ],
            ),
            (
                &["-X", "message.timeout.ms=soon"],
                &[],
                &["`soon`", "milliseconds"],
            ),
        ];
        for (argv, env, says) in cases {
            let error = resolve_with(&[REQUIRED, argv].concat(), env)
                .expect_err(&format!("{argv:?} {env:?} is invalid"))
                .to_string();
            for part in *says {
                assert!(
                    error.contains(part),
                    "{argv:?} {env:?}: `{error}` lacks `{part}`"
                );
            }
        }
        let error = resolve_with(
            &["--database-url", "postgres://db", "--brokers", "nohost"],
            &[],
        )
        .expect_err("no port")
        .to_string();
        assert!(error.contains("host:port"), "{error}");
    }

    #[test]
    fn invalid_file_values_name_the_file_and_the_key() {
        let file = config_file("[relay]\nlanes = 12\n");
        let path = file.path().to_str().expect("utf-8 path");
        let error = resolve_with(&[REQUIRED, &["--config", path]].concat(), &[])
            .expect_err("not a power of two")
            .to_string();
        assert!(error.contains("relay.lanes `12`"), "{error}");
        assert!(error.contains(path), "{error}");

        let file = config_file("[relay]\nlanez = 12\n");
        let path = file.path().to_str().expect("utf-8 path");
        let error = resolve_with(&[REQUIRED, &["--config", path]].concat(), &[])
            .expect_err("typo")
            .to_string();
        assert!(error.contains("unknown setting `relay.lanez`"), "{error}");

        let error = resolve_with(
            &[REQUIRED, &["--config", "/nonexistent.toml"]].concat(),
            &[],
        )
        .expect_err("missing file")
        .to_string();
        assert!(error.contains("/nonexistent.toml"), "{error}");
    }

    #[test]
    fn required_settings_say_every_way_to_give_them() {
        let error = resolve_with(&["--brokers", "k:9092"], &[])
            .expect_err("no url")
            .to_string();
        for part in ["database.url is required", "--database-url", "DATABASE_URL"] {
            assert!(error.contains(part), "{error}");
        }
        let error = resolve_with(&["--database-url", "postgres://db"], &[])
            .expect_err("no brokers")
            .to_string();
        for part in ["kafka.brokers", "--brokers", "KAFKA_BROKERS"] {
            assert!(error.contains(part), "{error}");
        }
    }

    #[test]
    fn a_password_in_the_url_query_and_a_malformed_secret_property_are_never_shown() {
        let settings = resolve_with(
            &[
                "--database-url",
                "postgres://app@127.0.0.1/db?password=hunter2",
                "--brokers",
                "127.0.0.1:9092",
            ],
            &[],
        )
        .expect("valid");
        let url = settings
            .effective
            .iter()
            .find(|e| e.key == DATABASE_URL.key)
            .expect("the URL is shown");
        assert!(!url.shown.contains("hunter2"), "{}", url.shown);
        let error = resolve_with(
            &[
                "--database-url",
                "postgres://app@127.0.0.1/db",
                "--brokers",
                "127.0.0.1:9092",
                "-X",
                "sasl.password:hunter2",
            ],
            &[],
        )
        .expect_err("not KEY=VALUE")
        .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("KEY=VALUE"), "{error}");
    }

    /// The help text documents each setting's environment variable and file key.
    #[test]
    fn the_help_names_every_source_of_every_setting() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("run")
            .expect("run")
            .render_long_help()
            .to_string();
        for spec in ALL {
            for name in [spec.flag, spec.env, spec.key] {
                assert!(help.contains(name), "`run --help` does not mention {name}");
            }
            if let Some(default) = spec.default {
                assert!(
                    help.contains(&format!("[default: {default}]")),
                    "`run --help` does not give {}'s default {default}",
                    spec.key
                );
            }
        }
    }
}
