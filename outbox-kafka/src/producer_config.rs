//! The producer settings the guarantees need, for every producer of the workspace (the relay's
//! publisher and the consumer's dead-letter producer): checked, completed with safe defaults, and
//! read back (the send timeout), whichever of librdkafka's names the user gave them under.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::error::Error;

/// Settings of the relay's publisher applied unless the user set them, and why.
pub(crate) const PUBLISHER_DEFAULTS: &[(&str, &str)] = &[
    // Partition keys as the Java client does, so other producers and consumers agree.
    ("partitioner", "murmur2_random"),
    // The relay hands whole windows over at once, so waiting for more records only delays them:
    // linger 1 ms (5 ms before) measured lower commit-to-ack latency (p50 at 100 msg/s from 9 to
    // 3.5 ms) and a faster drain on the benchmark.
    ("linger.ms", "1"),
    // Give up on a send after 5 s (the relay retries it with backoff). The relay refuses a send
    // timeout above a fifth of the store's lease (`outbox_core::fence`): a record handed over just
    // before a paused relay's fence closed is then settled before another relay can take the lane.
    ("message.timeout.ms", "5000"),
    // Statistics every 10 s: how the publisher notices that a topic's partition count changed
    // (`partition_watch.rs`); one small report, parsed off the send path.
    ("statistics.interval.ms", "10000"),
];

/// librdkafka's second names of settings the checks read: one value, whichever name carries it.
const ALIASES: &[(&str, &str)] = &[
    ("acks", "request.required.acks"),
    ("message.timeout.ms", "delivery.timeout.ms"),
];

/// Partitioners that place one key on one partition; `random` does not, and would break per-key
/// order.
const KEYED_PARTITIONERS: &[&str] = &[
    "murmur2_random",
    "murmur2",
    "consistent",
    "consistent_random",
    "fnv1a",
    "fnv1a_random",
];

fn unsafe_setting(key: &str, value: &str, why: &'static str) -> Error {
    Error::UnsafeConfig {
        key: key.into(),
        value: value.into(),
        why,
    }
}

/// The relay publisher's configuration ([`harden`] with [`PUBLISHER_DEFAULTS`]) and its send
/// timeout.
pub(crate) fn prepare(config: &ClientConfig) -> Result<(ClientConfig, Duration), Error> {
    let config = harden(config, PUBLISHER_DEFAULTS)?;
    let timeout = config.get("message.timeout.ms").unwrap_or("5000");
    let millis: u64 = timeout
        .parse()
        .ok()
        .filter(|millis| *millis > 0)
        .ok_or_else(|| {
            Error::Config(format!(
                "`message.timeout.ms={timeout}` must be a number of milliseconds above 0: the relay needs every send to end"
            ))
        })?;
    Ok((config, Duration::from_millis(millis)))
}

/// Checks `config`, folds aliases onto one name, refuses what would weaken acknowledgements or
/// per-key order, forces idempotence and `acks=all`, and fills in `defaults` for what is unset.
pub(crate) fn harden(
    config: &ClientConfig,
    defaults: &[(&str, &str)],
) -> Result<ClientConfig, Error> {
    let mut config = config.clone();
    for (name, alias) in ALIASES {
        let Some(second) = config.get(alias).map(str::to_owned) else {
            continue;
        };
        match config.get(name) {
            Some(first) if first != second => {
                return Err(Error::Config(format!(
                    "`{name}={first}` and its alias `{alias}={second}` disagree; set one of them"
                )));
            }
            _ => {}
        }
        config.remove(alias);
        config.set(*name, second);
    }
    if let Some(value) = config.get("enable.idempotence")
        && value != "true"
    {
        return Err(unsafe_setting(
            "enable.idempotence",
            value,
            "the relay needs the idempotent producer to keep per-key order across retries",
        ));
    }
    if let Some(value) = config.get("acks")
        && !matches!(value, "all" | "-1")
    {
        return Err(unsafe_setting(
            "acks",
            value,
            "only acks=all makes an acknowledgement mean the message survives a broker failure",
        ));
    }
    if let Some(value) = config.get("partitioner")
        && !KEYED_PARTITIONERS.contains(&value)
    {
        return Err(unsafe_setting(
            "partitioner",
            value,
            "the relay's per-key order needs every message of a key on one partition (murmur2_random, the default, places keys as Java clients do)",
        ));
    }
    config.set("enable.idempotence", "true").set("acks", "all");
    for (key, value) in defaults {
        if config.get(key).is_none() {
            config.set(*key, *value);
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "localhost:9092");
        for (key, value) in pairs {
            config.set(*key, *value);
        }
        config
    }

    fn refused(pairs: &[(&str, &str)]) -> String {
        prepare(&config(pairs))
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn weakening_settings_are_refused_under_every_name() {
        assert!(refused(&[("acks", "1")]).contains("acks"));
        assert!(refused(&[("request.required.acks", "0")]).contains("acks"));
        assert!(refused(&[("enable.idempotence", "false")]).contains("idempotence"));
        assert!(refused(&[("partitioner", "random")]).contains("partitioner"));
        assert!(refused(&[("message.timeout.ms", "0")]).contains("message.timeout.ms"));
        let both = refused(&[
            ("message.timeout.ms", "2000"),
            ("delivery.timeout.ms", "9000"),
        ]);
        assert!(both.contains("disagree"), "{both}");
    }

    #[test]
    fn the_send_timeout_is_read_under_either_name_and_defaults_to_five_seconds() {
        let (_, default) = prepare(&config(&[])).expect("valid");
        assert_eq!(default, Duration::from_secs(5));
        let (prepared, aliased) =
            prepare(&config(&[("delivery.timeout.ms", "2500")])).expect("valid");
        assert_eq!(aliased, Duration::from_millis(2500));
        assert_eq!(prepared.get("message.timeout.ms"), Some("2500"));
        assert_eq!(prepared.get("delivery.timeout.ms"), None);
        let (prepared, _) = prepare(&config(&[("request.required.acks", "-1")])).expect("valid");
        assert_eq!(prepared.get("acks"), Some("all"));
        assert_eq!(prepared.get("partitioner"), Some("murmur2_random"));
    }
}
