//! Part 1, drain: one relay publishing a committed backlog, next to the three baselines.

use std::time::{Duration, Instant};

use crate::Options;
use crate::baselines::{self, Throughput};
use crate::capture::Capture;
use crate::env::Bench;
use crate::relays;

/// Longest a drain may take before the run is given up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);

/// Results of the drain part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrainReport {
    /// Messages in the backlog (relay and baselines a, b).
    pub backlog: u64,
    /// Messages per claim.
    pub batch_size: usize,
    /// The relay engine over `PgRelayStore` and `KafkaPublisher`.
    pub relay: Throughput,
    /// (a) claim+delete in batches, no publishing.
    pub raw_claim_delete: Throughput,
    /// (b) producing the same records, no database, just before the relay's drain.
    pub raw_produce: Throughput,
    /// (b) again, just after the relay's drain: the baseline is the mean of the two, which cancels
    /// a drift of the machine's load during the drain.
    pub raw_produce_after: Throughput,
    /// (c) one message per transaction; measured on a sample.
    pub naive: Throughput,
    /// How the naive relay's sample was bounded.
    pub naive_sample: String,
    /// (d) a and b at once, uncoupled: the machine's ceiling for doing both jobs.
    #[serde(default)]
    pub both_at_once: Throughput,
    /// relay / min(a, mean of the two b).
    pub relay_vs_baselines: f64,
    /// relay / d.
    #[serde(default)]
    pub relay_vs_both: f64,
    /// relay / c.
    pub relay_vs_naive: f64,
}

/// Drains a backlog of `count` messages of `capture` with `relay_count` relays that were ready
/// (lanes balanced; WAL mode: reading the slot) before the backlog was committed; the clock starts
/// when the commit returned and stops when the relays settled the last message.
///
/// # Errors
/// When a service fails or the drain takes longer than 30 minutes.
pub async fn relay_drain(
    bench: &Bench,
    options: &Options,
    capture: Capture,
    relay_count: usize,
    count: u64,
) -> anyhow::Result<Throughput> {
    bench.reset().await?;
    let topic = bench.topic("drain", options.partitions()).await?;
    let running = relays::start_balanced(
        bench,
        capture,
        relay_count,
        options.batch_size(),
        Duration::from_secs(1),
    )
    .await?;
    let filling = Instant::now();
    let committed = crate::workload::fill_backlog(&bench.pool, capture, &topic, count).await;
    let committed = match committed {
        Ok(committed) => committed,
        Err(error) => {
            relays::stop_all(running).await;
            return Err(error);
        }
    };
    let cpu = crate::cpu::Reading::now();
    crate::progress(format!(
        "  {count} messages committed in {:.1} s; draining",
        committed.duration_since(filling).as_secs_f64()
    ));
    let done = relays::wait_settled(&running, count, DRAIN_TIMEOUT).await;
    let usage = crate::cpu::Reading::now().since(cpu);
    relays::stop_all(running).await;
    let elapsed = done?.duration_since(committed);
    crate::progress(format!(
        "  relay process on CPU {:.0} % of the drain ({:.1} µs per message), machine idle {:.0} %",
        crate::cpu::share_of(usage, elapsed) * 100.0,
        crate::cpu::micros_per_message(usage, count),
        usage.machine_idle * 100.0
    ));
    Ok(Throughput {
        cpu: Some(usage),
        ..Throughput::new(count, elapsed)
    })
}

/// Baseline (b) on a fresh topic.
async fn produce(bench: &Bench, options: &Options, count: u64) -> anyhow::Result<Throughput> {
    let topic = bench.topic("produce", options.partitions()).await?;
    baselines::raw_produce(bench, &topic, count, options.batch_size()).await
}

/// Runs the drain part.
///
/// # Errors
/// When a service fails.
pub async fn run(bench: &Bench, options: &Options) -> anyhow::Result<DrainReport> {
    let count = options.messages();
    crate::progress(format!("drain: raw claim+delete of {count} messages"));
    let raw_claim_delete = baselines::raw_claim_delete(bench, count, options.batch_size()).await?;
    crate::progress(format!(
        "drain: {:.0} msg/s; raw produce of {count} records",
        raw_claim_delete.per_second
    ));
    let raw_produce = produce(bench, options, count).await?;
    crate::progress(format!(
        "drain: {:.0} msg/s; raw claim+delete and raw produce at once",
        raw_produce.per_second
    ));
    let topic = bench.topic("both", options.partitions()).await?;
    let both_at_once = baselines::both_at_once(bench, &topic, count, options.batch_size()).await?;
    crate::progress(format!(
        "drain: {:.0} msg/s; relay over {count} messages",
        both_at_once.per_second
    ));
    let relay = relay_drain(bench, options, Capture::Table, 1, count).await?;
    crate::progress(format!(
        "drain: {:.0} msg/s; raw produce again",
        relay.per_second
    ));
    let raw_produce_after = produce(bench, options, count).await?;
    let (naive_count, window) = (options.naive_messages(), options.naive_window());
    crate::progress(format!(
        "drain: {:.0} msg/s; naive relay (at most {naive_count} messages or {window:?})",
        raw_produce_after.per_second
    ));
    let topic = bench.topic("naive", options.partitions()).await?;
    let naive = baselines::naive_relay(bench, &topic, naive_count, window).await?;
    crate::progress(format!("drain: naive {:.0} msg/s", naive.per_second));
    bench.reset().await?;
    let produced = (raw_produce.per_second + raw_produce_after.per_second) / 2.0;
    let floor = raw_claim_delete.per_second.min(produced);
    Ok(DrainReport {
        backlog: count,
        batch_size: options.batch_size(),
        relay,
        raw_claim_delete,
        raw_produce,
        raw_produce_after,
        naive,
        naive_sample: format!(
            "{} messages in {:.1} s (sample bounded by {naive_count} messages or {} s)",
            naive.messages,
            naive.seconds,
            window.as_secs()
        ),
        both_at_once,
        relay_vs_baselines: relay.per_second / floor,
        relay_vs_both: relay.per_second / both_at_once.per_second.max(1e-9),
        relay_vs_naive: relay.per_second / naive.per_second.max(1e-9),
    })
}
