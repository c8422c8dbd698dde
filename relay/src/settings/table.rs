//! The table of relay settings: each row is one setting's flag, environment variable, config file
//! key, default, what it allows, help text and parser. The flags of every subcommand
//! ([`super::scope`]), `--help`, `config check` and the table in `docs/operations.md`
//! ([`super::report`]) all come from here.
//!
//! Adding a setting is a row here (the macro adds it to [`ALL`]) and the line that puts its value
//! where it lands ([`super::run`], or [`super::database`] for the database settings every
//! subcommand uses).
//!
//! The ranges of the library's settings are the builders' own constants (`RelayConfig::BATCH_SIZE`,
//! `PgRelayStoreConfig::LEASE`, ...); the builders check every value again. The ranges here are
//! the relay's own settings' (pool size, connect timeout, shutdown grace).

use std::ops::RangeInclusive;
use std::time::Duration;

use outbox_core::{RelayConfig, RetryPolicy};
use outbox_kafka::TopicRoute;
use outbox_postgres::PgRelayStoreConfig;
use outbox_postgres::SlotName;
use outbox_postgres::wal::DEFAULT_WAL_PREFIX;

use super::values::{self, Allowed, CaptureMode};

/// One setting's names in each source, its default, and what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Its name in the config file, `table.key`.
    pub key: &'static str,
    /// Its flag (a subcommand may name it otherwise: [`super::scope::Scope::flag`]).
    pub flag: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// Its default (as text, parsed like any other value), or `None` when it must be given.
    pub default: Option<&'static str>,
    /// The placeholder of its value in `--help`.
    pub value_name: &'static str,
    /// What it sets, for `--help` and the docs.
    pub help: &'static str,
    /// What it allows.
    pub allowed: Allowed,
}

/// A [`Spec`] and the parser of its value.
#[derive(Debug, Clone, Copy)]
pub struct Setting<T: 'static> {
    /// Its names, default and range.
    pub spec: Spec,
    /// Parses the (trimmed) text; the error says what is allowed.
    pub parse: fn(&Allowed, &str) -> Result<T, String>,
}

impl<T> Setting<T> {
    /// Parses `text` as this setting.
    pub fn parse(&self, text: &str) -> Result<T, String> {
        (self.parse)(&self.spec.allowed, text)
    }
}

/// The environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "OUTBOX_CONFIG";

/// The short flag of a pass-through producer property (`-X key=value`, repeatable).
pub const PROPERTY_SHORT: char = 'X';

/// How that flag is named in origins and errors.
pub const PROPERTY_FLAG: &str = "-X";

/// The long flag of a pass-through producer property.
pub const PROPERTY_LONG: &str = "producer-property";

/// What `-X` does.
pub const PROPERTY_HELP: &str = "librdkafka producer property passed through, as key=value (repeatable) [file: [kafka.properties]]";

const MILLISECOND: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// What a library builder accepts for a count, as the table states it.
const fn count(range: &RangeInclusive<usize>) -> Allowed {
    Allowed::Count {
        min: *range.start() as u64,
        max: *range.end() as u64,
    }
}

/// What a library builder accepts for a duration, as the table states it.
const fn duration(range: &RangeInclusive<Duration>) -> Allowed {
    Allowed::Duration {
        min: *range.start(),
        max: *range.end(),
    }
}

macro_rules! table {
    ($($(#[doc = $doc:literal])* $name:ident: $type:ty = $setting:expr;)*) => {
        $(
            $(#[doc = $doc])*
            pub const $name: Setting<$type> = $setting;
        )*
        /// Every setting, in the order `config check` prints them and the docs list them.
        pub const ALL: &[&Spec] = &[$(&$name.spec),*];
    };
}

table! {
    /// `database.url`
    DATABASE_URL: String = Setting {
        spec: Spec {
            key: "database.url", flag: "--database-url", env: "DATABASE_URL", default: None,
            value_name: "URL",
            help: "PostgreSQL URL, e.g. postgres://user@host:5432/db",
            allowed: Allowed::Text("a `postgres://` URL"),
        },
        parse: values::database_url,
    };
    /// `database.pool_size`
    POOL_SIZE: u32 = Setting {
        spec: Spec {
            key: "database.pool_size", flag: "--pool-size", env: "OUTBOX_POOL_SIZE", default: Some("2"),
            value_name: "N",
            help: "Connections in the relay's pool, besides its own session",
            allowed: Allowed::Count { min: 1, max: 100 },
        },
        parse: values::number,
    };
    /// `database.schema`
    SCHEMA: String = Setting {
        spec: Spec {
            key: "database.schema", flag: "--schema", env: "OUTBOX_SCHEMA", default: Some("public"),
            value_name: "NAME",
            help: "Schema of the outbox tables",
            allowed: Allowed::Text("a plain lowercase identifier"),
        },
        parse: values::schema,
    };
    /// `database.table`
    OUTBOX_TABLE: String = Setting {
        spec: Spec {
            key: "database.table", flag: "--outbox-table", env: "OUTBOX_TABLE", default: Some("outbox"),
            value_name: "NAME",
            help: "Name of the outbox table",
            allowed: Allowed::Text("a plain lowercase identifier"),
        },
        parse: values::outbox_table,
    };
    /// `database.connect_timeout`
    CONNECT_TIMEOUT: Duration = Setting {
        spec: Spec {
            key: "database.connect_timeout", flag: "--connect-timeout", env: "OUTBOX_CONNECT_TIMEOUT",
            default: Some("30s"), value_name: "DURATION",
            help: "How long to keep trying to reach the database (and, for `run`, the brokers) at start-up",
            allowed: Allowed::Duration { min: MILLISECOND, max: HOUR },
        },
        parse: values::duration,
    };
    /// `kafka.brokers`
    BROKERS: String = Setting {
        spec: Spec {
            key: "kafka.brokers", flag: "--brokers", env: "KAFKA_BROKERS", default: None,
            value_name: "LIST",
            help: "Kafka bootstrap servers",
            allowed: Allowed::Text("a comma-separated list of host:port"),
        },
        parse: values::brokers,
    };
    /// `kafka.topic_template`
    TOPIC_TEMPLATE: TopicRoute = Setting {
        spec: Spec {
            key: "kafka.topic_template", flag: "--topic-template", env: "OUTBOX_TOPIC_TEMPLATE",
            default: Some("{topic}"), value_name: "TEMPLATE",
            help: "Kafka topic of each message: `{topic}` is the message's topic, so `outbox.event.{topic}` adds a prefix; without `{topic}` every message goes to that one topic",
            allowed: Allowed::Text("ASCII letters, digits, `.`, `_`, `-` and `{topic}` at most once"),
        },
        parse: values::topic_route,
    };
    /// `relay.batch_size` (`RelayConfig::batch_size`)
    BATCH_SIZE: usize = Setting {
        spec: Spec {
            key: "relay.batch_size", flag: "--batch-size", env: "OUTBOX_BATCH_SIZE", default: Some("500"),
            value_name: "N",
            help: "Most messages one claim takes over all of its lane windows",
            allowed: count(&RelayConfig::BATCH_SIZE),
        },
        parse: values::number,
    };
    /// `relay.window` (`RelayConfig::window`)
    WINDOW: usize = Setting {
        spec: Spec {
            key: "relay.window", flag: "--window", env: "OUTBOX_WINDOW", default: Some("256"),
            value_name: "N",
            help: "Most messages of one lane in flight at once",
            allowed: count(&RelayConfig::WINDOW),
        },
        parse: values::number,
    };
    /// `relay.max_in_flight` (`RelayConfig::max_in_flight`)
    MAX_IN_FLIGHT: usize = Setting {
        spec: Spec {
            key: "relay.max_in_flight", flag: "--max-in-flight", env: "OUTBOX_MAX_IN_FLIGHT",
            default: Some("2000"), value_name: "N",
            help: "Most messages handed to Kafka and not yet settled, over all lanes",
            allowed: count(&RelayConfig::MAX_IN_FLIGHT),
        },
        parse: values::number,
    };
    /// `relay.poll_interval` (`RelayConfig::poll_interval`)
    POLL_INTERVAL: Duration = Setting {
        spec: Spec {
            key: "relay.poll_interval", flag: "--poll-interval", env: "OUTBOX_POLL_INTERVAL",
            default: Some("1s"), value_name: "DURATION",
            help: "Longest sleep when idle without a wake-up: the fallback when no `NOTIFY` wakes the relay",
            allowed: duration(&RelayConfig::POLL_INTERVAL),
        },
        parse: values::duration,
    };
    /// `relay.lanes` (`PgRelayStoreConfig::lanes`)
    LANES: u32 = Setting {
        spec: Spec {
            key: "relay.lanes", flag: "--lanes", env: "OUTBOX_LANES", default: Some("64"),
            value_name: "N",
            help: "Number of lanes, the unit of ordering and ownership; the same for every relay",
            allowed: Allowed::PowerOfTwo { max: outbox_core::lane::SLOTS },
        },
        parse: values::lanes,
    };
    /// `relay.lease` (`PgRelayStoreConfig::lease`)
    LEASE: Duration = Setting {
        spec: Spec {
            key: "relay.lease", flag: "--lease", env: "OUTBOX_LEASE", default: Some("25s"),
            value_name: "DURATION",
            help: "How long a relay that stopped answering keeps its lanes before another takes them over; sends must fit in a fifth of it",
            allowed: duration(&PgRelayStoreConfig::LEASE),
        },
        parse: values::duration,
    };
    /// `relay.retention` (`PgRelayStoreConfig::retention`)
    RETENTION: Option<Duration> = Setting {
        spec: Spec {
            key: "relay.retention", flag: "--retention", env: "OUTBOX_RETENTION", default: Some("off"),
            value_name: "DURATION",
            help: "Keep published messages this long (for audit and replay) instead of deleting them once acknowledged",
            allowed: Allowed::DurationOrOff { min: *PgRelayStoreConfig::RETENTION.start(), max: *PgRelayStoreConfig::RETENTION.end(), off: "delete published messages" },
        },
        parse: values::duration_or_off,
    };
    /// `relay.shutdown_grace` (`RelayConfig::shutdown_grace`)
    SHUTDOWN_GRACE: Duration = Setting {
        spec: Spec {
            key: "relay.shutdown_grace", flag: "--shutdown-grace", env: "OUTBOX_SHUTDOWN_GRACE",
            default: Some("10s"), value_name: "DURATION",
            help: "On shutdown, how long the in-flight batch may take before it is abandoned (and published again later)",
            allowed: Allowed::Duration { min: Duration::ZERO, max: HOUR },
        },
        parse: values::duration,
    };
    /// `retry.max_attempts` (`RetryPolicy::max_attempts`)
    MAX_ATTEMPTS: u32 = Setting {
        spec: Spec {
            key: "retry.max_attempts", flag: "--max-attempts", env: "OUTBOX_MAX_ATTEMPTS", default: Some("10"),
            value_name: "N",
            help: "Publish attempts before a failing message becomes a dead letter; broker outages do not count",
            allowed: Allowed::Count { min: *RetryPolicy::MAX_ATTEMPTS.start() as u64, max: *RetryPolicy::MAX_ATTEMPTS.end() as u64 },
        },
        parse: values::number,
    };
    /// `retry.initial_backoff` (`RetryPolicy::backoff`)
    INITIAL_BACKOFF: Duration = Setting {
        spec: Spec {
            key: "retry.initial_backoff", flag: "--initial-backoff", env: "OUTBOX_INITIAL_BACKOFF",
            default: Some("200ms"), value_name: "DURATION",
            help: "Backoff after the first failed attempt; it doubles up to the longest backoff, which it must not exceed",
            allowed: duration(&RetryPolicy::BACKOFF),
        },
        parse: values::duration,
    };
    /// `retry.max_backoff` (`RetryPolicy::backoff`)
    MAX_BACKOFF: Duration = Setting {
        spec: Spec {
            key: "retry.max_backoff", flag: "--max-backoff", env: "OUTBOX_MAX_BACKOFF", default: Some("60s"),
            value_name: "DURATION",
            help: "Longest backoff between attempts",
            allowed: duration(&RetryPolicy::BACKOFF),
        },
        parse: values::duration,
    };
    /// `relay.capture`
    CAPTURE: CaptureMode = Setting {
        spec: Spec {
            key: "relay.capture", flag: "--capture", env: "OUTBOX_CAPTURE", default: Some("table"),
            value_name: "MODE",
            help: "Where messages are read: the outbox table, or logical decoding messages written by `PgOutbox::wal`, from a replication slot (see \"WAL capture\")",
            allowed: Allowed::Text("`table` (read the outbox table) or `wal` (read logical decoding messages from a replication slot)"),
        },
        parse: values::capture,
    };
    /// `wal.slot`
    WAL_SLOT: SlotName = Setting {
        spec: Spec {
            key: "wal.slot", flag: "--wal-slot", env: "OUTBOX_WAL_SLOT", default: Some("outbox"),
            value_name: "NAME",
            help: "The replication slot of WAL capture (its publication has the same name): what `run --capture wal` reads, created beforehand with `outbox-relay wal create-slot`",
            allowed: Allowed::Text("a plain lowercase identifier"),
        },
        parse: values::slot,
    };
    /// `wal.prefix`
    WAL_PREFIX: String = Setting {
        spec: Spec {
            key: "wal.prefix", flag: "--wal-prefix", env: "OUTBOX_WAL_PREFIX", default: Some(DEFAULT_WAL_PREFIX),
            value_name: "PREFIX",
            help: "With --capture wal: the prefix of the logical messages to publish (the writers' `PgOutbox::wal_prefix`); others are skipped",
            allowed: Allowed::Text("1 to 255 printable ASCII characters without spaces"),
        },
        parse: values::wal_prefix,
    };
    /// `metrics.address`
    METRICS_ADDRESS: Option<std::net::SocketAddr> = Setting {
        spec: Spec {
            key: "metrics.address", flag: "--metrics-address", env: "OUTBOX_METRICS_ADDRESS",
            default: Some("off"), value_name: "ADDRESS",
            help: "Where to serve /metrics, /healthz and /readyz",
            allowed: Allowed::Text("`off` or an address to listen on such as 0.0.0.0:9464 or 127.0.0.1:9464"),
        },
        parse: values::listen_address,
    };
}

/// The row whose config file key is `key`.
pub fn spec(key: &str) -> Option<&'static Spec> {
    ALL.iter().copied().find(|spec| spec.key == key)
}
