//! Part 3, latency: writers commit one message per transaction at fixed offered loads; for each
//! message, commit → broker acknowledgement (seen by the engine's publisher) and commit → receipt
//! by a consumer of the topic. Once with wake-ups (`LISTEN`/`NOTIFY`, the default) and once with
//! pure polling (`PgOutbox::notify(false)`, the relay polling at `--poll-interval-ms`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use outbox_core::{Fence, Publisher, StoredMessage};
use outbox_kafka::{ClientConfig, KafkaPublisher};
use outbox_postgres::PgOutbox;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::Options;
use crate::env::Bench;
use crate::observe::{Clock, drain_clock};
use crate::relays::{self, RunningRelay};
use crate::stats::Summary;
use crate::workload::{Load, write_paced};

/// The relay's poll interval with wake-ups on: the shipped default.
const WAKE_UP_POLL: Duration = Duration::from_secs(1);
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
    let probe_topic = bench.topic("probe", options.partitions()).await?;
    let mut broker_floor = Vec::new();
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
        broker_floor.push(BrokerFloor { offered, ack });
    }
    let mut points = Vec::new();
    for (mode, notify, poll) in [
        ("wake-ups", true, WAKE_UP_POLL),
        ("polling", false, options.poll_interval()),
    ] {
        crate::progress(format!("latency: {mode} (relay poll interval {poll:?})"));
        bench.reset().await?;
        let topic = bench.topic("latency", options.partitions()).await?;
        let consumer = Receiver::start(&bench.kafka, &topic, options.partitions())?;
        let running = relays::start_balanced(bench, 1, options.batch_size(), poll).await?;
        let outbox = PgOutbox::new().notify(notify);
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
            let mut mode_points = Vec::new();
            for &offered in options.loads() {
                let load = Load {
                    rate: f64::from(offered),
                    duration: options.latency_window(),
                };
                let (achieved, ack, receipt) = measure.load(load).await?;
                crate::progress(format!(
                    "  {offered}/s: ack p50 {:.1} p99 {:.1} ms, receipt p50 {:.1} p99 {:.1} ms",
                    ack.p50_ms, ack.p99_ms, receipt.p50_ms, receipt.p99_ms
                ));
                mode_points.push(LatencyPoint {
                    mode: mode.into(),
                    offered,
                    achieved,
                    ack,
                    receipt,
                });
            }
            anyhow::Ok(mode_points)
        }
        .await;
        relays::stop_all(running).await;
        consumer.stop()?;
        points.extend(result?);
    }
    bench.reset().await?;
    Ok(LatencyReport {
        seconds: options.latency_window().as_secs(),
        wake_up_poll_interval_ms: WAKE_UP_POLL.as_millis() as u64,
        polling_interval_ms: options.poll_interval().as_millis() as u64,
        points,
        broker_floor,
    })
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
    /// achieved rate and both latencies.
    async fn load(&mut self, load: Load) -> anyhow::Result<(f64, Summary, Summary)> {
        drain_clock(&self.relay.acks);
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
        let ack = since_commit(drain_clock(&self.relay.acks));
        let receipt = since_commit(drain_clock(&self.consumer.receipts));
        Ok((written.rate(), ack, receipt))
    }
}

/// A consumer of the whole topic on a thread of its own, recording when each `ce_id` arrived.
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    receipts: Clock,
    received: Arc<AtomicU64>,
}

impl Receiver {
    fn start(kafka: &ClientConfig, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let mut config = kafka.clone();
        config
            .set("group.id", format!("bench-{}", Uuid::now_v7().simple()))
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create()?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let stop = Arc::new(AtomicBool::new(false));
        let receipts = Clock::default();
        let received = Arc::new(AtomicU64::new(0));
        let (flag, clock, count) = (stop.clone(), receipts.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Some(polled) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let at = Instant::now();
                let message = polled.context("consuming the latency topic failed")?;
                let id = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == "ce_id"))
                    .and_then(|h| h.value)
                    .and_then(|value| Uuid::try_parse_ascii(value).ok());
                if let Some(id) = id {
                    clock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((id, at));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        });
        Ok(Self {
            stop,
            thread,
            receipts,
            received,
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?
    }
}
