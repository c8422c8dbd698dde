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
