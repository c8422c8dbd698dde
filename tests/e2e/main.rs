//! End-to-end tests: real PostgreSQL (`DATABASE_URL`) and Apache Kafka
//! (`KAFKA_BROKERS`), both started by `scripts/services.sh`.

mod admin;
mod bad_input;
mod chaos;
mod crash;
mod dead_letters;
mod fencing;
mod flow;
mod inbox;
mod operations;
mod outage;
mod rebalance;
mod security;
mod wal;

use std::path::Path;
use std::time::Duration;

use outbox_core::{RelayConfig, RetryPolicy};

/// A relay configuration that reacts quickly in tests.
fn quick_config() -> RelayConfig {
    RelayConfig::default()
        .poll_interval(Duration::from_millis(100))
        .expect("valid poll interval")
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .expect("valid attempts")
                .backoff(Duration::from_millis(50), Duration::from_millis(200))
                .expect("valid backoff"),
        )
}

/// The relay program, built by this package from the same code as `outbox-relay`.
fn relay_program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}
