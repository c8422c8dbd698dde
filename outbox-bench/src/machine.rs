//! What the benchmark ran on, recorded with every result.

use crate::Options;
use crate::env::Bench;

/// The machine, the services and the toolchain of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// UTC start of the run.
    pub started_at: String,
    /// Logical cores.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// 1-, 5- and 15-minute load averages at the start (others share the machine).
    pub load_average: String,
    /// `SELECT version()`.
    pub postgres: String,
    /// The broker, as given by `--broker-description`.
    pub broker: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `git describe --always --dirty` of the code measured.
    pub revision: String,
}

/// The 1-, 5- and 15-minute load averages now.
pub fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The first line `program args` prints, or `unknown`.
fn output_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Describes this machine and the services of `bench`; what cannot be read says `unknown`.
pub async fn describe(bench: &Bench, options: &Options) -> Machine {
    let postgres = sqlx::query_scalar::<_, String>("SELECT version()")
        .fetch_one(&bench.pool)
        .await
        .unwrap_or_else(|_| "unknown".into());
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let memory_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        cpu,
        memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        load_average: load_average(),
        postgres,
        broker: options.broker_description.clone(),
        rustc: output_of("rustc", &["--version"]),
        revision: output_of("git", &["describe", "--always", "--dirty"]),
    }
}
