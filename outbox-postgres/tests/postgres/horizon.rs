//! The publish horizon: a message committed while an earlier-numbered one is still in an open
//! transaction is not claimed before that transaction ends.

use std::time::Duration;

use outbox_core::Lease;
use outbox_postgres::PgOutbox;
use sqlx::PgPool;

use crate::support::{
    claim, enqueue_committed, ids, key_in_lane, message, migrate, outbox_ids, publish, seqs, store,
};

#[sqlx::test(migrations = false)]
async fn an_open_enqueuing_transaction_holds_back_later_numbers_until_it_commits(pool: PgPool) {
    migrate(&pool).await;
    let relay = store(&pool, 8);

    // Messages committed before the slow writer started are claimed as usual.
    let early = message("k", 0);
    enqueue_committed(&pool, std::slice::from_ref(&early)).await;
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![early.id]);
    assert_eq!(publish(&relay, &batch).await, 1);

    // T1 takes the lower number and stays open.
    let first = message("k", 1);
    let mut t1 = pool.begin().await.expect("begin T1");
    PgOutbox::new()
        .enqueue(&mut t1, &first)
        .await
        .expect("enqueue in T1");

    // A second writer takes a higher number for the same key and commits.
    let second = message("k", 2);
    let elsewhere = message(&key_in_lane("other", 5, 8), 3);
    enqueue_committed(&pool, std::slice::from_ref(&second)).await;
    enqueue_committed(&pool, std::slice::from_ref(&elsewhere)).await;
    assert_eq!(outbox_ids(&pool).await, vec![second.id, elsewhere.id]);

    for _ in 0..3 {
        let held = claim(&relay, 10).await;
        assert!(
            !ids(&held).contains(&second.id),
            "the second message was claimed while T1, holding a lower seq of its key, was open"
        );
        assert!(
            held.is_empty(),
            "nothing above the horizon is claimed: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    t1.commit().await.expect("commit T1");
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![first.id, second.id, elsewhere.id]);
    assert!(seqs(&batch).is_sorted());
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_rolled_back_enqueuing_transaction_releases_the_horizon(pool: PgPool) {
    migrate(&pool).await;
    let relay = store(&pool, 8);
    assert!(claim(&relay, 10).await.is_empty());

    let mut t1 = pool.begin().await.expect("begin T1");
    PgOutbox::new()
        .enqueue(&mut t1, &message("k", 1))
        .await
        .expect("enqueue in T1");
    let second = message("k", 2);
    enqueue_committed(&pool, std::slice::from_ref(&second)).await;
    assert!(claim(&relay, 10).await.is_empty());

    t1.rollback().await.expect("roll T1 back");
    assert_eq!(ids(&claim(&relay, 10).await), vec![second.id]);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn an_unrelated_open_transaction_does_not_hold_the_horizon_back(pool: PgPool) {
    migrate(&pool).await;
    sqlx::query("CREATE TABLE audit (note TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("create a business table");
    let relay = store(&pool, 8);

    // A long transaction that wrote business rows but enqueued nothing, opened before the message.
    let mut unrelated = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO audit (note) VALUES ('slow work')")
        .execute(&mut *unrelated)
        .await
        .expect("insert");
    let reader_snapshot: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut *unrelated)
        .await
        .expect("read the outbox inside the open transaction");
    assert_eq!(reader_snapshot, 0);

    let committed = message("k", 1);
    enqueue_committed(&pool, std::slice::from_ref(&committed)).await;

    assert_eq!(ids(&claim(&relay, 10).await), vec![committed.id]);
    unrelated.rollback().await.expect("rollback");
    relay.close().await;
}

/// What a service in another language writes: a plain `INSERT`, the slot from the outbox's SQL
/// function, the number from the column's default.
const SQL_ENQUEUE: &str =
    "INSERT INTO outbox (id, slot, topic, key, content_type, payload, created_at)
     VALUES ($1, outbox_slot($2, $1), 'orders', $2, 'application/json', '{}', now())";

#[sqlx::test(migrations = false)]
async fn a_plain_sql_writer_holds_the_horizon_as_the_library_does(pool: PgPool) {
    migrate(&pool).await;
    let relay = store(&pool, 8);
    assert!(claim(&relay, 10).await.is_empty());

    // T1 writes with plain SQL, taking the lower number, and stays open.
    let mut t1 = pool.begin().await.expect("begin T1");
    let first = uuid::Uuid::now_v7();
    sqlx::query(SQL_ENQUEUE)
        .bind(first)
        .bind(b"k".to_vec())
        .execute(&mut *t1)
        .await
        .expect("insert with plain SQL");
    let second = message("k", 2);
    enqueue_committed(&pool, std::slice::from_ref(&second)).await;
    for _ in 0..3 {
        let held = claim(&relay, 10).await;
        assert!(
            held.is_empty(),
            "the library's message was claimed while the SQL writer's lower number was open: {held:?}"
        );
    }
    t1.commit().await.expect("commit T1");
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![first, second.id], "in number order");
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn the_sql_slot_function_places_keys_as_the_library_does(pool: PgPool) {
    migrate(&pool).await;
    let mut keys: Vec<Option<Vec<u8>>> = vec![None, Some(Vec::new())];
    for n in 0..500_u32 {
        // Lengths 1 to 14, every remainder modulo 4, bytes above 127 included.
        let len = 1 + (n % 14) as usize;
        keys.push(Some(
            (0..len).map(|i| (n as usize * 31 + i * 97) as u8).collect(),
        ));
    }
    for key in keys {
        let id = uuid::Uuid::now_v7();
        let slot: i32 = sqlx::query_scalar("SELECT outbox_slot($1, $2)")
            .bind(&key)
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("the slot function");
        let expected = outbox_core::lane::slot_for(key.as_deref(), &id);
        assert_eq!(slot as u32, expected, "key {key:?}, id {id}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_relay_refuses_a_sequence_that_hands_out_blocks_or_a_default_without_the_lock(
    pool: PgPool,
) {
    migrate(&pool).await;
    enqueue_committed(&pool, &[message("k", 1)]).await;
    sqlx::query("ALTER SEQUENCE outbox_seq CACHE 20")
        .execute(&pool)
        .await
        .expect("cache numbers");
    let relay = store(&pool, 8);
    let error = relay.check().await.expect_err("a cached sequence");
    assert!(error.to_string().contains("caches 20 numbers"), "{error}");
    assert!(error.to_string().contains("CACHE 1"), "{error}");
    let error = crate::support::try_claim(&relay, 10)
        .await
        .expect_err("no session on a cached sequence");
    assert!(error.to_string().contains("caches 20 numbers"), "{error}");

    sqlx::query("ALTER SEQUENCE outbox_seq CACHE 1")
        .execute(&pool)
        .await
        .expect("one at a time");
    sqlx::query("ALTER TABLE outbox ALTER COLUMN seq SET DEFAULT nextval('outbox_seq')")
        .execute(&pool)
        .await
        .expect("a default without the lock");
    let error = relay.check().await.expect_err("a default without the lock");
    assert!(error.to_string().contains("writer lock"), "{error}");

    sqlx::query("ALTER TABLE outbox ALTER COLUMN seq SET DEFAULT outbox_next_seq()")
        .execute(&pool)
        .await
        .expect("restore the default");
    relay.check().await.expect("a sound schema passes");
    assert_eq!(claim(&relay, 10).await.len(), 1);
    relay.close().await;
}

/// Sets the order's status in `tx` (taking its row lock) and returns nothing; the event of the
/// change is enqueued by the caller, before or after, as the two tests below show.
async fn set_status(tx: &mut sqlx::PgConnection, status: &str) {
    sqlx::query("UPDATE orders SET status = $1 WHERE id = 42")
        .bind(status)
        .execute(tx)
        .await
        .expect("update the order");
}

async fn create_order(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status TEXT NOT NULL);
         INSERT INTO orders VALUES (42, 'placed')",
    )
    .execute(pool)
    .await
    .expect("create the order");
}

/// What the topic would say last about the order, and what the database says.
async fn last_event_and_state(
    pool: &PgPool,
    relay: &outbox_postgres::PgRelayStore,
) -> (String, String) {
    let batch = claim(relay, 10).await;
    let last: String = batch
        .last()
        .map(|m| serde_json::from_slice(&m.message.payload).expect("a JSON status"))
        .expect("two events");
    let state: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = 42")
        .fetch_one(pool)
        .await
        .expect("read the order");
    (last, state)
}

fn status_event(status: &str) -> outbox_core::Message {
    outbox_core::Message::builder("orders")
        .key("42")
        .json(&status)
        .expect("valid message")
}

#[sqlx::test(migrations = false)]
async fn enqueuing_before_taking_the_entitys_row_lock_can_publish_changes_in_the_opposite_order(
    pool: PgPool,
) {
    migrate(&pool).await;
    create_order(&pool).await;
    let outbox = PgOutbox::new();
    let (mut paid, mut cancelled) = (
        pool.begin().await.expect("begin"),
        pool.begin().await.expect("begin"),
    );
    // Both enqueue first: `paid` takes the lower number.
    outbox
        .enqueue(&mut paid, &status_event("paid"))
        .await
        .expect("enqueue");
    outbox
        .enqueue(&mut cancelled, &status_event("cancelled"))
        .await
        .expect("enqueue");
    // Then they change the row: `cancelled` first, `paid` after it, so the order ends up paid.
    set_status(&mut cancelled, "cancelled").await;
    cancelled.commit().await.expect("commit");
    set_status(&mut paid, "paid").await;
    paid.commit().await.expect("commit");

    let relay = store(&pool, 8);
    let (last, state) = last_event_and_state(&pool, &relay).await;
    assert_eq!(state, "paid");
    assert_eq!(
        last, "cancelled",
        "the events follow the numbers, not the changes"
    );
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn taking_the_entitys_row_lock_before_enqueuing_publishes_changes_in_the_order_they_happened(
    pool: PgPool,
) {
    migrate(&pool).await;
    create_order(&pool).await;
    let outbox = PgOutbox::new();
    let mut cancelled = pool.begin().await.expect("begin");
    set_status(&mut cancelled, "cancelled").await;
    // `paid` starts meanwhile and waits for the row lock.
    let waiting = pool.clone();
    let paid = tokio::spawn(async move {
        let mut paid = waiting.begin().await.expect("begin");
        set_status(&mut paid, "paid").await;
        PgOutbox::new()
            .enqueue(&mut paid, &status_event("paid"))
            .await
            .expect("enqueue");
        paid.commit().await.expect("commit");
    });
    for _ in 0..500 {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE orders%'",
        )
        .fetch_one(&pool)
        .await
        .expect("read the activity");
        if blocked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    outbox
        .enqueue(&mut cancelled, &status_event("cancelled"))
        .await
        .expect("enqueue");
    cancelled.commit().await.expect("commit");
    paid.await.expect("the paid transaction");

    let relay = store(&pool, 8);
    let (last, state) = last_event_and_state(&pool, &relay).await;
    assert_eq!(state, "paid");
    assert_eq!(
        last, "paid",
        "the row lock orders the numbers as it orders the changes"
    );
    relay.close().await;
}
