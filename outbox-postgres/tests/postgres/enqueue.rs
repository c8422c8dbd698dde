//! Enqueueing in the caller's transaction: atomicity with business rows, batches, order.

use outbox_core::{Lease, Message};
use outbox_postgres::PgOutbox;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{
    claim, count, enqueue_committed, ids, message, migrate, outbox_ids, publish, seqs, store,
};

async fn create_orders(pool: &PgPool) {
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .execute(pool)
        .await
        .expect("create the business table");
}

async fn place_order(tx: &mut sqlx::PgConnection, order: i64, event: &Message) {
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES ($1, 1999)")
        .bind(order)
        .execute(&mut *tx)
        .await
        .expect("insert the order");
    PgOutbox::new()
        .enqueue(tx, event)
        .await
        .expect("enqueue the event");
}

#[sqlx::test(migrations = false)]
async fn a_committed_transaction_stores_the_business_row_and_the_message(pool: PgPool) {
    migrate(&pool).await;
    create_orders(&pool).await;
    let event = message("order-42", 42);

    let mut tx = pool.begin().await.expect("begin");
    place_order(&mut tx, 42, &event).await;
    tx.commit().await.expect("commit");

    assert_eq!(count(&pool, "orders").await, 1);
    assert_eq!(outbox_ids(&pool).await, vec![event.id]);

    // What the relay reads back is what was written.
    let relay = store(&pool, 8);
    let batch = claim(&relay, 10).await;
    assert_eq!(batch.len(), 1);
    let stored = &batch[0].message;
    assert_eq!(batch[0].attempts, 0);
    assert_eq!(stored.id, event.id);
    assert_eq!(stored.topic, event.topic);
    assert_eq!(stored.key.as_deref(), Some(&b"order-42"[..]));
    assert_eq!(stored.event_type.as_deref(), Some("OrderPlaced"));
    assert_eq!(stored.source.as_deref(), Some("/tests"));
    assert_eq!(stored.content_type, "application/json");
    assert_eq!(stored.payload, br#"{"n":42}"#.to_vec());
    assert_eq!(stored.headers, event.headers);
    let drift = (stored.created_at - event.created_at).num_microseconds();
    assert!(
        drift.is_some_and(|us| us.abs() <= 1),
        "created_at {} came back as {}",
        event.created_at,
        stored.created_at
    );
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_rolled_back_transaction_leaves_neither_row(pool: PgPool) {
    migrate(&pool).await;
    create_orders(&pool).await;

    let mut tx = pool.begin().await.expect("begin");
    place_order(&mut tx, 1, &message("order-1", 1)).await;
    tx.rollback().await.expect("rollback");

    // A transaction dropped without commit (an early return, a panic) rolls back as well.
    let mut tx = pool.begin().await.expect("begin");
    place_order(&mut tx, 2, &message("order-2", 2)).await;
    drop(tx);

    assert_eq!(count(&pool, "orders").await, 0);
    assert_eq!(count(&pool, "outbox").await, 0);
    let relay = store(&pool, 8);
    assert!(claim(&relay, 10).await.is_empty());
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_batch_of_a_thousand_is_stored_and_claimed_in_the_given_order(pool: PgPool) {
    migrate(&pool).await;
    // Ten keys interleaved, and ids deliberately not in time order, so that neither the key nor the
    // id could explain the order that comes back.
    let messages: Vec<Message> = (0..1000_u64)
        .map(|n| {
            Message::builder("orders")
                .key(format!("customer-{}", n % 10))
                .id(Uuid::from_u128(u128::from(1000 - n)))
                .json(&serde_json::json!({ "n": n }))
                .expect("valid message")
        })
        .collect();
    let expected: Vec<Uuid> = messages.iter().map(|m| m.id).collect();

    let mut tx = pool.begin().await.expect("begin");
    PgOutbox::new()
        .enqueue_all(&mut tx, &messages)
        .await
        .expect("enqueue the batch");
    tx.commit().await.expect("commit");

    assert_eq!(count(&pool, "outbox").await, 1000);
    assert_eq!(
        outbox_ids(&pool).await,
        expected,
        "seq order is the given order"
    );

    let relay = store(&pool, 8);
    let mut claimed = Vec::new();
    for _ in 0..4 {
        let batch = claim(&relay, 250).await;
        assert_eq!(batch.len(), 250);
        assert!(seqs(&batch).is_sorted(), "a batch comes in seq order");
        assert_eq!(publish(&relay, &batch).await, 250);
        claimed.extend(ids(&batch));
    }
    assert_eq!(claimed, expected, "claimed in the enqueue order");
    assert!(claim(&relay, 250).await.is_empty());
    assert_eq!(count(&pool, "outbox").await, 0);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_failing_batch_stores_none_of_its_messages(pool: PgPool) {
    migrate(&pool).await;
    let first = message("k", 1);
    let mut duplicate = message("k", 3);
    duplicate.id = first.id;
    let batch = [first, message("k", 2), duplicate];

    // Outside an explicit transaction: the one statement is all or nothing.
    let mut conn = pool.acquire().await.expect("acquire");
    let err = PgOutbox::new()
        .enqueue_all(&mut conn, &batch)
        .await
        .expect_err("a duplicate id is refused");
    assert!(
        matches!(err, outbox_postgres::Error::Database(_)),
        "{err:?}"
    );
    assert_eq!(count(&pool, "outbox").await, 0);

    // An empty batch is a no-op.
    PgOutbox::new()
        .enqueue_all(&mut conn, &[])
        .await
        .expect("empty batch");
    assert_eq!(count(&pool, "outbox").await, 0);
}

#[sqlx::test(migrations = false)]
async fn separate_transactions_are_claimed_in_commit_order_per_key(pool: PgPool) {
    migrate(&pool).await;
    let first = message("k", 1);
    let second = message("k", 2);
    enqueue_committed(&pool, std::slice::from_ref(&first)).await;
    enqueue_committed(&pool, std::slice::from_ref(&second)).await;

    let relay = store(&pool, 1);
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![first.id, second.id]);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn forged_and_oversized_messages_are_refused_in_the_transaction_which_stays_usable(
    pool: PgPool,
) {
    migrate(&pool).await;
    create_orders(&pool).await;
    // The fields are public: a header set after building slips past the builder's checks.
    let mut forged = message("k", 1);
    forged
        .headers
        .insert("ce_id".into(), Uuid::now_v7().to_string());
    let mut nul = message("k", 2);
    nul.event_type = Some("Order\0Placed".into());
    let large = Message::builder("orders")
        .bytes(vec![7_u8; 2048], "application/octet-stream")
        .expect("valid message");
    let outbox = PgOutbox::new().max_message_bytes(1024);

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES (1, 1999)")
        .execute(&mut *tx)
        .await
        .expect("insert the order");
    let error = outbox
        .enqueue_all(&mut tx, &[message("k", 0), forged.clone()])
        .await
        .expect_err("a forged ce_id");
    let text = outbox_core::relay::error_chain(&error);
    assert!(text.contains(&forged.id.to_string()), "{text}");
    assert!(text.contains("`ce_id` is reserved"), "{text}");
    let error = outbox.enqueue(&mut tx, &nul).await.expect_err("a NUL");
    assert!(
        outbox_core::relay::error_chain(&error).contains("NUL"),
        "{error}"
    );
    let error = outbox
        .enqueue(&mut tx, &large)
        .await
        .expect_err("too large");
    let text = error.to_string();
    assert!(
        text.contains("above the outbox's limit of 1024 bytes"),
        "{text}"
    );
    let fine = message("k", 3);
    outbox
        .enqueue(&mut tx, &fine)
        .await
        .expect("the transaction is still usable");
    tx.commit().await.expect("commit");

    assert_eq!(count(&pool, "orders").await, 1);
    assert_eq!(
        outbox_ids(&pool).await,
        vec![fine.id],
        "only the valid message"
    );
}
