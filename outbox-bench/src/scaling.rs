//! Part 5, scaling: the drain of part 1 with 1, 2 and 4 relays in this process. The relays start on
//! an empty outbox and the clock starts only once the lanes are spread evenly among them (64 lanes:
//! 64, 32 or 16 each) and the backlog committed.

use crate::Options;
use crate::baselines::Throughput;
use crate::capture::Capture;
use crate::drain::relay_drain;
use crate::env::Bench;

/// Relay counts measured.
const RELAYS: [usize; 3] = [1, 2, 4];

/// One relay count.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ScalingPoint {
    /// Relays draining together.
    pub relays: usize,
    /// Their combined drain.
    pub drain: Throughput,
    /// Over the drain of one relay.
    pub speedup: f64,
}

/// Results of the scaling part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScalingReport {
    /// Messages per run.
    pub backlog: u64,
    /// One point per relay count.
    pub points: Vec<ScalingPoint>,
}

/// Runs the scaling part.
///
/// # Errors
/// When a service fails.
pub async fn run(bench: &Bench, options: &Options) -> anyhow::Result<ScalingReport> {
    let count = options.scaling_messages();
    let mut points: Vec<ScalingPoint> = Vec::new();
    for relays in RELAYS {
        crate::progress(format!("scaling: {relays} relay(s) over {count} messages"));
        let drain = relay_drain(bench, options, Capture::Table, relays, count).await?;
        let single = points
            .first()
            .map_or(drain.per_second, |p| p.drain.per_second);
        crate::progress(format!("  {:.0} msg/s", drain.per_second));
        points.push(ScalingPoint {
            relays,
            drain,
            speedup: drain.per_second / single,
        });
    }
    bench.reset().await?;
    Ok(ScalingReport {
        backlog: count,
        points,
    })
}
