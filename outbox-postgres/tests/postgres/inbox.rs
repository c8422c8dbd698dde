//! The inbox: deduplication per consumer, in the consumer's transaction, and purging.

use chrono::Utc;
use outbox_core::Inbox;
use outbox_postgres::PgInbox;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{count, migrate};

async fn record_committed(inbox: &PgInbox, consumer: &str, id: Uuid) -> bool {
    let mut tx = inbox.begin().await.expect("begin");
    let first = inbox.record(&mut tx, consumer, id).await.expect("record");
    inbox.commit(tx).await.expect("commit");
    first
}

#[sqlx::test(migrations = false)]
async fn a_message_is_new_once_per_consumer(pool: PgPool) {
    migrate(&pool).await;
    let inbox = PgInbox::new(pool.clone());
    let id = Uuid::now_v7();

    assert!(
        record_committed(&inbox, "billing", id).await,
        "first delivery"
    );
    assert!(!record_committed(&inbox, "billing", id).await, "redelivery");
    assert!(
        record_committed(&inbox, "shipping", id).await,
        "another consumer"
    );
    assert!(!record_committed(&inbox, "shipping", id).await);
    assert!(
        record_committed(&inbox, "billing", Uuid::now_v7()).await,
        "another message"
    );
    assert_eq!(count(&pool, "inbox").await, 3);
}

#[sqlx::test(migrations = false)]
async fn a_rolled_back_record_leaves_no_trace_with_the_handlers_effects(pool: PgPool) {
    migrate(&pool).await;
    sqlx::query("CREATE TABLE ledger (message_id UUID NOT NULL)")
        .execute(&pool)
        .await
        .expect("create the consumer's table");
    let inbox = PgInbox::new(pool.clone());
    let id = Uuid::now_v7();

    let mut tx = inbox.begin().await.expect("begin");
    assert!(inbox.record(&mut tx, "billing", id).await.expect("record"));
    sqlx::query("INSERT INTO ledger (message_id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("the handler's effect");
    inbox.rollback(tx).await.expect("rollback");
    assert_eq!(count(&pool, "inbox").await, 0);
    assert_eq!(count(&pool, "ledger").await, 0);

    // The redelivery is applied for real this time.
    let mut tx = inbox.begin().await.expect("begin");
    assert!(inbox.record(&mut tx, "billing", id).await.expect("record"));
    sqlx::query("INSERT INTO ledger (message_id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("the handler's effect");
    inbox.commit(tx).await.expect("commit");
    assert_eq!(count(&pool, "inbox").await, 1);
    assert_eq!(count(&pool, "ledger").await, 1);
    assert!(!record_committed(&inbox, "billing", id).await);
}

#[sqlx::test(migrations = false)]
async fn purging_deletes_old_rows_in_batches_and_keeps_newer_ones(pool: PgPool) {
    migrate(&pool).await;
    let inbox = PgInbox::new(pool.clone());
    let old: Vec<Uuid> = (0..7).map(|_| Uuid::now_v7()).collect();
    let recent: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for id in old.iter().chain(&recent) {
        assert!(record_committed(&inbox, "billing", *id).await);
    }
    sqlx::query(
        "UPDATE inbox SET received_at = now() - interval '10 days' WHERE message_id = ANY($1)",
    )
    .bind(&old)
    .execute(&pool)
    .await
    .expect("age some rows");

    // 7 old rows in batches of 2: 2 + 2 + 2 + 1.
    let purged = inbox
        .purge_older_than("billing", Utc::now() - chrono::Duration::days(1), 2)
        .await
        .expect("purge");
    assert_eq!(purged, 7);
    let mut left: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM inbox")
        .fetch_all(&pool)
        .await
        .expect("read the inbox");
    left.sort();
    assert_eq!(left, recent);

    // Nothing old is left; an exact multiple of the batch size also ends.
    assert_eq!(
        inbox
            .purge_older_than("billing", Utc::now() - chrono::Duration::days(1), 2)
            .await
            .expect("purge"),
        0
    );
    assert_eq!(
        inbox
            .purge_older_than("billing", Utc::now() + chrono::Duration::seconds(1), 3)
            .await
            .expect("purge everything"),
        3
    );
    assert_eq!(count(&pool, "inbox").await, 0);

    // A purged message counts as new again: the reason the horizon must exceed redelivery times.
    assert!(record_committed(&inbox, "billing", recent[0]).await);
}

#[sqlx::test(migrations = false)]
async fn purging_one_consumer_leaves_every_other_consumers_rows(pool: PgPool) {
    migrate(&pool).await;
    let inbox = PgInbox::new(pool.clone());
    let id = Uuid::now_v7();
    for consumer in ["billing", "audit"] {
        assert!(record_committed(&inbox, consumer, id).await);
    }
    sqlx::query("UPDATE inbox SET received_at = now() - interval '10 days'")
        .execute(&pool)
        .await
        .expect("age every row");

    // Billing keeps a day; audit keeps a month and has not purged.
    let purged = inbox
        .purge_older_than("billing", Utc::now() - chrono::Duration::days(1), 100)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    assert!(
        !record_committed(&inbox, "audit", id).await,
        "audit still knows the message: a redelivery is absorbed"
    );
    assert!(record_committed(&inbox, "billing", id).await);
}

#[sqlx::test(migrations = false)]
async fn a_transaction_the_handler_broke_is_reported_before_the_commit(pool: PgPool) {
    migrate(&pool).await;
    let inbox = PgInbox::new(pool.clone());

    let mut healthy = inbox.begin().await.expect("begin");
    assert!(
        inbox
            .record(&mut healthy, "billing", Uuid::now_v7())
            .await
            .expect("record")
    );
    assert_eq!(inbox.broken(&mut healthy).await.expect("check"), None);
    inbox.commit(healthy).await.expect("commit");

    // A failed statement, its error dropped: COMMIT would roll everything back, reported as Ok.
    let mut aborted = inbox.begin().await.expect("begin");
    let lost = Uuid::now_v7();
    assert!(
        inbox
            .record(&mut aborted, "billing", lost)
            .await
            .expect("record")
    );
    assert!(
        sqlx::query("SELECT 1 / 0")
            .execute(&mut *aborted)
            .await
            .is_err()
    );
    let reason = inbox.broken(&mut aborted).await.expect("check");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("returned Ok regardless")),
        "{reason:?}"
    );
    inbox.rollback(aborted).await.expect("roll back");

    for ending in ["COMMIT", "ROLLBACK"] {
        let mut ended = inbox.begin().await.expect("begin");
        assert!(
            inbox
                .record(&mut ended, "billing", Uuid::now_v7())
                .await
                .expect("record")
        );
        sqlx::query(ending)
            .execute(&mut *ended)
            .await
            .expect(ending);
        let reason = inbox.broken(&mut ended).await.expect("check");
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("ended the inbox transaction")),
            "{ending}: {reason:?}"
        );
        inbox.rollback(ended).await.expect("roll back");
    }
    // The handler's own COMMIT kept one row; the aborted and rolled back ones kept none.
    assert_eq!(count(&pool, "inbox").await, 2);
    assert!(
        record_committed(&inbox, "billing", lost).await,
        "the lost effect can be applied again"
    );
}
