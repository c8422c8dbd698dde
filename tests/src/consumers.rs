//! Support for the consumer tests: a keyed stream of numbered events, a handler that records its
//! effect in a table of its own, and the consumer program as a child process.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use outbox_core::{Fence, Message, Publisher, StoredMessage};
use outbox_kafka::{ClientConfig, HandlerFuture, KafkaPublisher, Received};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{ChildProgram, kafka_config, services};

/// The event of the keyed test stream: the `seq`-th event of `key`, numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The key (also the record key).
    pub key: String,
    /// Its number within the key.
    pub seq: i64,
}

/// The `ce_type` of [`Step`] events.
pub const STEP: &str = "Step";

/// The handler's own table: one row per applied effect, numbered in insertion order.
pub const EFFECTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS effects (
    n          BIGSERIAL PRIMARY KEY,
    message_id UUID   NOT NULL,
    key        TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    applied_by TEXT   NOT NULL
)";

/// Creates the effects table.
pub async fn create_effects_table(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(EFFECTS_TABLE).execute(pool).await?;
    Ok(())
}

/// `keys` keys with `per_key` steps each, interleaved (k0#1, k1#1, ..., k0#2, ...).
pub fn steps(topic: &str, keys: usize, per_key: usize) -> anyhow::Result<Vec<Message>> {
    let mut messages = Vec::with_capacity(keys * per_key);
    for seq in 1..=per_key as i64 {
        for k in 0..keys {
            let key = format!("key-{k}");
            let step = Step {
                key: key.clone(),
                seq,
            };
            messages.push(
                Message::builder(topic)
                    .key(key)
                    .event_type(STEP)
                    .json(&step)?,
            );
        }
    }
    Ok(messages)
}

/// Publishes `messages` with the project's publisher, in batches, and fails unless every one was
/// acknowledged.
pub async fn publish(messages: &[Message]) -> anyhow::Result<()> {
    let publisher = KafkaPublisher::new(&kafka_config()?)?;
    for (n, chunk) in messages.chunks(1000).enumerate() {
        let batch: Vec<StoredMessage> = chunk
            .iter()
            .enumerate()
            .map(|(i, message)| StoredMessage {
                seq: (n * 1000 + i) as i64,
                attempts: 0,
                message: message.clone(),
            })
            .collect();
        for outcome in publisher.publish(&batch, &Fence::unbounded()).await {
            outcome.context("publishing the test stream")?;
        }
    }
    Ok(())
}

/// Consumer settings for the test broker and `group`: a short session timeout so that a killed
/// member leaves the group soon, and frequent offset commits.
pub fn consumer_config(group: &str) -> anyhow::Result<ClientConfig> {
    consumer_config_for(&services::brokers()?, group)
}

/// [`consumer_config`] for the brokers at `brokers`.
pub fn consumer_config_for(brokers: &str, group: &str) -> anyhow::Result<ClientConfig> {
    let mut config = crate::kafka_config_for(brokers);
    config
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.commit.interval.ms", "500");
    Ok(config)
}

/// The handler of the tests: records the step in `effects`, in the inbox transaction, signed
/// with `applied_by`.
pub fn record_step<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    step: Step,
    received: &'a Received,
    applied_by: &'a str,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO effects (message_id, key, seq, applied_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(received.id)
        .bind(&step.key)
        .bind(step.seq)
        .bind(applied_by)
        .execute(&mut **tx)
        .await?;
        Ok(())
    })
}

/// Rows in `effects`.
pub async fn effects_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await?)
}

/// Waits until `effects` holds at least `n` rows; returns how many it holds.
pub async fn wait_for_effects(pool: &PgPool, n: i64, within: Duration) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let count = effects_count(pool).await?;
        if count >= n {
            return Ok(count);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {count} effects after {within:?} (waiting for {n})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the effects table shows about a run.
#[derive(Debug)]
pub struct EffectsReport {
    /// Rows.
    pub rows: i64,
    /// Distinct message ids.
    pub distinct: i64,
    /// Message ids applied more than once.
    pub repeated: Vec<Uuid>,
    /// Keys whose steps were not applied as 1, 2, 3, ... in insertion order.
    pub out_of_order: Vec<String>,
    /// Rows per `applied_by`.
    pub by_applier: Vec<(String, i64)>,
}

/// Reads the effects table: counts, repeated ids, and whether every key's steps were applied in
/// order 1, 2, 3, ... without gap.
pub async fn effects_report(pool: &PgPool) -> anyhow::Result<EffectsReport> {
    let rows = effects_count(pool).await?;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT message_id) FROM effects")
        .fetch_one(pool)
        .await?;
    let repeated: Vec<Uuid> = sqlx::query_scalar(
        "SELECT message_id FROM effects GROUP BY message_id HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await?;
    let out_of_order: Vec<String> = sqlx::query_scalar(
        "SELECT key FROM (
             SELECT key, seq, row_number() OVER (PARTITION BY key ORDER BY n) AS position
             FROM effects) s
         WHERE seq <> position GROUP BY key ORDER BY key",
    )
    .fetch_all(pool)
    .await?;
    let by_applier: Vec<(String, i64)> = sqlx::query_as(
        "SELECT applied_by, count(*) FROM effects GROUP BY applied_by ORDER BY applied_by",
    )
    .fetch_all(pool)
    .await?;
    Ok(EffectsReport {
        rows,
        distinct,
        repeated,
        out_of_order,
        by_applier,
    })
}

/// The consumer program (`consumer-under-test`) as a child process; [`ChildProgram`] for the rest.
pub struct ConsumerProcess(ChildProgram);

impl std::ops::Deref for ConsumerProcess {
    type Target = ChildProgram;

    fn deref(&self) -> &ChildProgram {
        &self.0
    }
}

impl ConsumerProcess {
    /// Starts `program` consuming `topic` in `group` into the database at `database_url`, signing
    /// its effects with `label`.
    pub fn spawn(
        program: &Path,
        database_url: &str,
        topic: &str,
        group: &str,
        label: &str,
    ) -> anyhow::Result<Self> {
        let brokers = services::brokers()?;
        let args = [database_url, brokers.as_str(), topic, group, label];
        Ok(Self(ChildProgram::spawn(program, &args, "consumer")?))
    }

    /// SIGKILL: no chance to commit anything.
    pub async fn kill(self) -> anyhow::Result<()> {
        self.0.kill().await
    }

    /// SIGTERM, then waits for a clean exit; returns its log.
    pub async fn terminate(self) -> anyhow::Result<String> {
        let log_path = self.0.log.clone();
        let exit = self.0.terminate(Duration::from_secs(60)).await?;
        let log = std::fs::read_to_string(&log_path)?;
        if !exit.success() {
            bail!("the consumer exited with {exit}: {log}");
        }
        Ok(log)
    }

    /// Waits until its log says it was assigned partitions of `topic`.
    pub async fn wait_for_partitions(&self, topic: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let log = std::fs::read_to_string(&self.log)?;
            if log
                .lines()
                .any(|line| line.contains("partitions rebalanced") && line.contains(topic))
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no partitions of {topic} assigned within {within:?}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        Ok(self.0.exit_status()?.is_none())
    }
}
