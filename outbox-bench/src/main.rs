//! `outbox-bench`: what the outbox costs, measured on real PostgreSQL and Apache Kafka
//! (`scripts/services.sh`), as ratios against baselines measured in the same run.
//!
//! `cargo run --release -p outbox-bench -- all` runs every part and writes a JSON file, a Markdown
//! table and an SVG chart under `target/bench-results/`; `--quick` shrinks every size for a smoke
//! run. Each part also runs alone (`drain`, `sustained`, `latency`, `write-path`, `scaling`,
//! `wal`, `peers`: Debezium's outbox event router next to the relay, from `scripts/peers.sh`).
//! Services come from `DATABASE_URL` and `KAFKA_BROKERS` (`eval "$(scripts/services.sh)"`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod baselines;
mod capture;
mod chart;
mod chart_peers;
mod cpu;
mod drain;
mod env;
mod latency;
mod machine;
mod markdown;
mod markdown_peers;
mod markdown_wal;
mod observe;
mod peers;
mod receiver;
mod relays;
mod report;
mod scaling;
mod slot;
mod spread;
mod stats;
mod sustained;
mod wal;
mod workload;
mod write_path;

/// Benchmarks of the transactional outbox, as ratios against baselines of the same run.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Which part to run.
    #[command(subcommand)]
    part: Part,
    /// Sizes and services.
    #[command(flatten)]
    options: Options,
}

/// The parts of the benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
enum Part {
    /// Every part below, in this order.
    All,
    /// Draining a backlog: the relay against raw claim+delete, raw produce and a naive relay.
    Drain,
    /// The highest write rate the relay keeps up with, against the writer+drain ceiling without Kafka.
    Sustained,
    /// Commit → broker ack and commit → consumer receipt at fixed loads, with wake-ups and polling.
    Latency,
    /// What enqueuing adds to a one-row business transaction.
    WritePath,
    /// Draining with 1, 2 and 4 relays.
    Scaling,
    /// WAL capture next to table mode, back to back: write cost, drain and latency.
    Wal,
    /// Debezium's outbox event router next to the relay (table and WAL mode): drain, latency,
    /// write cost, order and loss.
    Peers,
    /// Renders the Markdown and the chart of an earlier run again from its JSON file (next to it),
    /// without running anything.
    Render {
        /// The JSON file of the run.
        json: PathBuf,
    },
    /// Prints, as Markdown, each target's lowest, median and highest value over several runs
    /// (their JSON files), without running anything.
    Spread {
        /// The JSON files of the runs.
        #[arg(required = true)]
        json: Vec<PathBuf>,
    },
}

/// Sizes of every part and where the services are. `--quick` changes the defaults, not the
/// values given explicitly.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// PostgreSQL server; the benchmark creates (and drops) a database of its own on it.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    brokers: Option<String>,
    /// Small sizes everywhere (about two minutes for `all`).
    #[arg(long, global = true)]
    quick: bool,
    /// Drain (and the WAL part's drains): messages in the backlog [default: 200000, quick 20000].
    #[arg(long, global = true)]
    messages: Option<u64>,
    /// Drain: most messages the naive relay publishes [default: 5000, quick 1000].
    #[arg(long, global = true)]
    naive_messages: Option<u64>,
    /// Drain: longest the naive relay runs, in seconds [default: 30, quick 10].
    #[arg(long, global = true)]
    naive_seconds: Option<u64>,
    /// Scaling: messages in the backlog of each run [default: 100000, quick 20000].
    #[arg(long, global = true)]
    scaling_messages: Option<u64>,
    /// Sustained: seconds per offered rate [default: 8, quick 4].
    #[arg(long, global = true)]
    step_seconds: Option<u64>,
    /// Latency: seconds per offered load [default: 10, quick 4].
    #[arg(long, global = true)]
    latency_seconds: Option<u64>,
    /// Latency: offered loads in messages per second.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "100,1000,5000"
    )]
    loads: Vec<u32>,
    /// Latency: the relay's poll interval in the polling runs (no wake-ups), in milliseconds.
    #[arg(long, global = true, default_value_t = 100)]
    poll_interval_ms: u64,
    /// Write path: transactions of each kind [default: 2000, quick 300].
    #[arg(long, global = true)]
    write_path_iterations: Option<u32>,
    /// Messages per claim, for the relay and for the raw claim+delete baseline.
    #[arg(long, global = true, default_value_t = 500)]
    batch_size: usize,
    /// The relay's lane window: most messages of one lane in flight.
    #[arg(long, global = true, default_value_t = 256)]
    window: usize,
    /// The relay's in-flight budget, in messages.
    #[arg(long, global = true, default_value_t = 2000)]
    max_in_flight: usize,
    /// Into how many groups the relay's claims split its lanes.
    #[arg(long, global = true, default_value_t = 2)]
    phases: usize,
    /// Partitions of every topic the benchmark creates.
    #[arg(long, global = true, default_value_t = 8)]
    partitions: i32,
    /// Replicas of every topic the benchmark creates: 3 on the three-node cluster
    /// (`scripts/bench.sh --cluster`), where `min.insync.replicas` is 2.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    replication_factor: i32,
    /// Writer connections of the sustained and latency parts.
    #[arg(long, global = true, default_value_t = 16)]
    writers: usize,
    /// librdkafka producer property for the relay and every baseline, as key=value (repeatable);
    /// the relay's own defaults (idempotence, acks=all, linger.ms=1, ...) apply to what is not given.
    #[arg(short = 'X', long = "producer-property", global = true, value_name = "KEY=VALUE", value_parser = parse_property)]
    producer_properties: Vec<(String, String)>,
    /// Where to write the JSON result; the Markdown and SVG go next to it
    /// [default: target/bench-results/UTC-TIME.json].
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// How the broker is described in the report.
    #[arg(
        long,
        global = true,
        default_value = "Apache Kafka 4.1.1, one KRaft node (scripts/services.sh)"
    )]
    broker_description: String,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().into(), value.trim().into()))
        }
        _ => Err(format!("`{text}` is not key=value")),
    }
}

impl Options {
    fn pick<T>(&self, given: Option<T>, full: T, quick: T) -> T {
        given.unwrap_or(if self.quick { quick } else { full })
    }

    /// Drain backlog size.
    pub fn messages(&self) -> u64 {
        self.pick(self.messages, 200_000, 20_000)
    }

    /// Most messages of the naive relay.
    pub fn naive_messages(&self) -> u64 {
        self.pick(self.naive_messages, 5_000, 1_000)
    }

    /// Longest run of the naive relay.
    pub fn naive_window(&self) -> Duration {
        Duration::from_secs(self.pick(self.naive_seconds, 30, 10))
    }

    /// Scaling backlog size.
    pub fn scaling_messages(&self) -> u64 {
        self.pick(self.scaling_messages, 100_000, 20_000)
    }

    /// Duration of one sustained step.
    pub fn step(&self) -> Duration {
        Duration::from_secs(self.pick(self.step_seconds, 8, 4))
    }

    /// Duration of one latency load.
    pub fn latency_window(&self) -> Duration {
        Duration::from_secs(self.pick(self.latency_seconds, 10, 4))
    }

    /// Transactions of each write-path kind.
    pub fn write_path_iterations(&self) -> u32 {
        self.pick(self.write_path_iterations, 2_000, 300)
    }

    /// Offered latency loads.
    pub fn loads(&self) -> &[u32] {
        &self.loads
    }

    /// Poll interval of the polling latency runs.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(1))
    }

    /// Messages per claim.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Partitions per topic.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Replicas per topic.
    pub fn replication_factor(&self) -> i32 {
        self.replication_factor
    }

    /// Writer connections.
    pub fn writers(&self) -> usize {
        self.writers.max(1)
    }

    /// Producer properties given with `-X`.
    pub fn producer_properties(&self) -> &[(String, String)] {
        &self.producer_properties
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only errors by default: the engine's warnings would drown the progress lines.
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli.part, cli.options)));
    if let Err(error) = result {
        // `{:#}` prints the whole chain of causes on one line.
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn run(part: Part, options: Options) -> anyhow::Result<()> {
    if let Part::Render { json } = &part {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let mut report: report::Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not the JSON of a run", json.display()))?;
        // The targets as this version states them (an older run's file may lack some).
        report.check_targets();
        return report::write(&report, Some(json.clone()));
    }
    if let Part::Spread { json } = &part {
        print!("{}", spread::render(json)?);
        return Ok(());
    }
    let bench = env::Bench::create(&options).await?;
    let result = run_parts(&part, &options, &bench).await;
    bench.clean_up().await;
    let report = result?;
    report::write(&report, options.out.clone())
}

async fn run_parts(
    part: &Part,
    options: &Options,
    bench: &env::Bench,
) -> anyhow::Result<report::Report> {
    let mut report = report::Report::new(machine::describe(bench, options).await, options);
    let wanted = |p: Part| *part == Part::All || *part == p;
    if wanted(Part::Drain) {
        report.drain = Some(drain::run(bench, options).await?);
    }
    if wanted(Part::Sustained) {
        report.sustained = Some(sustained::run(bench, options).await?);
    }
    if wanted(Part::Latency) {
        report.latency = Some(latency::run(bench, options).await?);
    }
    if wanted(Part::WritePath) {
        report.write_path = Some(write_path::run(bench, options).await?);
    }
    if wanted(Part::Scaling) {
        report.scaling = Some(scaling::run(bench, options).await?);
    }
    if wanted(Part::Wal) {
        report.wal = Some(wal::run(bench, options).await?);
    }
    if wanted(Part::Peers) {
        report.peers = Some(peers::run(bench, options).await?);
    }
    report.load_average_at_end = machine::load_average();
    report.check_targets();
    Ok(report)
}

/// Prints a progress line on stderr (the results go to stdout and the files).
pub fn progress(text: impl std::fmt::Display) {
    eprintln!("[{}] {text}", chrono::Utc::now().format("%H:%M:%S%.3f"));
}
