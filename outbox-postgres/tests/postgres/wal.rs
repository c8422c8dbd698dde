//! WAL mode of the writer: what it leaves in the WAL, read back through a `test_decoding` slot,
//! and the SQL envelope function for writers without the library.

use outbox_core::Message;
use outbox_postgres::{PgOutbox, Tables, wal::envelope};
use sqlx::PgPool;

use crate::support::{message, migrate};

/// A `test_decoding` slot on the test database; dropped by [`Decoder::drop_slot`].
struct Decoder {
    slot: String,
}

impl Decoder {
    async fn create(pool: &PgPool) -> Self {
        let slot = format!("wal_{}", uuid::Uuid::now_v7().simple());
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
            .bind(&slot)
            .execute(pool)
            .await
            .expect("create a test_decoding slot");
        Self { slot }
    }

    /// The logical messages decoded since the last call: (prefix, transactional, content).
    async fn messages(&self, pool: &PgPool) -> Vec<(String, bool, Vec<u8>)> {
        let changes: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL)",
        )
        .bind(&self.slot)
        .fetch_all(pool)
        .await
        .expect("read the slot");
        changes
            .iter()
            .filter_map(|change| {
                let text = change.strip_prefix(b"message: transactional: ")?;
                let transactional = text.first() == Some(&b'1');
                let rest = text.get(2..)?.strip_prefix(b"prefix: ")?;
                let comma = rest.iter().position(|b| *b == b',')?;
                let prefix = String::from_utf8_lossy(&rest[..comma]).into_owned();
                let at = rest.windows(8).position(|w| w == b"content:")?;
                Some((prefix, transactional, rest[at + 8..].to_vec()))
            })
            .collect()
    }

    async fn drop_slot(self, pool: &PgPool) {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&self.slot)
            .execute(pool)
            .await
            .expect("drop the slot");
    }
}

fn ids(decoded: &[(String, bool, Vec<u8>)]) -> Vec<uuid::Uuid> {
    decoded
        .iter()
        .map(|(_, _, content)| envelope::decode(content).expect("an envelope").id)
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_batch_is_emitted_in_order_in_the_callers_transaction_and_a_rollback_emits_nothing(
    pool: PgPool,
) {
    migrate(&pool).await;
    let decoder = Decoder::create(&pool).await;
    let outbox = PgOutbox::wal();
    let batch = [message("a", 1), message("b", 2), message("a", 3)];

    let mut tx = pool.begin().await.expect("begin");
    outbox.enqueue_all(&mut tx, &batch).await.expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert!(
        decoder.messages(&pool).await.is_empty(),
        "rolled back: nothing"
    );

    let mut tx = pool.begin().await.expect("begin");
    outbox.enqueue_all(&mut tx, &batch).await.expect("enqueue");
    let in_savepoint = message("c", 4);
    sqlx::raw_sql("SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .expect("savepoint");
    outbox
        .enqueue(&mut tx, &in_savepoint)
        .await
        .expect("enqueue");
    sqlx::raw_sql("ROLLBACK TO SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .expect("rollback to savepoint");
    tx.commit().await.expect("commit");

    let decoded = decoder.messages(&pool).await;
    assert!(
        decoded
            .iter()
            .all(|(prefix, transactional, _)| prefix == "outbox" && *transactional)
    );
    assert_eq!(
        ids(&decoded),
        batch.iter().map(|m| m.id).collect::<Vec<_>>(),
        "in order, without the rolled-back savepoint's"
    );
    let first = envelope::decode(&decoded[0].2).expect("an envelope");
    assert_eq!(first.key, batch[0].key);
    assert_eq!(first.payload, batch[0].payload);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "no row is written");
    decoder.drop_slot(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_custom_prefix_is_used_and_a_bad_one_is_refused(pool: PgPool) {
    migrate(&pool).await;
    assert!(PgOutbox::wal().wal_prefix("").is_err());
    assert!(PgOutbox::wal().wal_prefix("has space").is_err());
    let decoder = Decoder::create(&pool).await;
    let outbox = PgOutbox::wal()
        .wal_prefix("billing")
        .expect("a valid prefix");
    let mut conn = pool.acquire().await.expect("a connection");
    outbox
        .enqueue(&mut conn, &message("k", 1))
        .await
        .expect("enqueue");
    drop(conn);
    let decoded = decoder.messages(&pool).await;
    assert_eq!(decoded.len(), 1);
    assert_eq!(decoded[0].0, "billing");
    decoder.drop_slot(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_sql_envelope_function_builds_the_librarys_bytes(pool: PgPool) {
    migrate(&pool).await;
    let function = Tables::default().wal_envelope_function();
    let full = Message::builder("orders")
        .key("order-é")
        .event_type("OrderPlaced")
        .source("/orders")
        .header("tenant", "acme")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&serde_json::json!({ "id": 7, "note": "ünïcödé" }))
        .expect("valid");
    let bare = Message::builder("t")
        .bytes(vec![0, 1, 2], "application/octet-stream")
        .expect("valid");
    for original in [full, bare] {
        let headers = serde_json::Value::Object(
            original
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        );
        let built: Vec<u8> = sqlx::query_scalar(&format!(
            "SELECT {function}($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(original.id)
        .bind(&original.topic)
        .bind(&original.key)
        .bind(&original.event_type)
        .bind(&original.source)
        .bind(&original.content_type)
        .bind(&original.payload)
        .bind(headers)
        .bind(original.created_at)
        .fetch_one(&pool)
        .await
        .expect("build the envelope in SQL");
        let mut expected = original.clone();
        expected.created_at =
            chrono::DateTime::from_timestamp_micros(original.created_at.timestamp_micros())
                .expect("in range");
        assert_eq!(
            built,
            envelope::encode(&expected).expect("encodes"),
            "byte for byte"
        );
        assert_eq!(envelope::decode(&built).expect("decodes"), expected);
    }
}
