//! Part 3, latency: writers commit one message per transaction at fixed offered loads; for each
//! message, commit → broker acknowledgement (seen by the engine's publisher) and commit → receipt
//! by a consumer of the topic. Once with wake-ups (`LISTEN`/`NOTIFY`, the default) and once with
//! pure polling (`PgOutbox::notify(false)`, the relay polling at `--poll-interval-ms`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use outbox_core::{Fence, Publisher, StoredMessage};
use outbox_kafka::KafkaPublisher;
use outbox_postgres::PgOutbox;
use uuid::Uuid;

use crate::Options;
use crate::capture::Capture;
use crate::env::Bench;
use crate::observe::drain_clock;
use crate::receiver::Receiver;
use crate::relays::{self, RunningRelay};
use crate::stats::Summary;
use crate::workload::{Load, write_paced};

/// The relay's poll interval with wake-ups on: the shipped default.
pub const WAKE_UP_POLL: Duration = Duration::from_secs(1);
/// The load that warms up producer, consumer and connections before measuring (not reported).
const WARM_UP: Load = Load {
    rate: 100.0,
    duration: Duration::from_secs(1),
};

/// One offered load in one mode.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LatencyPoint {
    /// `wake-ups` or `polling`.
    pub mode: String,
    /// Offered messages per second.
    pub offered: u32,
    /// Committed messages per second.
    pub achieved: f64,
    /// Commit → broker acknowledgement.
    pub ack: Summary,
    /// Commit → consumer receipt.
    pub receipt: Summary,
    /// Commit → handed to the publisher (claimed and sent): the capture side's share.
    #[serde(default)]
    pub handed: Summary,
    /// Handed to the publisher → broker acknowledgement: the publishing side's share.
    #[serde(default)]
    pub publish: Summary,
    /// How late a thread sleeping 1 ms woke up during the load: the machine's scheduling delay.
    #[serde(default)]
    pub wake_delay: Summary,
}

/// The broker's own latency at one offered load: records produced one by one at that rate with the
/// relay's producer and settings, no database; send → acknowledgement.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BrokerFloor {
    /// Offered records per second.
    pub offered: u32,
    /// Send → acknowledgement.
    pub ack: Summary,
}

/// Results of the latency part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LatencyReport {
    /// Seconds per load.
    pub seconds: u64,
    /// The relay's poll interval with wake-ups, ms.
    pub wake_up_poll_interval_ms: u64,
    /// The relay's poll interval when polling, ms.
    pub polling_interval_ms: u64,
    /// Every load in both modes.
    pub points: Vec<LatencyPoint>,
    /// The broker alone at each load.
    pub broker_floor: Vec<BrokerFloor>,
}

/// Runs the latency part.
///
/// # Errors
/// When a service fails.
pub async fn run(bench: &Bench, options: &Options) -> anyhow::Result<LatencyReport> {
    let broker_floor = broker_floor(bench, options).await?;
    let mut points = Vec::new();
    for mode in [
        Mode::table("wake-ups", true, WAKE_UP_POLL),
        Mode::table("polling", false, options.poll_interval()),
    ] {
        points.extend(run_mode(bench, options, &mode).await?);
    }
    Ok(LatencyReport {
        seconds: options.latency_window().as_secs(),
        wake_up_poll_interval_ms: WAKE_UP_POLL.as_millis() as u64,
        polling_interval_ms: options.poll_interval().as_millis() as u64,
        points,
        broker_floor,
    })
}

/// The broker alone at every load of `options`, on a topic of its own.
///
/// # Errors
/// When the broker fails.
pub async fn broker_floor(bench: &Bench, options: &Options) -> anyhow::Result<Vec<BrokerFloor>> {
    let probe_topic = bench.topic("probe", options.partitions()).await?;
    let mut floor = Vec::new();
    for &offered in options.loads() {
        let load = Load {
            rate: f64::from(offered),
            duration: options.latency_window(),
        };
        let ack = produce_latency(bench, &probe_topic, load).await?;
        crate::progress(format!(
            "latency: broker alone at {offered}/s: send→ack p50 {:.1} p99 {:.1} ms",
            ack.p50_ms, ack.p99_ms
        ));
        floor.push(BrokerFloor { offered, ack });
    }
    Ok(floor)
}

/// How the messages of a latency run are written and relayed.
#[derive(Debug, Clone)]
pub struct Mode {
    /// How the report names it (`wake-ups`, `polling`, `wal`).
    pub name: &'static str,
    /// Table or WAL mode.
    pub capture: Capture,
    /// Whether table-mode writers send `NOTIFY` (WAL mode has none: the stream wakes the relay).
    pub notify: bool,
    /// The relay's poll interval.
    pub poll: Duration,
}

impl Mode {
    /// A table-mode run.
    pub fn table(name: &'static str, notify: bool, poll: Duration) -> Self {
        Self {
            name,
            capture: Capture::Table,
            notify,
            poll,
        }
    }

    /// The WAL-mode run: the relay's default poll interval, woken by what the stream brings.
    pub fn wal() -> Self {
        Self {
            name: "wal",
            capture: Capture::Wal,
            notify: false,
            poll: WAKE_UP_POLL,
        }
    }
}

/// Offers every load of `options` in `mode`, after a warm-up, with one relay and one consumer of
/// a fresh topic; returns one point per load.
///
/// # Errors
/// When a service fails.
pub async fn run_mode(
    bench: &Bench,
    options: &Options,
    mode: &Mode,
) -> anyhow::Result<Vec<LatencyPoint>> {
    crate::progress(format!(
        "latency: {} (relay poll interval {:?})",
        mode.name, mode.poll
    ));
    bench.reset().await?;
    let topic = bench.topic("latency", options.partitions()).await?;
    let consumer = Receiver::start(&bench.kafka, &topic, options.partitions())?;
    let running =
        match relays::start_balanced(bench, mode.capture, 1, options.batch_size(), mode.poll).await
        {
            Ok(running) => running,
            Err(error) => {
                consumer.stop()?;
                return Err(error);
            }
        };
    let outbox = mode.capture.outbox().notify(mode.notify);
    let mut measure = Measure {
        bench,
        options,
        topic: &topic,
        outbox: &outbox,
        relay: &running[0],
        consumer: &consumer,
        committed: Arc::new(AtomicU64::new(0)),
    };
    let result = async {
        measure.load(WARM_UP).await?;
        let mut points = Vec::new();
        for &offered in options.loads() {
            let load = Load {
                rate: f64::from(offered),
                duration: options.latency_window(),
            };
            let (achieved, [ack, receipt, handed, publish, wake_delay]) =
                measure.load(load).await?;
            crate::progress(format!(
                "  {offered}/s: ack p50 {:.1} p99 {:.1} ms, receipt p50 {:.1} p99 {:.1} ms, handed to the publisher p99 {:.1} ms; a 1 ms sleep woke {:.1} ms late at p99",
                ack.p50_ms, ack.p99_ms, receipt.p50_ms, receipt.p99_ms, handed.p99_ms, wake_delay.p99_ms
            ));
            points.push(LatencyPoint {
                mode: mode.name.into(),
                offered,
                achieved,
                ack,
                receipt,
                handed,
                publish,
                wake_delay,
            });
        }
        anyhow::Ok(points)
    }
    .await;
    relays::stop_all(running).await;
    consumer.stop()?;
    bench.reset().await?;
    result
}

/// Produces `load` one record at a time (each its own `publish` call, as a relay publishing every
/// message the moment it is committed would) and returns the send → acknowledgement latencies.
async fn produce_latency(bench: &Bench, topic: &str, load: Load) -> anyhow::Result<Summary> {
    let publisher = Arc::new(KafkaPublisher::new(&bench.kafka)?);
    publisher.check_reachable(Duration::from_secs(10)).await?;
    let fence = Fence::unbounded();
    let total = (load.rate * load.duration.as_secs_f64()).round() as u64;
    let start = tokio::time::Instant::now();
    let mut sends = Vec::with_capacity(total as usize);
    for n in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / load.rate)).await;
        let stored = StoredMessage {
            seq: n as i64,
            attempts: 0,
            message: crate::workload::message(topic, n)?,
        };
        let (publisher, fence) = (publisher.clone(), fence.clone());
        sends.push(tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = publisher
                .publish(std::slice::from_ref(&stored), &fence)
                .await;
            outcome
                .into_iter()
                .all(|o| o.is_ok())
                .then(|| sent.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(sends.len());
    for send in sends {
        latencies.push(send.await?.context("a probe record was not acknowledged")?);
    }
    Ok(Summary::of(latencies))
}

/// What one mode's loads share.
struct Measure<'a> {
    bench: &'a Bench,
    options: &'a Options,
    topic: &'a str,
    outbox: &'a PgOutbox,
    relay: &'a RunningRelay,
    consumer: &'a Receiver,
    committed: Arc<AtomicU64>,
}

impl Measure<'_> {
    /// Offers `load`, waits for every message to be acknowledged and received, and returns the
    /// achieved rate and the latencies from commit to acknowledgement, to receipt and to the
    /// hand-over to the publisher, from the hand-over to the acknowledgement, and the machine's
    /// scheduling delay meanwhile.
    async fn load(&mut self, load: Load) -> anyhow::Result<(f64, [Summary; 5])> {
        drain_clock(&self.relay.acks);
        drain_clock(&self.relay.handed);
        let probe = crate::cpu::WakeProbe::start();
        let written = write_paced(
            &self.bench.pool,
            self.outbox,
            self.topic,
            load,
            self.options.writers(),
            &self.committed,
            true,
        )
        .await?;
        let total = self.committed.load(Ordering::Relaxed);
        relays::wait_settled(
            std::slice::from_ref(self.relay),
            total,
            Duration::from_secs(120),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.consumer.received() < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let wake_delay = probe.finish();
        let commits: HashMap<Uuid, Instant> = written.commits.iter().copied().collect();
        let since_commit = |events: Vec<(Uuid, Instant)>| {
            Summary::of(
                events
                    .into_iter()
                    .filter_map(|(id, at)| {
                        commits.get(&id).map(|c| at.saturating_duration_since(*c))
                    })
                    .collect(),
            )
        };
        let (acks, handed) = (
            drain_clock(&self.relay.acks),
            drain_clock(&self.relay.handed),
        );
        // The last hand-over of a message (a retried one is handed over again) to its ack.
        let handed_at: HashMap<Uuid, Instant> = handed.iter().copied().collect();
        let publish = Summary::of(
            acks.iter()
                .filter(|(id, _)| commits.contains_key(id))
                .filter_map(|(id, at)| handed_at.get(id).map(|h| at.saturating_duration_since(*h)))
                .collect(),
        );
        let ack = since_commit(acks);
        let receipt = since_commit(drain_clock(&self.consumer.receipts));
        let handed = since_commit(handed);
        Ok((written.rate(), [ack, receipt, handed, publish, wake_delay]))
    }
}
