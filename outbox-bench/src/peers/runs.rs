//! One measurement of one publisher: the drain of a committed backlog, or a latency run at an
//! offered load, with the same consumer as the end condition and the same order-and-loss check.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::Options;
use crate::baselines::Throughput;
use crate::env::Bench;
use crate::observe::drain_clock;
use crate::receiver::Receiver;
use crate::relays;
use crate::stats::Summary;
use crate::workload::{KEYS, Load, Sink, debezium_insert, message, write_paced_to};
use uuid::Uuid;

use super::{Delivery, Peer, PeerPoint, READ_TIMEOUT};

/// A consumer of a fresh topic and, for the relay, a running relay.
async fn setup(
    bench: &Bench,
    options: &Options,
    peer: Peer,
    part: &str,
) -> anyhow::Result<(String, Receiver, Vec<relays::RunningRelay>)> {
    bench.reset().await?;
    sqlx::raw_sql("TRUNCATE debezium_outbox")
        .execute(&bench.pool)
        .await?;
    let topic = bench.topic(part, options.partitions()).await?;
    let header = if peer == Peer::Debezium {
        "id"
    } else {
        "ce_id"
    };
    let consumer = Receiver::start_with(&bench.kafka, &topic, options.partitions(), header)?;
    let running = match peer {
        Peer::Relay(capture) => {
            let poll = crate::latency::WAKE_UP_POLL;
            match relays::start_balanced(bench, capture, 1, options.batch_size(), poll).await {
                Ok(running) => running,
                Err(error) => {
                    consumer.stop()?;
                    return Err(error);
                }
            }
        }
        Peer::Debezium => Vec::new(),
    };
    Ok((topic, consumer, running))
}

/// Waits until the consumer, which had read `before` records, read `ids` too (or the timeout);
/// returns its receipts and the check.
async fn collect(
    consumer: &Receiver,
    before: u64,
    ids: &[(Uuid, u64)],
) -> (Vec<(Uuid, Instant)>, Delivery) {
    let deadline = Instant::now() + READ_TIMEOUT;
    while consumer.received() < before + ids.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let receipts = drain_clock(&consumer.receipts);
    (receipts.clone(), check(ids, &receipts))
}

/// `ids` in commit order with their key numbers, against the receipts in arrival order.
fn check(ids: &[(Uuid, u64)], receipts: &[(Uuid, Instant)]) -> Delivery {
    let position: HashMap<Uuid, (usize, u64)> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, key))| (*id, (i, *key)))
        .collect();
    let (mut seen, mut last, mut bad) = (HashSet::new(), HashMap::new(), HashSet::new());
    let mut duplicates = 0;
    for (id, _) in receipts {
        let Some(&(index, key)) = position.get(id) else {
            continue;
        };
        if !seen.insert(*id) {
            duplicates += 1;
            continue;
        }
        if last.insert(key, index).is_some_and(|before| before > index) {
            bad.insert(key);
        }
    }
    Delivery {
        committed: ids.len() as u64,
        missing: (ids.len() - seen.len()) as u64,
        duplicates,
        reordered_keys: bad.len() as u64,
    }
}

pub(super) async fn drain(
    bench: &Bench,
    options: &Options,
    peer: Peer,
) -> anyhow::Result<PeerPoint> {
    let count = options.messages();
    crate::progress(format!(
        "peers: drain of {count} messages, {}",
        peer.label()
    ));
    let (topic, consumer, running) = setup(bench, options, peer, "peers-drain").await?;
    let result = async {
        let mut ids = Vec::with_capacity(count as usize);
        let mut tx = bench.pool.begin().await?;
        let sink = peer.sink();
        let mut next = 0;
        while next < count {
            let end = (next + 5_000).min(count);
            let chunk = (next..end)
                .map(|n| message(&topic, n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            ids.extend(chunk.iter().zip(next..end).map(|(m, n)| (m.id, n % KEYS)));
            match &sink {
                Sink::Outbox(outbox) => outbox.enqueue_all(&mut tx, &chunk).await?,
                Sink::Debezium => debezium_insert(&mut tx, &chunk).await?,
            }
            next = end;
        }
        tx.commit().await?;
        let committed = Instant::now();
        let (receipts, delivery) = collect(&consumer, 0, &ids).await;
        let last = receipts
            .iter()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(committed);
        let throughput = Throughput::new(count, last.saturating_duration_since(committed));
        crate::progress(format!(
            "  {:.0} msg/s to the consumer; {delivery:?}",
            throughput.per_second
        ));
        anyhow::Ok(PeerPoint {
            peer: peer.label().into(),
            offered: 0,
            throughput,
            receipt: Summary::of(Vec::new()),
            delivery,
        })
    }
    .await;
    relays::stop_all(running).await;
    consumer.stop()?;
    result
}

pub(super) async fn latency(
    bench: &Bench,
    options: &Options,
    peer: Peer,
    offered: u32,
) -> anyhow::Result<PeerPoint> {
    crate::progress(format!("peers: latency at {offered}/s, {}", peer.label()));
    let (topic, consumer, running) = setup(bench, options, peer, "peers-latency").await?;
    let result = async {
        let committed = Arc::new(AtomicU64::new(0));
        let sink = peer.sink();
        let warm = Load {
            rate: 100.0,
            duration: Duration::from_secs(1),
        };
        let (pool, writers) = (&bench.pool, options.writers());
        let warmed = write_paced_to(pool, &sink, &topic, warm, writers, &committed, true).await?;
        let warm_ids: Vec<(Uuid, u64)> = warmed.commits.iter().map(|(id, _)| (*id, 0)).collect();
        collect(&consumer, 0, &warm_ids).await;
        let before = consumer.received();
        let load = Load {
            rate: f64::from(offered),
            duration: options.latency_window(),
        };
        let mut written =
            write_paced_to(pool, &sink, &topic, load, writers, &committed, true).await?;
        written.commits.sort_by_key(|(_, at)| *at);
        let numbers: HashMap<Uuid, u64> = written.numbers.iter().copied().collect();
        let keys: Vec<(Uuid, u64)> = written
            .commits
            .iter()
            .filter_map(|(id, _)| numbers.get(id).map(|n| (*id, n % KEYS)))
            .collect();
        let (receipts, delivery) = collect(&consumer, before, &keys).await;
        let commits: HashMap<Uuid, Instant> = written.commits.iter().copied().collect();
        let receipt = Summary::of(
            receipts
                .iter()
                .filter_map(|(id, at)| commits.get(id).map(|c| at.saturating_duration_since(*c)))
                .collect(),
        );
        crate::progress(format!(
            "  receipt p50 {:.1} p99 {:.1} max {:.1} ms; {delivery:?}",
            receipt.p50_ms, receipt.p99_ms, receipt.max_ms
        ));
        anyhow::Ok(PeerPoint {
            peer: peer.label().into(),
            offered,
            throughput: Throughput::new(written.committed, written.elapsed),
            receipt,
            delivery,
        })
    }
    .await;
    relays::stop_all(running).await;
    consumer.stop()?;
    result
}
