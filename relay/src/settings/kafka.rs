//! The producer properties of `run`: `-X key=value` and `[kafka.properties]`, merged by name, and
//! the send timeout that must fit in the lease.

use std::time::Duration;

use outbox_kafka::ClientConfig;

use super::file::PROPERTIES_TABLE;
use super::layers::{Effective, Layers, Origin, SettingError, invalid};
use super::table::{BROKERS, PROPERTY_FLAG};
use super::values::{looks_secret, shown};

/// Pass-through producer properties: each one from `-X` (`given`), else the file.
///
/// # Errors
/// A `-X` that is no `KEY=VALUE`, or `bootstrap.servers` (which is `kafka.brokers`).
pub fn producer_properties(
    layers: &mut Layers<'_>,
    given: &[String],
    kafka: &mut ClientConfig,
) -> Result<(), SettingError> {
    let mut properties: Vec<(String, String, Origin)> = Vec::new();
    if let Some(file) = layers.file() {
        for (name, value) in &file.properties {
            let key = format!("{PROPERTIES_TABLE}.{name}");
            properties.push((
                name.clone(),
                value.clone(),
                Origin::File(file.path.clone(), key),
            ));
        }
    }
    for text in given {
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
                &Origin::Flag(PROPERTY_FLAG),
                "",
                shown,
                "must be KEY=VALUE, a librdkafka producer property".into(),
            ));
        };
        let name = name.trim().to_owned();
        properties.retain(|(existing, _, _)| *existing != name);
        properties.push((name, value.to_owned(), Origin::Flag(PROPERTY_FLAG)));
    }
    for (name, value, origin) in properties {
        let key = format!("{PROPERTIES_TABLE}.{name}");
        if name == "bootstrap.servers" {
            let brokers = &BROKERS.spec;
            return Err(invalid(
                &origin,
                &key,
                &value,
                format!(
                    "set the brokers with {} / {} / {}",
                    brokers.flag, brokers.env, brokers.key
                ),
            ));
        }
        let resolved = resolve_reference(&value, &|variable| layers.env_var(variable))
            .map_err(|reason| invalid(&origin, &key, &shown(&key, &value), reason))?;
        layers.record(Effective {
            // A reference says where the value is, not what it is: shown as given.
            shown: if resolved.is_some() {
                value.clone()
            } else {
                shown(&key, &value)
            },
            key,
            origin,
        });
        kafka.set(name, resolved.unwrap_or(value));
    }
    Ok(())
}

/// The value a property's text refers to: `${env:NAME}` is the environment variable `NAME`,
/// `${file:PATH}` the contents of the file at `PATH` without its trailing line break. `None` for a
/// text that is no reference (the value itself). So secrets need not be on the command line, where
/// every process of the machine can read them, nor in a config file that others may read.
///
/// # Errors
/// What is wrong with a reference: an unset variable, an unreadable file, an unknown kind. The
/// message never holds the value.
pub fn resolve_reference(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let Some(inner) = text
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        return Ok(None);
    };
    if let Some(name) = inner.strip_prefix("env:") {
        return env(name)
            .map(Some)
            .ok_or_else(|| format!("refers to the environment variable {name}, which is not set"));
    }
    if let Some(path) = inner.strip_prefix("file:") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("refers to the file {path}, which cannot be read: {e}"))?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Err("is no reference this relay reads: use ${env:NAME} or ${file:PATH}".into())
}

/// A message must be delivered or given up within the fifth of the lease that follows the fence
/// (`outbox_core::fence`); otherwise a record handed over just before a paused relay's fence closed
/// could reach the broker after its successor's. Sets `message.timeout.ms` to that fifth (at most
/// 5 s) unless given, and refuses a given value above it.
///
/// # Errors
/// A given `message.timeout.ms` or `delivery.timeout.ms` that is no number or does not fit.
pub fn send_timeout_within_lease(
    layers: &mut Layers<'_>,
    kafka: &mut ClientConfig,
    lease: Duration,
) -> Result<(), SettingError> {
    let limit = outbox_core::fence::max_send_timeout(lease);
    for name in ["message.timeout.ms", "delivery.timeout.ms"] {
        let Some(value) = kafka.get(name) else {
            continue;
        };
        let key = format!("{PROPERTIES_TABLE}.{name}");
        let origin = layers.origin(&key);
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
    layers.record(Effective {
        key: format!("{PROPERTIES_TABLE}.message.timeout.ms"),
        shown: millis.clone(),
        origin: Origin::Default,
    });
    kafka.set("message.timeout.ms", millis);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_the_environment_or_a_file_and_anything_else_is_the_value() {
        let env = |name: &str| (name == "KAFKA_PASSWORD").then(|| "from-env".to_owned());
        assert_eq!(resolve_reference("plain", &env), Ok(None));
        assert_eq!(
            resolve_reference("${env:KAFKA_PASSWORD}", &env),
            Ok(Some("from-env".into()))
        );
        let unset = resolve_reference("${env:UNSET}", &env).expect_err("unset");
        assert!(unset.contains("UNSET"), "{unset}");

        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").expect("written");
        let reference = format!("${{file:{}}}", path.display());
        assert_eq!(
            resolve_reference(&reference, &env),
            Ok(Some("from-file".into()))
        );
        let missing = format!("${{file:{}}}", dir.path().join("none").display());
        assert!(resolve_reference(&missing, &env).is_err());
        assert!(resolve_reference("${vault:x}", &env).is_err());
    }
}
