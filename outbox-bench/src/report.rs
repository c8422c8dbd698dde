//! A run's results: JSON, a Markdown table, the targets and whether each was met.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::Options;
use crate::drain::DrainReport;
use crate::latency::LatencyReport;
use crate::machine::Machine;
use crate::scaling::ScalingReport;
use crate::sustained::SustainedReport;
use crate::wal::{TABLE_MODE, WAL_MODE, WalReport};
use crate::write_path::WritePathReport;

/// One target, stated as a ratio or a bound measured in the same run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The goal.
    pub goal: String,
    /// What this run measured.
    pub measured: String,
    /// What this run measured, as a number; `None` when the part did not run.
    #[serde(default)]
    pub value: Option<f64>,
    /// Whether it was met; `None` when the part did not run.
    pub met: Option<bool>,
}

/// A target's bound on a measured value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
}

impl Bound {
    /// A target named `name` for `value` (in `unit`; "" for a ratio), checked against this bound.
    pub fn target(self, name: &str, value: Option<f64>, unit: &str) -> Target {
        let (sign, goal, met) = match self {
            Self::AtLeast(goal) => ("≥", goal, value.map(|v| v >= goal)),
            Self::AtMost(goal) => ("≤", goal, value.map(|v| v <= goal)),
        };
        let measured = value.map_or("not run".into(), |v| match (self, unit) {
            // A ratio next to an upper bound: three digits, so that 0.504 does not read 0.50.
            (Self::AtMost(_), "") => format!("{v:.3}"),
            (Self::AtMost(_), _) => format!("{v:.1}{unit}"),
            (Self::AtLeast(_), _) => format!("{v:.2}{unit}"),
        });
        Target {
            name: name.into(),
            goal: format!("{sign} {goal}{unit}"),
            measured,
            value,
            met,
        }
    }
}

/// Settings of the run that shape its numbers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// `--quick`.
    pub quick: bool,
    /// Messages per claim.
    pub batch_size: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// Replicas per topic.
    #[serde(default = "one")]
    pub replication_factor: i32,
    /// Writer connections.
    pub writers: usize,
    /// Payload bytes per message.
    pub payload_bytes: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Producer properties given with `-X`.
    pub producer_properties: Vec<String>,
}

fn one() -> i32 {
    1
}

/// Everything a run measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// How it ran.
    pub settings: Settings,
    /// Part 1.
    pub drain: Option<DrainReport>,
    /// Part 2.
    pub sustained: Option<SustainedReport>,
    /// Part 3.
    pub latency: Option<LatencyReport>,
    /// Part 4.
    pub write_path: Option<WritePathReport>,
    /// Part 5.
    pub scaling: Option<ScalingReport>,
    /// Part 6: WAL capture next to table mode.
    #[serde(default)]
    pub wal: Option<WalReport>,
    /// Part 7: Debezium next to the relay.
    #[serde(default)]
    pub peers: Option<crate::peers::PeersReport>,
    /// The targets, checked.
    pub targets: Vec<Target>,
    /// Load averages when the run ended (the machine is shared: compare with the start's).
    pub load_average_at_end: String,
}

impl Report {
    /// An empty report of a run on `machine` with `options`.
    pub fn new(machine: Machine, options: &Options) -> Self {
        Self {
            machine,
            settings: Settings {
                quick: options.quick,
                batch_size: options.batch_size(),
                partitions: options.partitions(),
                replication_factor: options.replication_factor(),
                writers: options.writers(),
                payload_bytes: crate::workload::PAYLOAD_BYTES,
                keys: crate::workload::KEYS,
                producer_properties: options
                    .producer_properties()
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect(),
            },
            drain: None,
            sustained: None,
            latency: None,
            write_path: None,
            scaling: None,
            wal: None,
            peers: None,
            targets: Vec::new(),
            load_average_at_end: String::new(),
        }
    }

    /// Fills [`Report::targets`] from the parts that ran.
    pub fn check_targets(&mut self) {
        use Bound::{AtLeast, AtMost};
        let wal = self.wal.as_ref();
        let wal_ack_p99 = wal.and_then(|w| w.latency.point(WAL_MODE, 1000).map(|p| p.ack.p99_ms));
        let ack_p99 = self.latency.as_ref().and_then(|l| {
            l.points
                .iter()
                .find(|p| p.mode == "wake-ups" && p.offered == 1000)
                .map(|p| p.ack.p99_ms)
        });
        self.targets = vec![
            AtLeast(0.9).target(
                "drain / both jobs at once (raw claim+delete with raw produce)",
                self.drain.as_ref().map(|d| d.relay_vs_both),
                "",
            ),
            AtLeast(20.0).target(
                "drain / naive relay",
                self.drain.as_ref().map(|d| d.relay_vs_naive),
                "",
            ),
            AtLeast(0.9).target(
                "sustained / writer+drain ceiling",
                self.sustained.as_ref().map(|s| s.relay_vs_ceiling),
                "",
            ),
            AtMost(20.0).target("commit → ack p99 at 1,000 msg/s, wake-ups", ack_p99, " ms"),
            AtMost(10.0).target(
                "enqueue (1 message) added to a one-row transaction",
                self.write_path
                    .as_ref()
                    .and_then(WritePathReport::one_message_added_percent),
                " %",
            ),
            AtMost(0.5).target(
                "WAL-mode enqueue ÷ table-mode enqueue, time added to a one-row transaction (p50)",
                wal.map(|w| w.write_cost.wal_vs_table_added),
                "",
            ),
            AtLeast(1.5).target(
                "WAL drain ÷ table drain, same backlog",
                wal.map(|w| w.drain.wal_vs_table),
                "",
            ),
            AtMost(20.0).target("WAL commit → ack p99 at 1,000 msg/s", wal_ack_p99, " ms"),
        ];
        self.targets.extend(
            crate::peers::ratios(self.peers.as_ref())
                .into_iter()
                .map(|(name, value, bound)| bound.target(&name, value, "")),
        );
    }
}

/// The latency chart of the latency part's modes and the WAL part's (a WAL part's table-mode run
/// only when the latency part did not run), or `None` when neither ran.
fn chart(report: &Report) -> Option<String> {
    if report.latency.is_none() && report.wal.is_none() {
        return None;
    }
    let mut points = Vec::new();
    let mut floor: &[crate::latency::BrokerFloor] = &[];
    let mut notes = Vec::new();
    if let Some(latency) = &report.latency {
        points.extend(latency.points.iter().cloned());
        floor = &latency.broker_floor;
        notes.push(format!(
            "wake-ups: NOTIFY, poll {} ms; polling: poll {} ms",
            latency.wake_up_poll_interval_ms, latency.polling_interval_ms
        ));
    }
    if let Some(wal) = &report.wal {
        if floor.is_empty() {
            floor = &wal.latency.broker_floor;
        }
        let table_shown = points.iter().any(|p| p.mode == TABLE_MODE);
        points.extend(
            wal.latency
                .points
                .iter()
                .filter(|p| !(table_shown && p.mode == TABLE_MODE))
                .cloned(),
        );
        if !table_shown {
            notes.push(format!(
                "wake-ups: table mode, NOTIFY, poll {} ms",
                wal.latency.poll_interval_ms
            ));
        }
        notes.push(format!(
            "wal: replication slot, poll {} ms",
            wal.latency.poll_interval_ms
        ));
    }
    Some(crate::chart::latency_svg(&points, floor, &notes.join("; ")))
}

/// Writes `contents` to `path`, naming the path on failure.
fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes `report` as JSON to `out` (default `target/bench-results/<UTC time>.json`), the Markdown
/// and, when latency ran, the SVG chart next to it; prints the Markdown.
///
/// # Errors
/// When a file cannot be written.
pub fn write(report: &Report, out: Option<PathBuf>) -> anyhow::Result<()> {
    let json = out.unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from("target"), PathBuf::from)
            .join("bench-results")
            .join(format!(
                "{}.json",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ))
    });
    if let Some(dir) = json.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let markdown = crate::markdown::render(report);
    let mut files = vec![
        (json.clone(), serde_json::to_string_pretty(report)?),
        (json.with_extension("md"), markdown.clone()),
    ];
    if let Some(svg) = chart(report) {
        files.push((json.with_extension("svg"), svg));
    }
    if let Some(peers) = &report.peers {
        let stem = json
            .file_stem()
            .map_or_else(|| "run".into(), |stem| stem.to_string_lossy().into_owned());
        let charts = [
            ("peers-latency", crate::chart_peers::latency(peers)),
            ("peers-drain", crate::chart_peers::drain(peers)),
        ];
        for (name, svg) in charts {
            if let Some(svg) = svg {
                files.push((json.with_file_name(format!("{stem}-{name}.svg")), svg));
            }
        }
    }
    for (path, contents) in &files {
        write_file(path, contents)?;
    }
    println!("{markdown}");
    let names: Vec<String> = files
        .iter()
        .map(|(path, _)| path.display().to_string())
        .collect();
    crate::progress(format!("wrote {}", names.join(", ")));
    Ok(())
}
