//! Helpers shared by the test modules: schema setup, message builders, row inspection.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::{ClaimRequest, LaneStore, Message, Settlement, StoredMessage};
use outbox_postgres::{Error, PgOutbox, PgRelayStore, PgRelayStoreConfig, Tables};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The topic of the messages built by [`message`].
pub const TOPIC: &str = "orders";

/// How often test relays recount relays and move lanes.
pub const REBALANCE: Duration = Duration::from_millis(50);

/// Applies the migrations of the default tables.
pub async fn migrate(pool: &PgPool) -> Vec<i64> {
    migrate_tables(pool, &Tables::default()).await
}

/// Applies the migrations of `tables`.
pub async fn migrate_tables(pool: &PgPool, tables: &Tables) -> Vec<i64> {
    let mut conn = pool.acquire().await.expect("acquire a connection");
    outbox_postgres::migrate(&mut conn, tables)
        .await
        .expect("migrations apply")
}

/// A JSON message of [`TOPIC`] with the given key whose payload is `{"n": n}`.
pub fn message(key: &str, n: u64) -> Message {
    message_to(TOPIC, key, n)
}

/// A JSON message of `topic` with the given key whose payload is `{"n": n}`.
pub fn message_to(topic: &str, key: &str, n: u64) -> Message {
    Message::builder(topic)
        .key(key)
        .event_type("OrderPlaced")
        .source("/tests")
        .header("tenant", "acme")
        .json(&serde_json::json!({ "n": n }))
        .expect("valid message")
}

/// A relay store over the default tables with `lanes` lanes and a short rebalance interval.
pub fn store(pool: &PgPool, lanes: u32) -> PgRelayStore {
    store_with(pool, lanes, Tables::default())
}

/// A relay store over `tables` with `lanes` lanes and a short rebalance interval.
pub fn store_with(pool: &PgPool, lanes: u32, tables: Tables) -> PgRelayStore {
    let config = PgRelayStoreConfig::default()
        .tables(tables)
        .lanes(lanes)
        .expect("valid lane count")
        .rebalance_interval(REBALANCE);
    PgRelayStore::new(pool.clone(), config)
}

/// The lane of a keyed message when the outbox has `lanes` lanes.
pub fn lane_of(key: &str, lanes: u32) -> i32 {
    let slot = outbox_core::lane::slot_for(Some(key.as_bytes()), &Uuid::nil());
    i32::try_from(slot % lanes).expect("lane fits in i32")
}

/// A key (starting with `prefix`) that falls into `lane` of `lanes`.
pub fn key_in_lane(prefix: &str, lane: i32, lanes: u32) -> String {
    (0..100_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|key| lane_of(key, lanes) == lane)
        .expect("some key falls into every lane")
}

/// Enqueues `messages` in a transaction of their own and commits it.
pub async fn enqueue_committed(pool: &PgPool, messages: &[Message]) {
    let mut tx = pool.begin().await.expect("begin");
    PgOutbox::new()
        .enqueue_all(&mut tx, messages)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
}

/// Ids of the outbox rows, in `seq` order.
pub async fn outbox_ids(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT id FROM outbox ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("read the outbox")
}

/// Seqs of the outbox rows, in order.
pub async fn outbox_seqs(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM outbox ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("read the outbox")
}

/// Number of rows in `table` (a trusted name).
pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// A row of the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    /// The message's position.
    pub seq: i64,
    /// The message id.
    pub id: Uuid,
    /// The topic, as stored.
    pub topic: String,
    /// Failed attempts.
    pub attempts: i32,
    /// The recorded error.
    pub error: String,
}

/// The dead-letter table of the default tables, in `seq` order.
pub async fn dead_letters(pool: &PgPool) -> Vec<DeadRow> {
    sqlx::query("SELECT seq, id, topic, attempts, error FROM outbox_dead_letters ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("read the dead letters")
        .iter()
        .map(|row| DeadRow {
            seq: row.get("seq"),
            id: row.get("id"),
            topic: row.get("topic"),
            attempts: row.get("attempts"),
            error: row.get("error"),
        })
        .collect()
}

/// The retry bookkeeping of an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    /// Failed attempts.
    pub attempts: i32,
    /// Not offered before.
    pub not_before: Option<DateTime<Utc>>,
    /// The last error.
    pub last_error: Option<String>,
}

/// The retry bookkeeping of the outbox row `seq`.
pub async fn retry_state(pool: &PgPool, seq: i64) -> RetryState {
    let row = sqlx::query("SELECT attempts, not_before, last_error FROM outbox WHERE seq = $1")
        .bind(seq)
        .fetch_one(pool)
        .await
        .expect("the row is still in the outbox");
    RetryState {
        attempts: row.get("attempts"),
        not_before: row.get("not_before"),
        last_error: row.get("last_error"),
    }
}

/// Message ids of a claimed batch, in order.
pub fn ids(batch: &[StoredMessage]) -> Vec<Uuid> {
    batch.iter().map(|stored| stored.message.id).collect()
}

/// Seqs of a claimed batch, in order.
pub fn seqs(batch: &[StoredMessage]) -> Vec<i64> {
    batch.iter().map(|stored| stored.seq).collect()
}

/// The messages of one claim, in `seq` order, with the session they were claimed on.
#[derive(Debug, Default)]
pub struct Claimed {
    pub token: u64,
    pub messages: Vec<StoredMessage>,
}

impl std::ops::Deref for Claimed {
    type Target = [StoredMessage];

    fn deref(&self) -> &[StoredMessage] {
        &self.messages
    }
}

impl Claimed {
    /// An empty settlement of this claim's session.
    pub fn settlement(&self) -> Settlement {
        Settlement {
            token: self.token,
            ..Settlement::default()
        }
    }
}

/// A claim as the engine makes it with nothing in flight: windows of up to `limit` messages from
/// every owned lane, `limit` in all, all lanes in one phase.
pub async fn try_claim(store: &PgRelayStore, limit: usize) -> Result<Claimed, Error> {
    let busy = BTreeSet::new();
    let request = ClaimRequest {
        busy: &busy,
        max_messages: limit,
        max_bytes: u64::MAX,
        window: limit,
        phases: 1,
    };
    let windows = store.claim(request).await?;
    let mut claimed = Claimed::default();
    for window in windows {
        claimed.token = window.token;
        claimed.messages.extend(window.messages);
    }
    claimed.messages.sort_by_key(|stored| stored.seq);
    Ok(claimed)
}

/// [`try_claim`], failing the test on a store error.
pub async fn claim(store: &PgRelayStore, limit: usize) -> Claimed {
    try_claim(store, limit).await.expect("claim")
}

/// Settles `batch` as published and returns how many rows changed.
pub async fn publish(store: &PgRelayStore, batch: &Claimed) -> usize {
    let settlement = Settlement {
        published: seqs(batch),
        ..batch.settlement()
    };
    store.settle(&settlement).await.expect("settle").len()
}

/// Lanes owned by each store, in the stores' order.
pub async fn owned(stores: &[&PgRelayStore]) -> Vec<Vec<i32>> {
    let mut all = Vec::with_capacity(stores.len());
    for store in stores {
        all.push(store.owned_lanes().await);
    }
    all
}

/// Lets `stores` claim (and so rebalance) every [`REBALANCE`] interval until `done` holds for their
/// owned lanes, for at most 60 rounds. Returns the owned lanes; panics with them when `done` never
/// held.
pub async fn rebalance_until(
    stores: &[&PgRelayStore],
    done: impl Fn(&[Vec<i32>]) -> bool,
) -> Vec<Vec<i32>> {
    let mut lanes = Vec::new();
    for _ in 0..60 {
        for store in stores {
            try_claim(store, 1).await.expect("claim");
        }
        lanes = owned(stores).await;
        if done(&lanes) {
            return lanes;
        }
        tokio::time::sleep(REBALANCE + Duration::from_millis(10)).await;
    }
    panic!("lanes never reached the expected split; last seen: {lanes:?}");
}

/// Whether the owned lane lists are pairwise disjoint and together cover `0..lanes`.
pub fn partition_of(owned: &[Vec<i32>], lanes: u32) -> bool {
    let total: usize = owned.iter().map(Vec::len).sum();
    let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
    let all: BTreeSet<i32> = (0..i32::try_from(lanes).expect("lanes fit in i32")).collect();
    total == union.len() && union == all
}
