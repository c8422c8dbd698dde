//! Broker faults on a three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas=2`, `acks=all`): a partition leader killed mid-drain, two of three brokers
//! down, the whole cluster restarted. Each test has a cluster of its own
//! ([`PrivateCluster`]: one at a time) and the relay program as a child process, reads the topic
//! back and asserts what a consumer observes: nothing lost, per key the first occurrences in enqueue
//! order, duplicates counted.

use std::time::{Duration, Instant};

use outbox_tests::keyed::{
    Enqueued, dead_letter_count, enqueue, max_attempts, outbox_count, verify, wait_until_drained,
    wait_until_outbox_at_most,
};
use outbox_tests::private::{PrivateCluster, log_tail};
use outbox_tests::{RelayProcess, TestDb, create_topic_on, init_logs, read_topic_from};
use rdkafka::consumer::{BaseConsumer, Consumer};

const KEYS: usize = 60;
const PARTITIONS: i32 = 6;

/// The relay's flags: sends get 10 s, longer than the 9 s in which the controller fences a broker
/// that stopped answering, which needs a lease of 50 s (a send timeout may be a fifth of it); short
/// backoffs.
const FLAGS: [&str; 12] = [
    "--lease",
    "50s",
    "-X",
    "message.timeout.ms=10000",
    "--batch-size",
    "250",
    "--poll-interval",
    "100ms",
    "--initial-backoff",
    "100ms",
    "--max-backoff",
    "1s",
];

fn relay_program() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

/// The node that leads `partition` of `topic`, from a metadata request.
fn leader_of(brokers: &str, topic: &str, partition: i32) -> anyhow::Result<u32> {
    let consumer: BaseConsumer = outbox_tests::kafka_config_for(brokers).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let leader = metadata
        .topics()
        .first()
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| p.leader())
        .ok_or_else(|| anyhow::anyhow!("{topic}/{partition} is not in the metadata"))?;
    u32::try_from(leader).map_err(|_| anyhow::anyhow!("{topic}/{partition} has no leader"))
}

/// A relay program draining a committed backlog into a fresh topic of a fresh cluster, stopped
/// mid-drain by [`Drill::start`] for a fault to be injected.
struct Drill {
    db: TestDb,
    cluster: PrivateCluster,
    topic: String,
    enqueued: Vec<Enqueued>,
    relay: RelayProcess,
}

impl Drill {
    /// Enqueues `backlog` messages, starts the relay and returns once it published `published`
    /// of them (the fault must come mid-drain).
    async fn start(backlog: usize, published: usize) -> anyhow::Result<Self> {
        let db = TestDb::create().await?;
        let cluster = PrivateCluster::start().await?;
        let brokers = cluster.brokers();
        let topic = create_topic_on(&brokers, PARTITIONS).await?;
        let enqueued = enqueue(&db.pool, &topic, 0..backlog, KEYS).await?;
        let relay = RelayProcess::spawn_with(relay_program(), &db.url, &brokers, &FLAGS)?;
        wait_until_outbox_at_most(&db.pool, (backlog - published) as i64, &relay).await?;
        Ok(Self {
            db,
            cluster,
            topic,
            enqueued,
            relay,
        })
    }

    /// Messages still in the outbox; fails when none are (the fault came too late).
    async fn waiting(&self) -> anyhow::Result<i64> {
        let left = outbox_count(&self.db.pool).await?;
        anyhow::ensure!(
            left > 0,
            "the fault must come mid-drain, but the outbox is empty"
        );
        Ok(left)
    }

    /// More messages, committed now (writers go on during a fault).
    async fn enqueue_more(&mut self, count: usize) -> anyhow::Result<()> {
        let from = self.enqueued.len();
        let more = enqueue(&self.db.pool, &self.topic, from..from + count, KEYS).await?;
        self.enqueued.extend(more);
        Ok(())
    }

    /// While `during` passes: nothing dead-lettered, no attempt used, the relay alive; returns the
    /// outbox count at the end.
    async fn hold_through_outage(&mut self, during: Duration) -> anyhow::Result<i64> {
        let (pool, relay) = (&self.db.pool, &mut self.relay);
        let since = Instant::now();
        while since.elapsed() < during {
            tokio::time::sleep(Duration::from_millis(500)).await;
            anyhow::ensure!(
                dead_letter_count(pool).await? == 0,
                "the outage dead-lettered messages; relay log ({}):\n{}",
                relay.log.display(),
                log_tail(&relay.log, 30)
            );
            let attempts = max_attempts(pool).await?;
            anyhow::ensure!(
                attempts == 0,
                "the outage used up attempts of waiting messages (max attempts {attempts}); \
                 relay log:\n{}",
                log_tail(&relay.log, 30)
            );
            anyhow::ensure!(
                relay.exit_status()?.is_none(),
                "the relay exited during the outage:\n{}",
                log_tail(&relay.log, 30)
            );
        }
        outbox_count(pool).await
    }

    /// Waits until the outbox is empty, stops the relay, reads the topic back and checks it:
    /// nothing dead-lettered, nothing lost, per-key order. Prints `what` with the figures.
    async fn finish(self, what: &str) -> anyhow::Result<()> {
        let since = Instant::now();
        let mut max_seen = 0;
        wait_until_drained(
            &self.db.pool,
            Duration::from_secs(180),
            &self.relay,
            &mut max_seen,
        )
        .await?;
        let drained_in = since.elapsed();
        assert_eq!(
            dead_letter_count(&self.db.pool).await?,
            0,
            "nothing dead-lettered"
        );
        let status = self.relay.terminate().await?;
        assert!(status.success(), "relay exits cleanly on SIGTERM: {status}");
        let records = read_topic_from(
            &self.cluster.brokers(),
            &self.topic,
            usize::MAX,
            Duration::from_secs(10),
        )
        .await?;
        let duplicates = verify(&records, &self.enqueued)?;
        println!(
            "{what}; drained {drained_in:?} later (max attempts {max_seen}): {} records for {} \
             messages, 0 lost, per-key order held, {duplicates} duplicates",
            records.len(),
            self.enqueued.len()
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_of_a_busy_partition_killed_mid_drain_loses_nothing_and_keeps_per_key_order()
-> anyhow::Result<()> {
    init_logs();
    let drill = Drill::start(20_000, 4_000).await?;
    let brokers = drill.cluster.brokers();
    let leader = leader_of(&brokers, &drill.topic, 0)?;
    drill.cluster.kill(leader).await?;
    let at_kill = drill.waiting().await?;

    // Two brokers remain, enough for min.insync.replicas=2: the relay goes on once the partitions
    // of the killed leader have new leaders.
    let down = Instant::now();
    wait_until_outbox_at_most(&drill.db.pool, at_kill / 2, &drill.relay).await?;
    let halved_in = down.elapsed();
    let new_leader = leader_of(&brokers, &drill.topic, 0)?;
    anyhow::ensure!(
        new_leader != leader,
        "partition 0 still names the killed node {leader} as its leader"
    );
    drill.cluster.start_node(leader).await?;
    drill
        .finish(&format!(
            "leader {leader} of partition 0 SIGKILLed with {at_kill} messages waiting (new leader \
             {new_leader}; half of them published {halved_in:?} later), restarted"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_brokers_down_is_an_outage_retried_without_using_attempts_then_drained()
-> anyhow::Result<()> {
    init_logs();
    let mut drill = Drill::start(30_000, 3_000).await?;
    drill.cluster.stop_nodes(&[2, 3]).await?;
    // One broker of three: below min.insync.replicas, and no controller quorum. Sends fail with
    // not-enough-replicas or time out after 10 s; what waits must stay waiting, unharmed, through
    // two whole send timeouts and more, while writers go on.
    let at_stop = drill.waiting().await?;
    drill.enqueue_more(1_000).await?;
    let through = drill.hold_through_outage(Duration::from_secs(25)).await?;
    drill.cluster.start_node(2).await?;
    drill.cluster.start_node(3).await?;
    drill
        .finish(&format!(
            "two of three brokers down for 25 s with {at_stop} messages waiting ({through} at the \
             end, no attempt used), back"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_cluster_restart_while_messages_wait_loses_nothing_and_keeps_per_key_order()
-> anyhow::Result<()> {
    init_logs();
    let mut drill = Drill::start(30_000, 3_000).await?;
    drill.cluster.stop_all().await?;
    let at_stop = drill.waiting().await?;
    drill.enqueue_more(1_000).await?;
    let through = drill.hold_through_outage(Duration::from_secs(12)).await?;
    drill.cluster.start_all().await?;
    drill
        .finish(&format!(
            "whole cluster stopped for 12 s with {at_stop} messages waiting ({through} at the \
             end), started again"
        ))
        .await
}
