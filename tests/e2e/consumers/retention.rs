//! The runner purges inbox rows older than the retention period.

use std::time::Duration;

use outbox_kafka::InboxRetention;
use outbox_tests::consumers::wait_for_effects;
use uuid::Uuid;

use super::{INBOX_NAME, Running, fresh, group, publish_steps, step_consumer, wait_for_stats};

/// A consumer sharing the inbox table, with a longer period of its own.
const OTHER: &str = "audit";

#[tokio::test(flavor = "multi_thread")]
async fn inbox_rows_older_than_the_period_kept_are_purged_in_batches_and_recent_ones_kept()
-> anyhow::Result<()> {
    let (db, topic) = fresh(1).await?;
    let old: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let recent: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO inbox (consumer, message_id, received_at)
         SELECT $1, id, now() - interval '10 days' FROM unnest($2::uuid[]) AS id
         UNION ALL
         SELECT $1, id, now() - interval '1 hour' FROM unnest($3::uuid[]) AS id
         UNION ALL
         SELECT $4, gen_random_uuid(), now() - interval '10 days' FROM generate_series(1, 4)",
    )
    .bind(INBOX_NAME)
    .bind(&old)
    .bind(&recent)
    .bind(OTHER)
    .execute(&db.pool)
    .await?;
    publish_steps(&topic, 1, 1).await?;

    let consumer = Running::start(
        step_consumer(&db, &topic, &group("retention"), "consumer")?.inbox_retention(
            InboxRetention::keep(Duration::from_secs(86_400))
                .every(Duration::from_millis(200))
                .batch(2),
        ),
    )?;
    wait_for_effects(&db.pool, 1, Duration::from_secs(60)).await?;
    wait_for_stats(&consumer.stats, Duration::from_secs(10), "the purge", |s| {
        s.purged == 5
    })
    .await?;
    // Later passes find nothing more to purge.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = consumer.stop().await?;
    assert_eq!(stats.purged, 5);

    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT message_id FROM inbox WHERE consumer = $1 ORDER BY received_at")
            .bind(INBOX_NAME)
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(
        left.len(),
        4,
        "three recent rows and the one just applied: {left:?}"
    );
    assert!(
        old.iter().all(|id| !left.contains(id)),
        "every old row purged"
    );
    assert!(
        recent.iter().all(|id| left.contains(id)),
        "recent rows kept"
    );
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = $1")
        .bind(OTHER)
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(
        others, 4,
        "another consumer's rows are its own to purge, however old"
    );
    Ok(())
}
