//! Tests of the table itself: its bounds are the builders', its defaults valid, its names unique.

use outbox_core::{RelayConfig, RetryPolicy};
use outbox_postgres::PgRelayStoreConfig;

use std::time::Duration;

use super::table::spec as spec_of;
use super::table::*;
use super::values::Allowed;

/// Whether `accepts` takes the row's bounds and refuses what lies just beyond them.
fn agrees(spec: &Spec, accepts: impl Fn(u64) -> bool) {
    let Allowed::Count { min, max } = spec.allowed else {
        panic!("{} is no count", spec.key);
    };
    assert!(
        accepts(min) && accepts(max),
        "{}: {min} and {max}",
        spec.key
    );
    assert!(!accepts(min - 1), "{}: {} is refused", spec.key, min - 1);
    assert!(!accepts(max + 1), "{}: {} is refused", spec.key, max + 1);
}

/// Whether `accepts` takes the row's bounds and refuses what lies just beyond them.
fn agrees_on_durations(spec: &Spec, accepts: impl Fn(Duration) -> bool) {
    let (Allowed::Duration { min, max } | Allowed::DurationOrOff { min, max, .. }) = spec.allowed
    else {
        panic!("{} is no duration", spec.key);
    };
    assert!(
        accepts(min) && accepts(max),
        "{}: {min:?} and {max:?}",
        spec.key
    );
    let below = min.saturating_sub(Duration::from_nanos(1));
    assert!(!accepts(below), "{}: {below:?} is refused", spec.key);
    let above = max + Duration::from_nanos(1);
    assert!(!accepts(above), "{}: {above:?} is refused", spec.key);
}

/// The bounds the table states (the builders' constants) are the ones the builders enforce.
#[test]
fn every_stated_bound_is_the_builders() {
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    agrees(&BATCH_SIZE.spec, |n| {
        RelayConfig::default().batch_size(size(n)).is_ok()
    });
    agrees(&WINDOW.spec, |n| {
        RelayConfig::default().window(size(n)).is_ok()
    });
    agrees(&MAX_IN_FLIGHT.spec, |n| {
        RelayConfig::default().max_in_flight(size(n)).is_ok()
    });
    agrees(&MAX_ATTEMPTS.spec, |n| {
        RetryPolicy::default()
            .max_attempts(u32::try_from(n).unwrap_or(u32::MAX))
            .is_ok()
    });
    agrees_on_durations(&POLL_INTERVAL.spec, |d| {
        RelayConfig::default().poll_interval(d).is_ok()
    });
    agrees_on_durations(&LEASE.spec, |d| {
        PgRelayStoreConfig::default().lease(d).is_ok()
    });
    agrees_on_durations(&RETENTION.spec, |d| {
        PgRelayStoreConfig::default().retention(Some(d)).is_ok()
    });
    agrees_on_durations(&INITIAL_BACKOFF.spec, |d| {
        RetryPolicy::default().backoff(d, d).is_ok()
    });
    agrees_on_durations(&MAX_BACKOFF.spec, |d| {
        RetryPolicy::default().backoff(d, d).is_ok()
    });
    assert_eq!(
        LANES.spec.allowed,
        Allowed::PowerOfTwo {
            max: outbox_core::lane::SLOTS
        }
    );
}

#[test]
fn every_default_is_a_valid_value_and_keys_flags_and_variables_are_unique() {
    use std::collections::HashSet;
    let (mut keys, mut flags, mut envs) = (HashSet::new(), HashSet::new(), HashSet::new());
    for spec in ALL {
        assert!(keys.insert(spec.key), "{} twice", spec.key);
        assert!(flags.insert(spec.flag), "{} twice", spec.flag);
        assert!(envs.insert(spec.env), "{} twice", spec.env);
        assert!(spec.flag.starts_with("--"), "{}", spec.flag);
        assert_eq!(spec_of(spec.key), Some(*spec));
    }
    macro_rules! parses {
        ($($setting:ident),*) => {$(
            if let Some(default) = $setting.spec.default {
                assert!($setting.parse(default).is_ok(), "{}'s default `{default}`", $setting.spec.key);
            }
        )*};
    }
    parses!(
        DATABASE_URL,
        POOL_SIZE,
        SCHEMA,
        OUTBOX_TABLE,
        CONNECT_TIMEOUT,
        BROKERS,
        TOPIC_TEMPLATE,
        BATCH_SIZE,
        WINDOW,
        MAX_IN_FLIGHT,
        POLL_INTERVAL,
        LANES,
        LEASE,
        RETENTION,
        SHUTDOWN_GRACE,
        MAX_ATTEMPTS,
        INITIAL_BACKOFF,
        MAX_BACKOFF,
        CAPTURE,
        WAL_SLOT,
        WAL_PREFIX,
        METRICS_ADDRESS
    );
}
