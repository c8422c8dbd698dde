//! The inbox consumer against real PostgreSQL and the real broker: effectively-once under
//! restarts, replays, crashes and rebalances; retries and the dead-letter topic; per-key order;
//! inbox retention. `docs/consumers.md` names the window each test shows.

mod effectively_once;
mod failures;
mod order;
mod retention;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use outbox_core::Message;
use outbox_core::{CancellationToken, RetryPolicy};
use outbox_kafka::{ConsumerStats, InboxConsumer, InboxConsumerBuilder, Received, StatsHandle};
use outbox_postgres::PgInbox;
use outbox_tests::consumers::{
    STEP, Step, consumer_config, create_effects_table, publish, record_step, steps,
};
use outbox_tests::{TestDb, create_topic, init_logs};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// The inbox name every test consumer uses.
const INBOX_NAME: &str = "effects";

/// The consumer program, built by this package.
fn consumer_program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_consumer-under-test"))
}

/// A fresh database with the `effects` table, and a fresh topic with `partitions` partitions.
async fn fresh(partitions: i32) -> anyhow::Result<(TestDb, String)> {
    init_logs();
    let db = TestDb::create().await?;
    create_effects_table(&db.pool).await?;
    let topic = create_topic(partitions).await?;
    Ok((db, topic))
}

/// Publishes `keys` x `per_key` steps to `topic` (see [`steps`]) and returns them.
async fn publish_steps(topic: &str, keys: usize, per_key: usize) -> anyhow::Result<Vec<Message>> {
    let messages = steps(topic, keys, per_key)?;
    publish(&messages).await?;
    Ok(messages)
}

/// A fresh consumer group name.
fn group(what: &str) -> String {
    format!("{what}-{}", Uuid::now_v7().simple())
}

/// Retries that fit a test: `attempts`, backoff from 10 ms to 50 ms.
fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(attempts)
        .expect("valid attempts")
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .expect("valid backoff")
}

/// A consumer of `topic` in `group` with no handler yet.
fn builder(db: &TestDb, topic: &str, group: &str) -> anyhow::Result<InboxConsumerBuilder<PgInbox>> {
    Ok(InboxConsumer::builder(
        &consumer_config(group)?,
        PgInbox::new(db.pool.clone()),
        INBOX_NAME,
    )
    .topics([topic])
    .retry(quick_retry(5)))
}

/// A consumer applying `Step` events into `effects`, signed `label`.
fn step_consumer(
    db: &TestDb,
    topic: &str,
    group: &str,
    label: &'static str,
) -> anyhow::Result<InboxConsumerBuilder<PgInbox>> {
    Ok(builder(db, topic, group)?.on(
        STEP,
        move |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
            record_step(tx, step, received, label)
        },
    ))
}

/// A consumer running on a task of its own.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<ConsumerStats, outbox_kafka::Error>>,
    stats: StatsHandle,
}

impl Running {
    fn start(builder: InboxConsumerBuilder<PgInbox>) -> anyhow::Result<Self> {
        let consumer = builder.build()?;
        let stats = consumer.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        Ok(Self {
            shutdown,
            task,
            stats,
        })
    }

    /// Stops it cleanly and returns its counters.
    async fn stop(self) -> anyhow::Result<ConsumerStats> {
        self.shutdown.cancel();
        Ok(tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .context("the consumer did not stop within 60 s")???)
    }

    /// Aborts its task (no shutdown); returns its counters, which the attempts it had in flight
    /// still update as they end.
    async fn abort(self) -> StatsHandle {
        self.task.abort();
        let _ = self.task.await;
        self.stats
    }
}

/// Waits until `done` holds for the consumer's counters.
async fn wait_for_stats(
    stats: &StatsHandle,
    within: Duration,
    what: &str,
    done: impl Fn(&ConsumerStats) -> bool,
) -> anyhow::Result<ConsumerStats> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = stats.snapshot();
        if done(&now) {
            return Ok(now);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {within:?}; counters {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
