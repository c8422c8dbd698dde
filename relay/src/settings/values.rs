//! What each setting allows, and the parsers that turn its text into a value.
//!
//! Every parser takes the text exactly as given (a flag, an environment variable, a config file
//! value or the default) and either returns the value or says what is allowed; the layer that read
//! the text adds where it came from (see [`super::layers`]). Identifiers, slot names, prefixes and
//! topic templates are checked by the library type the value goes to, so their rules live in one
//! place.

use std::net::SocketAddr;
use std::time::Duration;

use outbox_kafka::TopicRoute;
use outbox_postgres::{PgRelayStoreConfig, PgWalStoreConfig, SlotName, Tables};

use super::file::PROPERTIES_TABLE;
use crate::connect::redact;

/// What a setting allows: shown in `--help` and in the docs, and said when a value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// A whole number in this range.
    Count {
        /// The smallest.
        min: u64,
        /// The largest.
        max: u64,
    },
    /// A power of two from 1 to `max`.
    PowerOfTwo {
        /// The largest.
        max: u32,
    },
    /// A duration in this range.
    Duration {
        /// The shortest.
        min: Duration,
        /// The longest.
        max: Duration,
    },
    /// `off`, or a duration in this range.
    DurationOrOff {
        /// The shortest.
        min: Duration,
        /// The longest.
        max: Duration,
        /// What `off` does.
        off: &'static str,
    },
    /// Described in words, checked by the parser (mostly by the library type the value goes to).
    Text(&'static str),
}

impl Allowed {
    /// A short form for tables and `--help`: `1–100`, `1ms–1h`.
    pub fn short(&self) -> String {
        match self {
            Self::Count { min, max } => format!("{min}–{max}"),
            Self::PowerOfTwo { max } => format!("a power of two up to {max}"),
            Self::Duration { min, max } => format!("{}–{}", human(*min), human(*max)),
            Self::DurationOrOff { min, max, off } => {
                format!("`off` ({off}) or {}–{}", human(*min), human(*max))
            }
            Self::Text(text) => (*text).to_owned(),
        }
    }

    /// What an error says after "must be".
    pub fn must(&self) -> String {
        match self {
            Self::Count { min, max } => format!("must be a whole number from {min} to {max}"),
            Self::PowerOfTwo { max } => format!("must be a power of two from 1 to {max}"),
            Self::Duration { min, max } | Self::DurationOrOff { min, max, .. } => format!(
                "must be a duration from {} to {}, like 500ms, 10s or 2m",
                human(*min),
                human(*max)
            ),
            Self::Text(text) => format!("must be {text}"),
        }
    }
}

fn human(duration: Duration) -> String {
    // Whole years of 365 days read as such (humantime counts in months of 30.44 days).
    const YEAR: u64 = 365 * 86_400;
    let seconds = duration.as_secs();
    if duration.subsec_nanos() == 0 && seconds >= YEAR && seconds.is_multiple_of(YEAR) {
        return format!("{} years", seconds / YEAR);
    }
    humantime::format_duration(duration).to_string()
}

/// A whole number within [`Allowed::Count`] (or up to an [`Allowed::PowerOfTwo`]'s largest).
pub fn number<T: TryFrom<u64>>(allowed: &Allowed, text: &str) -> Result<T, String> {
    let (min, max) = match *allowed {
        Allowed::Count { min, max } => (min, max),
        Allowed::PowerOfTwo { max } => (1, u64::from(max)),
        _ => return Err(allowed.must()),
    };
    text.parse::<u64>()
        .ok()
        .filter(|number| (min..=max).contains(number))
        .and_then(|number| T::try_from(number).ok())
        .ok_or_else(|| allowed.must())
}

/// A lane count, as the relay store accepts it.
pub fn lanes(allowed: &Allowed, text: &str) -> Result<u32, String> {
    let refused = || format!("{} (the same for every relay)", allowed.must());
    let lanes = number(allowed, text).map_err(|_| refused())?;
    PgRelayStoreConfig::default()
        .lanes(lanes)
        .map(|_| lanes)
        .map_err(|_| refused())
}

/// A duration within [`Allowed::Duration`].
pub fn duration(allowed: &Allowed, text: &str) -> Result<Duration, String> {
    let (min, max) = match *allowed {
        Allowed::Duration { min, max } | Allowed::DurationOrOff { min, max, .. } => (min, max),
        _ => return Err(allowed.must()),
    };
    humantime::parse_duration(text)
        .ok()
        .filter(|duration| (min..=max).contains(duration))
        .ok_or_else(|| allowed.must())
}

/// `off` (`None`), or a duration within [`Allowed::DurationOrOff`].
pub fn duration_or_off(allowed: &Allowed, text: &str) -> Result<Option<Duration>, String> {
    if text == "off" {
        return Ok(None);
    }
    let off = match allowed {
        Allowed::DurationOrOff { off, .. } => off,
        _ => return Err(allowed.must()),
    };
    duration(allowed, text)
        .map(Some)
        .map_err(|e| format!("{e}; or `off` to {off}"))
}

/// A `postgres://` URL.
pub fn database_url(_: &Allowed, text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("must not be empty; e.g. postgres://user@host:5432/db".into());
    }
    url::Url::parse(text)
        .ok()
        .filter(|url| matches!(url.scheme(), "postgres" | "postgresql"))
        .map(|_| text.to_owned())
        .ok_or_else(|| "must be a postgres:// URL, e.g. postgres://user@host:5432/db".into())
}

/// A schema name, as [`Tables::schema`] accepts it.
pub fn schema(_: &Allowed, text: &str) -> Result<String, String> {
    Tables::default()
        .schema(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// An outbox table name, as [`Tables::outbox`] accepts it.
pub fn outbox_table(_: &Allowed, text: &str) -> Result<String, String> {
    Tables::default()
        .outbox(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// Comma-separated `host:port`.
pub fn brokers(allowed: &Allowed, text: &str) -> Result<String, String> {
    if text.split(',').all(|broker| broker.trim().contains(':')) {
        Ok(text.to_owned())
    } else {
        Err(allowed.must())
    }
}

/// A topic template, as [`TopicRoute::parse`] accepts it.
pub fn topic_route(_: &Allowed, text: &str) -> Result<TopicRoute, String> {
    TopicRoute::parse(text).map_err(|e| e.to_string())
}

/// Where the relay reads messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// The outbox table.
    Table,
    /// Logical decoding messages from a replication slot.
    Wal,
}

/// `table` or `wal`.
pub fn capture(allowed: &Allowed, text: &str) -> Result<CaptureMode, String> {
    match text {
        "table" => Ok(CaptureMode::Table),
        "wal" => Ok(CaptureMode::Wal),
        _ => Err(allowed.must()),
    }
}

/// A replication slot name, as [`SlotName::new`] accepts it.
pub fn slot(_: &Allowed, text: &str) -> Result<SlotName, String> {
    SlotName::new(text).map_err(|e| e.to_string())
}

/// A logical-message prefix, as [`PgWalStoreConfig::prefix`] accepts it.
pub fn wal_prefix(_: &Allowed, text: &str) -> Result<String, String> {
    PgWalStoreConfig::default()
        .prefix(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// `off` (`None`) or an address to listen on.
pub fn listen_address(allowed: &Allowed, text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| allowed.must())
}

/// Parts of producer property names whose values are secrets.
pub const SECRET_PROPERTY_PARTS: &[&str] = &["password", "secret", "key.pem", "oauthbearer.config"];

/// Whether a producer property (or text that may hold one) looks like a secret.
pub fn looks_secret(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    SECRET_PROPERTY_PARTS.iter().any(|part| text.contains(part))
}

/// `text` as it may be printed under `key`: database URLs and secret-looking producer properties
/// redacted.
pub fn shown(key: &str, text: &str) -> String {
    if key == super::table::DATABASE_URL.spec.key {
        return redact(text);
    }
    if key.starts_with(PROPERTIES_TABLE) && looks_secret(key) {
        return "***".to_owned();
    }
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_say_their_range() {
        let count = Allowed::Count { min: 1, max: 100 };
        assert_eq!(number::<u32>(&count, "100"), Ok(100));
        assert_eq!(
            number::<u32>(&count, "0"),
            Err("must be a whole number from 1 to 100".into())
        );
        assert!(number::<u32>(&count, "-1").is_err());
        let hour = Allowed::Duration {
            min: Duration::from_millis(1),
            max: Duration::from_secs(3600),
        };
        assert_eq!(duration(&hour, "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(
            duration(&hour, "2h"),
            Err("must be a duration from 1ms to 1h, like 500ms, 10s or 2m".into())
        );
        assert_eq!(count.short(), "1–100");
        assert_eq!(hour.short(), "1ms–1h");
    }

    #[test]
    fn a_parser_given_the_wrong_kind_of_range_refuses_rather_than_guessing() {
        let text = Allowed::Text("anything");
        assert!(number::<u32>(&text, "1").is_err());
        assert!(duration(&text, "1s").is_err());
        assert!(duration_or_off(&text, "1s").is_err());
    }
}
