//! What the benchmark writes: messages of 200-byte payloads over 1,000 keys, backlogs committed in
//! one transaction, business transactions, and a writer paced at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::capture::Capture;

/// Payload size of every message.
pub const PAYLOAD_BYTES: usize = 200;
/// Distinct keys.
pub const KEYS: u64 = 1_000;
/// Messages per insert statement when filling a backlog.
const FILL_CHUNK: usize = 5_000;

/// Message number `n` for `topic`: key `customer-<n mod 1000>`, a 200-byte payload.
///
/// # Errors
/// When the topic name is invalid.
pub fn message(topic: &str, n: u64) -> anyhow::Result<Message> {
    let payload: Vec<u8> = (0..PAYLOAD_BYTES)
        .map(|i| b'a' + ((n as usize + i) % 26) as u8)
        .collect();
    Ok(Message::builder(topic)
        .key(format!("customer-{}", n % KEYS))
        .event_type("BenchEvent")
        .source("/outbox-bench")
        .bytes(payload, "application/octet-stream")?)
}

/// Commits `count` messages of `capture` in one transaction (so that nothing is visible, to a
/// relay already running, before all of them are) and returns when the commit returned.
///
/// # Errors
/// When the database fails.
pub async fn fill_backlog(
    pool: &PgPool,
    capture: Capture,
    topic: &str,
    count: u64,
) -> anyhow::Result<Instant> {
    let outbox = capture.outbox();
    let quiet = outbox.clone().notify(false);
    let mut tx = pool.begin().await?;
    let mut next = 0;
    while next < count {
        let end = (next + FILL_CHUNK as u64).min(count);
        let chunk = (next..end)
            .map(|n| message(topic, n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if end == count {
            // One wake-up for the whole backlog, as a real writer's last transaction would send.
            outbox.enqueue_all(&mut tx, &chunk).await?;
        } else {
            quiet.enqueue_all(&mut tx, &chunk).await?;
        }
        next = end;
    }
    tx.commit().await?;
    Ok(Instant::now())
}

/// What a business transaction does besides inserting its row.
#[derive(Debug, Clone, Copy)]
pub enum Extra<'a> {
    /// Nothing: the business row alone.
    Nothing,
    /// One more round trip that writes nothing (`SELECT 1`): the floor of any extra statement.
    RoundTrip,
    /// Enqueue these messages through this outbox.
    Enqueue(&'a PgOutbox, &'a [Message]),
    /// Insert these messages into Debezium's outbox table (`peers`).
    Debezium(&'a [Message]),
}

/// Where a paced writer's messages go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Our outbox (table or WAL mode).
    Outbox(PgOutbox),
    /// Debezium's outbox table.
    Debezium,
}

/// Inserts `messages` into Debezium's outbox table: aggregatetype = the topic, aggregateid = the
/// key, payload = the payload's bytes.
///
/// # Errors
/// When the database fails.
pub async fn debezium_insert(conn: &mut PgConnection, messages: &[Message]) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    let keys: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let types: Vec<&str> = messages
        .iter()
        .map(|m| m.event_type.as_deref().unwrap_or("event"))
        .collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    sqlx::query(
        "INSERT INTO debezium_outbox (id, aggregatetype, aggregateid, type, payload) \
         SELECT * FROM UNNEST($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], $5::bytea[])",
    )
    .bind(&ids)
    .bind(&topics)
    .bind(&keys)
    .bind(&types)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// One business transaction: a row in `bench_orders` and `extra`. Returns how long it took, `BEGIN`
/// to the end of `COMMIT`.
///
/// # Errors
/// When the database fails.
pub async fn business_tx(
    conn: &mut PgConnection,
    customer: i32,
    extra: Extra<'_>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO bench_orders (customer, amount_cents) VALUES ($1, $2)")
        .bind(customer)
        .bind(1999_i64)
        .execute(&mut *tx)
        .await?;
    match extra {
        Extra::Nothing => {}
        Extra::RoundTrip => {
            sqlx::query("SELECT 1").execute(&mut *tx).await?;
        }
        Extra::Enqueue(outbox, messages) => outbox.enqueue_all(&mut tx, messages).await?,
        Extra::Debezium(messages) => debezium_insert(&mut tx, messages).await?,
    }
    tx.commit().await?;
    Ok(started.elapsed())
}

/// An offered load: one message per business transaction at `rate` per second for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Transactions (= messages) per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
}

/// What a paced writer committed.
#[derive(Debug, Default)]
pub struct Written {
    /// Committed transactions.
    pub committed: u64,
    /// From the first scheduled start to the last commit.
    pub elapsed: Duration,
    /// Message id and the instant its commit returned, when asked for.
    pub commits: Vec<(Uuid, Instant)>,
    /// Message id and its number (its key is the number mod [`KEYS`]), when asked for.
    pub numbers: Vec<(Uuid, u64)>,
}

impl Written {
    /// Achieved transactions per second.
    pub fn rate(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes `load` from `connections` connections, each transaction due at `start + i / rate`
/// (open loop: a writer that falls behind runs back to back). Counts every commit in `committed`
/// as it happens; with `record`, returns each message's commit instant.
///
/// # Errors
/// When a transaction fails.
pub async fn write_paced(
    pool: &PgPool,
    outbox: &PgOutbox,
    topic: &str,
    load: Load,
    connections: usize,
    committed: &Arc<AtomicU64>,
    record: bool,
) -> anyhow::Result<Written> {
    let sink = Sink::Outbox(outbox.clone());
    write_paced_to(pool, &sink, topic, load, connections, committed, record).await
}

/// [`write_paced`] into `sink`.
///
/// # Errors
/// When a transaction fails.
pub async fn write_paced_to(
    pool: &PgPool,
    sink: &Sink,
    topic: &str,
    load: Load,
    connections: usize,
    committed: &Arc<AtomicU64>,
    record: bool,
) -> anyhow::Result<Written> {
    let total = (load.rate * load.duration.as_secs_f64()).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    // Connect first: the schedule starts once every writer is ready, or the time spent connecting
    // would turn into a burst of overdue transactions.
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(pool.acquire().await?.detach());
    }
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for mut conn in conns {
        let (next, committed, sink, topic) = (
            next.clone(),
            committed.clone(),
            sink.clone(),
            topic.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut count, mut commits, mut numbers) = (0_u64, Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / load.rate))
                    .await;
                let message = message(&topic, i)?;
                let id = message.id;
                let messages = [message];
                let extra = match &sink {
                    Sink::Outbox(outbox) => Extra::Enqueue(outbox, &messages),
                    Sink::Debezium => Extra::Debezium(&messages),
                };
                business_tx(&mut conn, (i % KEYS) as i32, extra).await?;
                committed.fetch_add(1, Ordering::Relaxed);
                count += 1;
                if record {
                    commits.push((id, Instant::now()));
                    numbers.push((id, i));
                }
            }
            conn.close().await?;
            anyhow::Ok((count, commits, numbers))
        }));
    }
    let mut written = Written::default();
    for task in tasks {
        let (count, commits, numbers) = task.await??;
        written.committed += count;
        written.commits.extend(commits);
        written.numbers.extend(numbers);
    }
    written.elapsed = start.elapsed();
    Ok(written)
}
