//! Part 7, peers: Debezium's outbox event router (`scripts/peers.sh`) next to the relay, on the
//! same PostgreSQL and Kafka, with one end condition for both: a consumer of the topic.
//!
//! * write cost: the write-path part's method, `enqueue` against an insert into Debezium's table;
//! * drain: a committed backlog, commit → the last record read by the consumer;
//! * latency: paced writers, commit → receipt by the consumer;
//! * order and loss: per key, the first receipts in commit order, and nothing missing.
//!
//! Debezium runs in the benchmark's database (its own slot and publication) and routes each row to
//! the topic named by its `aggregatetype`; it is started before anything is written and stopped
//! (slot dropped) at the end of the part.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::Options;
use crate::baselines::Throughput;
use crate::capture::Capture;
use crate::env::Bench;
use crate::report::Bound;
use crate::stats::Summary;
use crate::workload::Sink;
use crate::write_path::{self, Kind, WriteKind};

mod runs;

use runs::{drain, latency};

const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS public.debezium_outbox (
    id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
    aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload bytea)";
/// The write-cost kinds that the ratios compare.
const ENQUEUE_TABLE: &str = "+ enqueue, table mode";
const ENQUEUE_WAL: &str = "+ enqueue, WAL mode";
const DEBEZIUM_INSERT: &str = "+ insert into Debezium's outbox table";
/// Longest wait for the consumer to have read everything.
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Who publishes the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Relay(Capture),
    Debezium,
}

impl Peer {
    fn label(self) -> &'static str {
        match self {
            Self::Relay(Capture::Table) => "relay, table mode",
            Self::Relay(Capture::Wal) => "relay, WAL mode",
            Self::Debezium => "Debezium",
        }
    }

    fn sink(self) -> Sink {
        match self {
            Self::Relay(capture) => Sink::Outbox(capture.outbox()),
            Self::Debezium => Sink::Debezium,
        }
    }
}

/// Order and loss as the consumer saw them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    /// Messages committed.
    pub committed: u64,
    /// Committed messages never read.
    pub missing: u64,
    /// Records read more than once.
    pub duplicates: u64,
    /// Keys whose first receipts were not in commit order.
    pub reordered_keys: u64,
}

impl Delivery {
    /// Nothing missing and nothing out of order.
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.reordered_keys == 0
    }
}

/// One measurement of one peer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PeerPoint {
    /// Who published.
    pub peer: String,
    /// Offered msg/s; 0 for the drain.
    pub offered: u32,
    /// Drain: commit → last record read; latency: committed msg/s.
    pub throughput: Throughput,
    /// Commit → receipt (latency runs).
    pub receipt: Summary,
    /// Order and loss.
    pub delivery: Delivery,
}

/// Results of the peers part.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PeersReport {
    /// Debezium's instance directory (its log is `debezium.log` in it).
    pub debezium_dir: String,
    /// Why Debezium could not be measured, if it could not.
    pub debezium_error: Option<String>,
    /// Write cost: business row alone, + enqueue, + Debezium insert.
    pub write_cost: Vec<WriteKind>,
    /// Drains of the same backlog.
    pub drain: Vec<PeerPoint>,
    /// Latency runs.
    pub latency: Vec<PeerPoint>,
    /// The broker alone at the same loads: send → acknowledgement.
    #[serde(default)]
    pub broker_floor: Vec<crate::latency::BrokerFloor>,
}

/// Runs the peers part; a Debezium that does not start is reported, not an error.
///
/// # Errors
/// When a service fails while measuring the relay.
pub async fn run(bench: &Bench, options: &Options) -> anyhow::Result<PeersReport> {
    sqlx::raw_sql(TABLE_SQL).execute(&bench.pool).await?;
    let dir = PathBuf::from("target/bench-results").join(format!("peers-{}", bench.name()));
    std::fs::create_dir_all(&dir)?;
    let mut report = PeersReport {
        debezium_dir: dir.display().to_string(),
        ..PeersReport::default()
    };
    report.write_cost = write_cost(bench, options).await?;
    report.broker_floor = crate::latency::broker_floor(bench, options).await?;
    let mut peers = vec![Peer::Relay(Capture::Table), Peer::Relay(Capture::Wal)];
    match peers_sh(bench, options, "start", &dir) {
        Ok(()) => peers.push(Peer::Debezium),
        Err(error) => {
            let text = format!("{error:#}; log: {}/debezium.log", dir.display());
            crate::progress(format!("peers: Debezium did not start: {text}"));
            report.debezium_error = Some(text);
        }
    }
    crate::slot::create(bench).await?;
    let result = measure(bench, options, &peers, &mut report).await;
    if let Err(error) = crate::slot::drop(bench).await {
        crate::progress(format!("could not drop slot {}: {error:#}", bench.slot));
    }
    if peers.contains(&Peer::Debezium)
        && let Err(error) = peers_sh(bench, options, "stop", &dir)
    {
        crate::progress(format!("peers: stopping Debezium failed: {error:#}"));
    }
    result.map(|()| report)
}

async fn measure(
    bench: &Bench,
    options: &Options,
    peers: &[Peer],
    report: &mut PeersReport,
) -> anyhow::Result<()> {
    let mut peers = peers.to_vec();
    for peer in peers.clone() {
        let point = drain(bench, options, peer).await;
        match point {
            Ok(point)
                if peer == Peer::Debezium && point.delivery.missing == point.delivery.committed =>
            {
                report.debezium_error = Some("Debezium published nothing of the drain's backlog; its latency runs are skipped".into());
                report.drain.push(point);
                peers.retain(|p| *p != Peer::Debezium);
            }
            Ok(point) => report.drain.push(point),
            Err(error) if peer == Peer::Debezium => {
                report.debezium_error = Some(format!("drain: {error:#}"));
            }
            Err(error) => return Err(error),
        }
    }
    for &offered in options.loads() {
        for &peer in &peers {
            match latency(bench, options, peer, offered).await {
                Ok(point) => report.latency.push(point),
                Err(error) if peer == Peer::Debezium => {
                    report.debezium_error = Some(format!("latency: {error:#}"));
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

/// `scripts/peers.sh COMMAND DIR` for the benchmark's database.
fn peers_sh(bench: &Bench, options: &Options, command: &str, dir: &PathBuf) -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/peers.sh");
    let mut cmd = std::process::Command::new(script);
    cmd.arg(command).arg(dir);
    if command == "start" {
        let name = bench.name();
        cmd.arg(format!("DEBEZIUM_DATABASE={name}"))
            .arg(format!("DEBEZIUM_SLOT={name}_debezium"))
            .arg(format!("DEBEZIUM_PUBLICATION={name}_debezium"));
    }
    if let Some(url) = &options.database_url {
        cmd.env("DATABASE_URL", url);
    }
    if let Some(brokers) = &options.brokers {
        cmd.env("KAFKA_BROKERS", brokers);
    }
    crate::progress(format!(
        "peers: scripts/peers.sh {command} {}",
        dir.display()
    ));
    let status = cmd.status().with_context(|| format!("running {script}"))?;
    anyhow::ensure!(
        status.success(),
        "scripts/peers.sh {command} failed ({status})"
    );
    Ok(())
}

async fn write_cost(bench: &Bench, options: &Options) -> anyhow::Result<Vec<WriteKind>> {
    let iterations = options.write_path_iterations();
    crate::progress(format!(
        "peers: write cost, {iterations} transactions of each kind"
    ));
    let (table, wal) = (Capture::Table.outbox(), Capture::Wal.outbox());
    // What the table-mode row costs without its commit-time wake-up: the rest is the row itself.
    let quiet = Capture::Table.outbox().notify(false);
    let kinds = write_path::measure(
        bench,
        iterations,
        &[
            ("business row only", Kind::Alone),
            (ENQUEUE_TABLE, Kind::Enqueue(1, &table)),
            (
                "+ enqueue, table mode, without NOTIFY",
                Kind::Enqueue(1, &quiet),
            ),
            (ENQUEUE_WAL, Kind::Enqueue(1, &wal)),
            (DEBEZIUM_INSERT, Kind::Debezium),
        ],
    )
    .await?;
    sqlx::raw_sql("TRUNCATE debezium_outbox")
        .execute(&bench.pool)
        .await?;
    Ok(kinds)
}

/// Relay ÷ Debezium, for each capture mode: drain, p99 receipt at 1,000 msg/s, write cost
/// added; with their bounds. A ratio is `None` when the part did not run or a side is missing.
pub fn ratios(r: Option<&PeersReport>) -> Vec<(String, Option<f64>, Bound)> {
    let debezium = "Debezium";
    let drain = |peer: &str| {
        r.and_then(|r| r.drain.iter().find(|p| p.peer == peer))
            .map(|p| p.throughput.per_second)
    };
    let p99 = |peer: &str| {
        r.and_then(|r| {
            r.latency
                .iter()
                .find(|p| p.peer == peer && p.offered == 1000)
        })
        .map(|p| p.receipt.p99_ms)
    };
    let written = |name: &str| {
        r.and_then(|r| r.write_cost.iter().find(|k| k.name == name))
            .map(|k| k.latency.p50_ms)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut out = Vec::new();
    for (mode, peer, enqueue) in [
        ("table", Peer::Relay(Capture::Table), ENQUEUE_TABLE),
        ("WAL", Peer::Relay(Capture::Wal), ENQUEUE_WAL),
    ] {
        out.push((
            format!("drain, relay ({mode}) ÷ Debezium"),
            ratio(drain(peer.label()), drain(debezium)),
            Bound::AtLeast(2.0),
        ));
        out.push((
            format!("p99 commit → receipt at 1,000/s, relay ({mode}) ÷ Debezium"),
            ratio(p99(peer.label()), p99(debezium)),
            Bound::AtMost(0.2),
        ));
        out.push((
            format!("write cost (p50 transaction), enqueue ({mode}) ÷ Debezium insert"),
            ratio(written(enqueue), written(DEBEZIUM_INSERT)),
            Bound::AtMost(1.0),
        ));
    }
    out
}
