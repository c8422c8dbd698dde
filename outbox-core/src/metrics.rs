//! The relay's metrics, recorded through the [`metrics`] facade.
//!
//! Without an installed recorder every call here is a no-op; the `outbox-relay` program installs a
//! Prometheus recorder when `--metrics-address` is set. The names are the contract with dashboards
//! and alerts, so they live here, one constant each, with their help text in [`describe`].

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::publisher::PublishErrorKind;
use crate::store::{Settled, StoredMessage};

/// Counter, label `topic`: messages acknowledged by the broker and settled.
pub const PUBLISHED: &str = "outbox_messages_published_total";
/// Counter, labels `topic` and `kind`: failed publish attempts (each one retried or dead-lettered).
pub const FAILED: &str = "outbox_messages_failed_total";
/// Counter, label `topic`: messages moved to the dead-letter table.
pub const DEAD_LETTERED: &str = "outbox_messages_dead_lettered_total";
/// Histogram, seconds: from a message's creation (in the writer's transaction) to its acknowledgement.
pub const PUBLISH_LATENCY: &str = "outbox_publish_latency_seconds";
/// Histogram: messages per published lane window.
pub const WINDOW_SIZE: &str = "outbox_window_size";
/// Counter: lane windows given up (shutdown grace elapsed, lease lost, settlement not written).
pub const ABANDONED_WINDOWS: &str = "outbox_windows_abandoned_total";
/// Counter, label `operation`: failed database operations of the relay (`claim`, `settle`, ...).
pub const DATABASE_ERRORS: &str = "outbox_database_errors_total";
/// Gauge: lanes this relay owns.
pub const LANES_OWNED: &str = "outbox_lanes_owned";
/// Counter, label `change` (`acquired`, `released`, `lost`): lanes changing hands.
pub const LANE_CHANGES: &str = "outbox_lane_changes_total";
/// Gauge, label `topic`: messages waiting to be published.
pub const BACKLOG: &str = "outbox_backlog_messages";
/// Gauge, label `topic`: age of the oldest message waiting to be published (0 when none waits).
pub const OLDEST_AGE: &str = "outbox_oldest_message_age_seconds";
/// Gauge: rows in the dead-letter table.
pub const DEAD_LETTERS: &str = "outbox_dead_letters";
/// Gauge, label `check` (`database`, `broker`, `lanes`): 1 when the last readiness check passed.
pub const READY: &str = "outbox_ready";

/// Gauge, seconds: how long numbers handed out have waited for open enqueuing transactions (the
/// publish horizon's lag; 0 when everything committed is claimable). A steady rise means a writer
/// holds a transaction open: `outbox-relay status` names it.
pub const HORIZON_LAG: &str = "outbox_horizon_lag_seconds";

/// Counter, label `reason` (`foreign_prefix`, `malformed`): logical messages in the WAL stream that
/// the relay did not publish: another program's (skipped), or unreadable ones (dead-lettered).
pub const WAL_SKIPPED: &str = "outbox_wal_messages_skipped_total";
/// Gauge, bytes: WAL between the server's current position and the slot's confirmed position.
pub const WAL_LAG_BYTES: &str = "outbox_wal_lag_bytes";
/// Gauge, seconds: age of the oldest committed transaction whose messages are not all settled.
pub const WAL_LAG_SECONDS: &str = "outbox_wal_lag_seconds";
/// Gauge: 1 while this relay reads the replication slot, 0 while it stands by.
pub const WAL_READING: &str = "outbox_wal_reading";

/// Registers the help text and unit of every metric with the installed recorder.
pub fn describe() {
    describe_counter!(
        PUBLISHED,
        "Messages acknowledged by the broker and settled."
    );
    describe_counter!(FAILED, "Failed publish attempts, by topic and error kind.");
    describe_counter!(DEAD_LETTERED, "Messages moved to the dead-letter table.");
    describe_histogram!(
        PUBLISH_LATENCY,
        Unit::Seconds,
        "From a message's creation in the writer's transaction to the broker's acknowledgement."
    );
    describe_histogram!(
        WINDOW_SIZE,
        Unit::Count,
        "Messages per published lane window."
    );
    describe_counter!(
        ABANDONED_WINDOWS,
        "Lane windows given up (shutdown grace elapsed, lease lost, settlement not written); their messages are published again."
    );
    describe_counter!(DATABASE_ERRORS, "Failed database operations of the relay.");
    describe_gauge!(LANES_OWNED, Unit::Count, "Lanes this relay owns.");
    describe_counter!(
        LANE_CHANGES,
        "Lanes acquired, released or lost by this relay."
    );
    describe_gauge!(BACKLOG, Unit::Count, "Messages waiting to be published.");
    describe_gauge!(
        OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest message waiting to be published; 0 when none waits."
    );
    describe_gauge!(DEAD_LETTERS, Unit::Count, "Rows in the dead-letter table.");
    describe_gauge!(READY, "1 when the last readiness check passed, by check.");
    describe_gauge!(
        HORIZON_LAG,
        Unit::Seconds,
        "How long messages have waited for open enqueuing transactions before they could be claimed; 0 when none waits."
    );
    describe_counter!(
        WAL_SKIPPED,
        "Logical messages not published: another program's prefix (skipped) or a malformed envelope (dead-lettered)."
    );
    describe_gauge!(
        WAL_LAG_BYTES,
        Unit::Bytes,
        "WAL between the server's current position and the replication slot's confirmed position."
    );
    describe_gauge!(
        WAL_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest committed transaction whose messages are not all settled; 0 when none."
    );
    describe_gauge!(
        WAL_READING,
        "1 while this relay reads the replication slot, 0 while it stands by."
    );
}

/// The label value of an error kind.
pub fn kind_label(kind: PublishErrorKind) -> &'static str {
    match kind {
        PublishErrorKind::Unavailable => "unavailable",
        PublishErrorKind::Transient => "transient",
        PublishErrorKind::MessageTooLarge => "message_too_large",
        PublishErrorKind::UnknownTopic => "unknown_topic",
        PublishErrorKind::Unauthorized => "unauthorized",
        PublishErrorKind::Rejected => "rejected",
        PublishErrorKind::Fenced => "fenced",
    }
}

/// Counts what a settlement wrote: published and dead-lettered messages per
/// topic (one counter update per topic, not per message) and each published message's latency.
pub(crate) fn settled<'a>(batch: impl IntoIterator<Item = &'a StoredMessage>, settled: &Settled) {
    let published: HashSet<i64> = settled.published.iter().copied().collect();
    let dead_lettered: HashSet<i64> = settled.dead_lettered.iter().copied().collect();
    let now = Utc::now();
    let latency = histogram!(PUBLISH_LATENCY);
    let mut per_topic: BTreeMap<(&str, &'static str), u64> = BTreeMap::new();
    for stored in batch {
        let topic = stored.message.topic.as_str();
        if published.contains(&stored.seq) {
            let waited = (now - stored.message.created_at)
                .to_std()
                .unwrap_or_default();
            latency.record(waited.as_secs_f64());
            *per_topic.entry((topic, PUBLISHED)).or_default() += 1;
        } else if dead_lettered.contains(&stored.seq) {
            *per_topic.entry((topic, DEAD_LETTERED)).or_default() += 1;
        }
    }
    for ((topic, name), count) in per_topic {
        counter!(name, "topic" => topic.to_owned()).increment(count);
    }
}

/// Counts a failed publish attempt (whether it is retried or dead-lettered).
pub(crate) fn failed(topic: &str, kind: PublishErrorKind) {
    counter!(FAILED, "topic" => topic.to_owned(), "kind" => kind_label(kind)).increment(1);
}

pub(crate) fn batch(messages: usize) {
    histogram!(WINDOW_SIZE).record(messages as f64);
}

pub(crate) fn abandoned() {
    counter!(ABANDONED_WINDOWS).increment(1);
}

#[doc(hidden)] // for the adapters; dashboards use the names above
/// Counts a failed database operation.
pub fn database_error(operation: &'static str) {
    counter!(DATABASE_ERRORS, "operation" => operation).increment(1);
}

#[doc(hidden)] // for the adapters; dashboards use the names above
/// Records the publish horizon's lag (see [`HORIZON_LAG`]).
pub fn horizon_lag(lag: std::time::Duration) {
    gauge!(HORIZON_LAG).set(lag.as_secs_f64());
}

#[doc(hidden)] // for the adapters; dashboards use the names above
/// Sets the number of lanes owned and counts the change.
pub fn lanes_changed(owned: usize, change: &'static str, lanes: usize) {
    gauge!(LANES_OWNED).set(owned as f64);
    if lanes > 0 {
        counter!(LANE_CHANGES, "change" => change).increment(lanes as u64);
    }
}

#[doc(hidden)] // for the adapters; dashboards use the names above
/// Counts a logical message the relay did not publish (see [`WAL_SKIPPED`]).
pub fn wal_skipped(reason: &'static str) {
    counter!(WAL_SKIPPED, "reason" => reason).increment(1);
}

#[doc(hidden)] // for the adapters; dashboards use the names above
/// Records how far the replication slot is behind (see [`WAL_LAG_BYTES`], [`WAL_LAG_SECONDS`]).
pub fn wal_lag(bytes: u64, seconds: f64) {
    gauge!(WAL_LAG_BYTES).set(bytes as f64);
    gauge!(WAL_LAG_SECONDS).set(seconds);
}

#[doc(hidden)] // for the adapters; dashboards use the names above
/// Records whether this relay reads the replication slot (see [`WAL_READING`]).
pub fn wal_reading(reading: bool) {
    gauge!(WAL_READING).set(if reading { 1.0 } else { 0.0 });
}
