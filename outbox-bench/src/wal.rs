//! Part 6, WAL capture next to table mode, each comparison back to back in the same run:
//!
//! * write cost: one-row business transactions with no message, a table-mode enqueue and a
//!   WAL-mode enqueue, taking turns on one connection (the write-path part's method);
//! * drain: the drain part's relay drain of the same backlog in table mode, in WAL mode, and in
//!   table mode again (the table baseline is the mean of the two, cancelling a drift);
//! * latency: the latency part's wake-ups run (table mode), the broker alone, and the same loads
//!   in WAL mode.
//!
//! The part creates the benchmark's replication slot first and drops it at its end.

use outbox_postgres::PgOutbox;

use crate::Options;
use crate::baselines::Throughput;
use crate::capture::Capture;
use crate::drain::relay_drain;
use crate::env::Bench;
use crate::latency::{self, BrokerFloor, LatencyPoint, Mode};
use crate::write_path::{self, Kind, WriteKind};

/// Write cost: what each kind of transaction took.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WalWriteCost {
    /// Transactions of each kind.
    pub iterations: u32,
    /// The kinds, the business row alone first.
    pub kinds: Vec<WriteKind>,
    /// p50 added by a one-message WAL-mode enqueue ÷ p50 added by a one-message table-mode enqueue.
    pub wal_vs_table_added: f64,
    /// p50 added by `SELECT 1` ÷ p50 added by a one-message table-mode enqueue: the floor of any
    /// enqueue that is a statement of its own.
    pub round_trip_vs_table_added: f64,
}

/// Drain: the same backlog drained in table mode, WAL mode, table mode.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WalDrain {
    /// Messages in each backlog.
    pub backlog: u64,
    /// Messages a WAL relay reads ahead of what it settled.
    pub wal_buffer_messages: usize,
    /// Table mode, just before WAL mode.
    pub table_before: Throughput,
    /// WAL mode.
    pub wal: Throughput,
    /// Table mode, just after WAL mode.
    pub table_after: Throughput,
    /// WAL ÷ the mean of the two table drains.
    pub wal_vs_table: f64,
}

/// Latency: the same loads in table mode (wake-ups) and in WAL mode.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WalLatency {
    /// Seconds per load.
    pub seconds: u64,
    /// The relays' poll interval, ms (table mode is woken by `NOTIFY`, WAL mode by the stream).
    pub poll_interval_ms: u64,
    /// Every load, table mode (`wake-ups`) then WAL mode (`wal`).
    pub points: Vec<LatencyPoint>,
    /// The broker alone at each load, measured between the two modes.
    #[serde(default)]
    pub broker_floor: Vec<BrokerFloor>,
}

impl WalLatency {
    /// The point of `mode` at `offered`.
    pub fn point(&self, mode: &str, offered: u32) -> Option<&LatencyPoint> {
        self.points
            .iter()
            .find(|p| p.mode == mode && p.offered == offered)
    }
}

/// Results of the WAL part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WalReport {
    /// The replication slot read (dropped after the part).
    pub slot: String,
    /// Write cost.
    pub write_cost: WalWriteCost,
    /// Drain.
    pub drain: WalDrain,
    /// Latency.
    pub latency: WalLatency,
}

/// The latency modes compared.
pub const TABLE_MODE: &str = "wake-ups";
/// The WAL mode's name in [`WalLatency::points`].
pub const WAL_MODE: &str = "wal";

/// Runs the WAL part: creates the slot, measures, drops the slot (whether the measurements
/// succeeded or not; a slot left behind is dropped with the database).
///
/// # Errors
/// When the server cannot capture or a service fails.
pub async fn run(bench: &Bench, options: &Options) -> anyhow::Result<WalReport> {
    crate::slot::create(bench).await?;
    let result = measure(bench, options).await;
    if let Err(error) = crate::slot::drop(bench).await {
        crate::progress(format!(
            "could not drop slot {} after the WAL part: {error:#}",
            bench.slot
        ));
    }
    result
}

async fn measure(bench: &Bench, options: &Options) -> anyhow::Result<WalReport> {
    let write_cost = write_cost(bench, options).await?;
    let drain = drain(bench, options).await?;
    let mut points = latency::run_mode(
        bench,
        options,
        &Mode::table(TABLE_MODE, true, latency::WAKE_UP_POLL),
    )
    .await?;
    let broker_floor = latency::broker_floor(bench, options).await?;
    points.extend(latency::run_mode(bench, options, &Mode::wal()).await?);
    Ok(WalReport {
        slot: bench.slot.to_string(),
        write_cost,
        drain,
        latency: WalLatency {
            seconds: options.latency_window().as_secs(),
            poll_interval_ms: latency::WAKE_UP_POLL.as_millis() as u64,
            points,
            broker_floor,
        },
    })
}

async fn write_cost(bench: &Bench, options: &Options) -> anyhow::Result<WalWriteCost> {
    let iterations = options.write_path_iterations();
    crate::progress(format!(
        "wal: write cost, {iterations} transactions of each kind"
    ));
    let (table, quiet, wal) = (
        Capture::Table.outbox(),
        PgOutbox::new().notify(false),
        Capture::Wal.outbox(),
    );
    let kinds = write_path::measure(
        bench,
        iterations,
        &[
            ("business row only", Kind::Alone),
            ("+ 1 message, table mode", Kind::Enqueue(1, &table)),
            ("+ 1 message, WAL mode", Kind::Enqueue(1, &wal)),
            (
                "+ 1 message, table mode without NOTIFY",
                Kind::Enqueue(1, &quiet),
            ),
            ("+ 10 messages, table mode", Kind::Enqueue(10, &table)),
            ("+ 10 messages, WAL mode", Kind::Enqueue(10, &wal)),
            (
                "+ SELECT 1 (one more round trip, no message)",
                Kind::RoundTrip,
            ),
        ],
    )
    .await?;
    let added = |index: usize| kinds.get(index).map_or(0.0, |k| k.added_ms);
    let table_added = added(1).max(1e-9);
    crate::progress(format!(
        "  added p50: table {:.3} ms, WAL {:.3} ms, SELECT 1 {:.3} ms",
        added(1),
        added(2),
        added(6)
    ));
    Ok(WalWriteCost {
        iterations,
        wal_vs_table_added: added(2) / table_added,
        round_trip_vs_table_added: added(6) / table_added,
        kinds,
    })
}

async fn drain(bench: &Bench, options: &Options) -> anyhow::Result<WalDrain> {
    let count = options.messages();
    let mut drained = Vec::new();
    for capture in [Capture::Table, Capture::Wal, Capture::Table] {
        crate::progress(format!(
            "wal: drain of {count} messages, {} mode",
            capture.label()
        ));
        let throughput = relay_drain(bench, options, capture, 1, count).await?;
        crate::progress(format!("  {:.0} msg/s", throughput.per_second));
        drained.push(throughput);
    }
    bench.reset().await?;
    let [table_before, wal, table_after] = drained[..] else {
        anyhow::bail!("three drains were expected");
    };
    let table = (table_before.per_second + table_after.per_second) / 2.0;
    Ok(WalDrain {
        backlog: count,
        wal_buffer_messages: bench.wal_buffer,
        table_before,
        wal,
        table_after,
        wal_vs_table: wal.per_second / table.max(1e-9),
    })
}
