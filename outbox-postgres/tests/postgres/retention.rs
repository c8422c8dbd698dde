//! Retention of published messages: marked instead of deleted, never claimed again, purged in
//! batches once older than the retention; and the migration that adds it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::{DeadLetter, LaneStore, Lease, Retry, Settlement};
use outbox_postgres::{Error, PgRelayStore, PgRelayStoreConfig, Tables};
use sqlx::PgPool;

use crate::support::{
    REBALANCE, claim, count, dead_letters, enqueue_committed, ids, key_in_lane, message, migrate,
    outbox_seqs, publish, retry_state, seqs,
};

const LANES: u32 = 8;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A relay store over the default tables with `config`'s retention settings.
fn store_with(pool: &PgPool, config: PgRelayStoreConfig) -> PgRelayStore {
    let config = config
        .lanes(LANES)
        .expect("valid lane count")
        .rebalance_interval(REBALANCE);
    PgRelayStore::new(pool.clone(), config)
}

/// A relay store keeping published messages for `retention`.
fn retaining(pool: &PgPool, retention: Duration) -> PgRelayStore {
    let config = PgRelayStoreConfig::default()
        .retention(Some(retention))
        .expect("valid retention");
    store_with(pool, config)
}

/// `published_at` of every outbox row, in `seq` order.
async fn published_at(pool: &PgPool) -> Vec<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT published_at FROM outbox ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("read the outbox")
}

/// Marks the rows `seqs` as published `age` ago.
async fn backdate(pool: &PgPool, seqs: &[i64], age: Duration) {
    sqlx::query(
        "UPDATE outbox SET published_at = now() - $2 * interval '1 second' WHERE seq = ANY($1)",
    )
    .bind(seqs)
    .bind(age.as_secs_f64())
    .execute(pool)
    .await
    .expect("backdate published rows");
}

#[sqlx::test(migrations = false)]
async fn with_retention_published_messages_stay_marked_and_are_not_claimed_again(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..5).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let relay = retaining(&pool, DAY);

    let before = Utc::now();
    let batch = claim(&relay, 3).await;
    assert_eq!(
        ids(&batch),
        messages[..3].iter().map(|m| m.id).collect::<Vec<_>>()
    );
    assert_eq!(publish(&relay, &batch).await, 3);
    let after = Utc::now();

    // Every row is still there; the published ones carry the time of their settlement.
    assert_eq!(count(&pool, "outbox").await, 5);
    let marks = published_at(&pool).await;
    for mark in &marks[..3] {
        let at = mark.expect("published_at is set");
        let slack = chrono::Duration::seconds(1);
        assert!(at >= before - slack && at <= after + slack, "{at}");
    }
    assert_eq!(marks[3..], [None, None]);

    // Settling them again changes nothing, and they are not offered again.
    assert_eq!(publish(&relay, &batch).await, 0);
    assert_eq!(published_at(&pool).await, marks);
    let rest = claim(&relay, 10).await;
    assert_eq!(
        ids(&rest),
        messages[3..].iter().map(|m| m.id).collect::<Vec<_>>()
    );
    assert_eq!(publish(&relay, &rest).await, 2);
    assert!(claim(&relay, 10).await.is_empty());
    assert_eq!(count(&pool, "outbox").await, 5);
    assert!(published_at(&pool).await.iter().all(Option::is_some));
    relay.close().await;

    // Another relay (the lanes' next owner) does not offer them either.
    let next = retaining(&pool, DAY);
    assert!(claim(&next, 10).await.is_empty());
    next.close().await;
}

#[sqlx::test(migrations = false)]
async fn retained_rows_hold_back_neither_their_lane_nor_failed_messages(pool: PgPool) {
    migrate(&pool).await;
    let key = key_in_lane("lane", 0, LANES);
    let first = message(&key, 1);
    enqueue_committed(&pool, std::slice::from_ref(&first)).await;
    let relay = retaining(&pool, DAY);
    let published = claim(&relay, 10).await;
    assert_eq!(publish(&relay, &published).await, 1);
    // Even a retained row still carrying a future retry time does not hold its lane.
    sqlx::query("UPDATE outbox SET not_before = now() + interval '1 hour' WHERE seq = $1")
        .bind(published[0].seq)
        .execute(&pool)
        .await
        .expect("give the retained row a retry time");

    let messages: Vec<_> = (2..5).map(|n| message(&key, n)).collect();
    enqueue_committed(&pool, &messages).await;
    let batch = claim(&relay, 10).await;
    assert_eq!(
        ids(&batch),
        messages.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    let s = seqs(&batch);

    // Failures settle as without retention; a stale outcome naming a retained row changes nothing.
    let settlement = Settlement {
        token: batch.token,
        published: vec![s[0]],
        retries: vec![
            Retry {
                seq: s[2],
                attempts: 1,
                delay: Duration::from_secs(3600),
                error: "Transient: timed out".into(),
            },
            Retry {
                seq: published[0].seq,
                attempts: 7,
                delay: Duration::from_secs(3600),
                error: "stale".into(),
            },
        ],
        dead_letters: vec![
            DeadLetter {
                seq: s[1],
                attempts: 1,
                error: "MessageTooLarge: record is 2 MB".into(),
            },
            DeadLetter {
                seq: published[0].seq,
                attempts: 1,
                error: "stale".into(),
            },
        ],
    };
    assert_eq!(relay.settle(&settlement).await.expect("settle").len(), 3);
    assert_eq!(
        dead_letters(&pool)
            .await
            .iter()
            .map(|d| d.seq)
            .collect::<Vec<_>>(),
        vec![s[1]]
    );
    assert_eq!(outbox_seqs(&pool).await, vec![published[0].seq, s[0], s[2]]);
    let retained = retry_state(&pool, published[0].seq).await;
    assert_eq!((retained.attempts, retained.last_error), (0, None));
    assert_eq!(retry_state(&pool, s[2]).await.attempts, 1);
    assert_eq!(
        published_at(&pool)
            .await
            .iter()
            .map(Option::is_some)
            .collect::<Vec<_>>(),
        vec![true, true, false]
    );

    // The retry does hold its lane back; the retained rows still do not count as waiting.
    assert!(claim(&relay, 10).await.is_empty());
    sqlx::query("UPDATE outbox SET not_before = NULL WHERE seq = $1")
        .bind(s[2])
        .execute(&pool)
        .await
        .expect("make the retry due");
    assert_eq!(seqs(&claim(&relay, 10).await), vec![s[2]]);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn rows_older_than_the_retention_are_purged_in_batches_and_newer_ones_kept(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..9).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let publisher = retaining(&pool, DAY);
    let batch = claim(&publisher, 10).await;
    assert_eq!(publish(&publisher, &batch).await, 9);
    publisher.close().await;
    let s = seqs(&batch);
    // Five rows are past the retention, two are just inside it, two were published just now.
    backdate(&pool, &s[..5], DAY + Duration::from_secs(60)).await;
    backdate(&pool, &s[5..7], DAY - Duration::from_secs(60)).await;
    let waiting = message("k", 9);
    enqueue_committed(&pool, std::slice::from_ref(&waiting)).await;

    let config = PgRelayStoreConfig::default()
        .retention(Some(DAY))
        .and_then(|c| c.purge_batch(2))
        .expect("valid settings")
        .purge_interval(Duration::from_secs(2));
    let relay = store_with(&pool, config);
    // One statement of at most two rows per claim while full batches come back; the unpublished
    // message is claimed all along.
    let mut left = Vec::new();
    for _ in 0..4 {
        assert_eq!(ids(&claim(&relay, 10).await), vec![waiting.id]);
        left.push(count(&pool, "outbox").await);
    }
    assert_eq!(left, vec![8, 6, 5, 5]);
    assert_eq!(outbox_seqs(&pool).await[..4], s[5..]);

    // The last statement found less than a batch: the next purge waits for the interval.
    backdate(&pool, &s[5..6], DAY + Duration::from_secs(60)).await;
    claim(&relay, 10).await;
    assert_eq!(
        count(&pool, "outbox").await,
        5,
        "purged before the interval"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    claim(&relay, 10).await;
    let mut kept = s[6..].to_vec();
    kept.push(seqs(&claim(&relay, 10).await)[0]);
    assert_eq!(outbox_seqs(&pool).await, kept);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_short_retention_purges_what_the_relay_published(pool: PgPool) {
    migrate(&pool).await;
    enqueue_committed(&pool, &[message("k", 1), message("k", 2)]).await;
    let config = PgRelayStoreConfig::default()
        .retention(Some(Duration::from_millis(200)))
        .expect("valid retention")
        .purge_interval(Duration::ZERO);
    let relay = store_with(&pool, config);
    let batch = claim(&relay, 10).await;
    assert_eq!(publish(&relay, &batch).await, 2);
    assert!(claim(&relay, 10).await.is_empty());
    assert_eq!(count(&pool, "outbox").await, 2, "kept within the retention");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(claim(&relay, 10).await.is_empty());
    assert_eq!(count(&pool, "outbox").await, 0);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn without_retention_published_rows_are_deleted(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..3).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let relay = store_with(&pool, PgRelayStoreConfig::default());
    let batch = claim(&relay, 10).await;
    assert_eq!(publish(&relay, &batch).await, 3);
    assert_eq!(count(&pool, "outbox").await, 0);
    assert!(claim(&relay, 10).await.is_empty());
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn the_retention_migration_applies_on_top_of_version_1(pool: PgPool) {
    // A database migrated by a version of the library that knew only migration 1, with a message
    // waiting.
    let tables = Tables::default();
    let rendered = outbox_postgres::migrations(&tables);
    assert_eq!(
        rendered.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    sqlx::raw_sql(&rendered[0].sql)
        .execute(&pool)
        .await
        .expect("apply migration 1");
    sqlx::raw_sql(
        "CREATE TABLE outbox_migrations (
             version     BIGINT      PRIMARY KEY,
             description TEXT        NOT NULL,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         );
         INSERT INTO outbox_migrations (version, description)
         VALUES (1, 'create outbox, dead letters and inbox')",
    )
    .execute(&pool)
    .await
    .expect("record migration 1");
    let waiting = message("k", 1);
    sqlx::query(
        "INSERT INTO outbox (id, slot, topic, key, content_type, payload, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(waiting.id)
    .bind(
        i32::try_from(outbox_core::lane::slot_for(
            waiting.key.as_deref(),
            &waiting.id,
        ))
        .expect("slot fits"),
    )
    .bind(&waiting.topic)
    .bind(&waiting.key)
    .bind(&waiting.content_type)
    .bind(&waiting.payload)
    .bind(waiting.created_at)
    .execute(&pool)
    .await
    .expect("a message written under version 1");

    assert_eq!(migrate(&pool).await, vec![2, 3, 4]);
    assert_eq!(migrate(&pool).await, Vec::<i64>::new());
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM outbox_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .expect("read the history");
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'outbox' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("list the indexes");
    for index in ["outbox_published_at_idx", "outbox_unpublished_idx"] {
        assert!(indexes.iter().any(|i| i == index), "{index} in {indexes:?}");
    }
    assert_eq!(published_at(&pool).await, vec![None]);

    // The message from before the upgrade is published, and retained.
    let relay = retaining(&pool, DAY);
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![waiting.id]);
    assert_eq!(publish(&relay, &batch).await, 1);
    assert!(published_at(&pool).await[0].is_some());
    assert!(claim(&relay, 10).await.is_empty());
    relay.close().await;
}

#[test]
fn retention_and_purge_settings_are_validated() {
    let zero = PgRelayStoreConfig::default()
        .retention(Some(Duration::ZERO))
        .expect_err("a retention of 0 keeps nothing");
    assert!(matches!(zero, Error::Config(_)), "{zero:?}");
    assert!(zero.to_string().contains("retention"), "{zero}");
    let forever = PgRelayStoreConfig::default()
        .retention(Some(Duration::from_secs(200 * 365 * 24 * 3600)))
        .expect_err("two centuries");
    assert!(forever.to_string().contains("retention"), "{forever}");
    let batch = PgRelayStoreConfig::default()
        .purge_batch(0)
        .expect_err("an empty batch");
    assert!(batch.to_string().contains("purge batch"), "{batch}");
    for fine in [None, Some(Duration::from_millis(1)), Some(DAY * 365)] {
        PgRelayStoreConfig::default()
            .retention(fine)
            .expect("valid retention");
    }
}
