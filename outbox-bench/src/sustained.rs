//! Part 2, sustained: writers commit a business row and a message per transaction at rising rates
//! while the relay runs; the highest rate it keeps up with, next to the same writers with a raw
//! claim+delete loop draining the same database without Kafka (the writer+drain ceiling). At every
//! rate the two run back to back, each on an emptied outbox, so that both see the same moment of a
//! shared, noisy machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use outbox_core::CancellationToken;
use outbox_postgres::PgOutbox;
use sqlx::{Connection, PgConnection};

use crate::Options;
use crate::capture::Capture;
use crate::env::Bench;
use crate::relays::{self, RunningRelay};
use crate::workload::{Load, write_paced};

/// First offered rate, messages per second.
const FIRST_RATE: f64 = 250.0;
/// Factor between rates.
const GROWTH: f64 = 1.25;
/// Highest rate tried.
const MAX_RATE: f64 = 60_000.0;
/// How often the backlog is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How a step is judged.
pub const CRITERION: &str = "a step is kept up with when the smallest backlog (committed − published) seen during \
its last second was at most max(2 × batch size, a quarter second of messages); the rate reported is the highest \
rate the writers achieved in a step kept up with. Rates rise by 1.25×, the relay and the ceiling back to back at \
each rate, each until its first step that is not kept up with or in which the writers achieve less than 95 % of \
the offered rate (saturated: the machine cannot write faster next to this drain)";

/// One offered rate.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// Offered messages per second.
    pub offered: f64,
    /// Committed messages per second.
    pub achieved: f64,
    /// Smallest backlog in the step's last second.
    pub backlog_last_second: u64,
    /// Largest backlog seen.
    pub backlog_max: u64,
    /// Whether the drain kept up.
    pub kept_up: bool,
    /// Whether the writers achieved less than 95 % of the offered rate.
    pub saturated: bool,
}

impl Step {
    /// Whether the next rate is worth offering.
    fn passed(&self) -> bool {
        self.kept_up && !self.saturated
    }
}

/// The rates tried for one drain and the highest kept up with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Search {
    /// Highest achieved rate of a step that kept up (0 if none did).
    pub highest: f64,
    /// Every step, in the order run.
    pub steps: Vec<Step>,
}

impl Search {
    fn of(steps: Vec<Step>) -> Self {
        let highest = steps
            .iter()
            .filter(|step| step.kept_up)
            .map(|step| step.achieved)
            .fold(0.0, f64::max);
        Self { highest, steps }
    }
}

/// Results of the sustained part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SustainedReport {
    /// Seconds per step.
    pub step_seconds: u64,
    /// Writer connections.
    pub writers: usize,
    /// The rule deciding whether a step kept up.
    pub criterion: String,
    /// The relay draining to Kafka.
    pub relay: Search,
    /// A raw claim+delete loop draining, no Kafka.
    pub ceiling: Search,
    /// relay.highest / ceiling.highest.
    pub relay_vs_ceiling: f64,
}

/// Runs the sustained part.
///
/// # Errors
/// When a service fails.
pub async fn run(bench: &Bench, options: &Options) -> anyhow::Result<SustainedReport> {
    let topic = bench.topic("sustained", options.partitions()).await?;
    let (mut relay, mut ceiling) = (Vec::new(), Vec::new());
    let mut rate = FIRST_RATE;
    let going = |steps: &[Step]| steps.last().is_none_or(Step::passed);
    while (going(&relay) || going(&ceiling)) && rate <= MAX_RATE {
        for (kind, steps) in [(Drain::Relay, &mut relay), (Drain::Raw, &mut ceiling)] {
            if going(steps) {
                let step = run_step(bench, options, &topic, rate, kind).await?;
                steps.push(step);
            }
        }
        rate *= GROWTH;
    }
    bench.reset().await?;
    let (relay, ceiling) = (Search::of(relay), Search::of(ceiling));
    Ok(SustainedReport {
        step_seconds: options.step().as_secs(),
        writers: options.writers(),
        criterion: CRITERION.into(),
        relay_vs_ceiling: relay.highest / ceiling.highest.max(1e-9),
        relay,
        ceiling,
    })
}

/// What drains the outbox during a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// The relay, publishing to Kafka.
    Relay,
    /// Claim+delete in batches, no Kafka.
    Raw,
}

/// A drain running for one step; counts what it took out of the outbox.
struct ActiveDrain {
    drained: Arc<AtomicU64>,
    relays: Vec<RunningRelay>,
    raw: Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
}

impl ActiveDrain {
    async fn start(bench: &Bench, options: &Options, kind: Drain) -> anyhow::Result<Self> {
        if kind == Drain::Relay {
            let relays = relays::start_balanced(
                bench,
                Capture::Table,
                1,
                options.batch_size(),
                Duration::from_secs(1),
            )
            .await?;
            return Ok(Self {
                drained: relays[0].settled.clone(),
                relays,
                raw: None,
            });
        }
        let drained = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let conn = PgConnection::connect_with(&bench.connect).await?;
        let task = tokio::spawn(raw_drainer(
            conn,
            options.batch_size(),
            drained.clone(),
            stop.clone(),
        ));
        Ok(Self {
            drained,
            relays: Vec::new(),
            raw: Some((stop, task)),
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        relays::stop_all(self.relays).await;
        if let Some((stop, task)) = self.raw {
            stop.cancel();
            task.await??;
        }
        Ok(())
    }
}

/// Claims and deletes in batches until stopped, counting what it deleted.
async fn raw_drainer(
    mut conn: PgConnection,
    batch_size: usize,
    drained: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    while !stop.is_cancelled() {
        let taken = crate::baselines::claim_and_delete(&mut conn, batch_size).await?;
        drained.fetch_add(taken as u64, Ordering::Relaxed);
        if taken == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    conn.close().await?;
    Ok(())
}

/// Offers `rate` for one step on an emptied outbox with `kind` draining it.
async fn run_step(
    bench: &Bench,
    options: &Options,
    topic: &str,
    rate: f64,
    kind: Drain,
) -> anyhow::Result<Step> {
    bench.reset().await?;
    let drain = ActiveDrain::start(bench, options, kind).await?;
    let result = measure_step(bench, options, topic, rate, &drain.drained).await;
    drain.stop().await?;
    let step = result?;
    let kept = if step.kept_up {
        "kept up"
    } else {
        "not kept up"
    };
    let saturated = if step.saturated {
        ", writers saturated"
    } else {
        ""
    };
    crate::progress(format!(
        "  {kind:?} at {rate:.0}/s: achieved {:.0}/s, backlog {} (max {}): {kept}{saturated}",
        step.achieved, step.backlog_last_second, step.backlog_max
    ));
    Ok(step)
}

/// Offers `rate` for one step and samples the backlog left by whatever counts into `drained`.
async fn measure_step(
    bench: &Bench,
    options: &Options,
    topic: &str,
    rate: f64,
    drained: &Arc<AtomicU64>,
) -> anyhow::Result<Step> {
    let committed = Arc::new(AtomicU64::new(0));
    let backlog = || {
        committed
            .load(Ordering::Relaxed)
            .saturating_sub(drained.load(Ordering::Relaxed))
    };
    let load = Load {
        rate,
        duration: options.step(),
    };
    let done = AtomicBool::new(false);
    let sampling = async {
        let mut samples = Vec::new();
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(SAMPLE_EVERY).await;
            samples.push(backlog());
        }
        samples
    };
    let writing = async {
        let written = write_paced(
            &bench.pool,
            &PgOutbox::new(),
            topic,
            load,
            options.writers(),
            &committed,
            false,
        )
        .await;
        done.store(true, Ordering::Relaxed);
        written
    };
    let (written, samples) = tokio::join!(writing, sampling);
    let written = written?;
    let last_second = (Duration::from_secs(1).as_millis() / SAMPLE_EVERY.as_millis()) as usize;
    let backlog_last_second = samples
        .iter()
        .rev()
        .take(last_second)
        .copied()
        .min()
        .unwrap_or_else(backlog);
    let bound = (2 * options.batch_size() as u64).max((rate / 4.0) as u64);
    let achieved = written.rate();
    let step = Step {
        offered: rate,
        achieved,
        backlog_last_second,
        backlog_max: samples.iter().copied().max().unwrap_or(0),
        kept_up: backlog_last_second <= bound,
        saturated: achieved < 0.95 * rate,
    };
    Ok(step)
}
