//! Per-key order with partitions processed in parallel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox_kafka::Received;
use outbox_tests::consumers::{STEP, Step, effects_report, record_step, wait_for_effects};
use sqlx::{Postgres, Transaction};

use super::{Running, builder, fresh, group, publish_steps};

/// Counts handlers running at once, and the most seen.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    most: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_key_is_applied_in_order_while_partitions_run_in_parallel_across_a_clean_restart()
-> anyhow::Result<()> {
    let (db, topic) = fresh(4).await?;
    // 40 keys x 50 steps, interleaved.
    publish_steps(&topic, 40, 50).await?;
    let group = group("order");
    let concurrency = Arc::new(Concurrency::default());
    let start = |concurrency: Arc<Concurrency>| {
        Running::start(builder(&db, &topic, &group)?.max_in_flight(4).on(
            STEP,
            move |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
                let concurrency = concurrency.clone();
                Box::pin(async move {
                    // Handlers always run to their end (the runner never drops one midway), so
                    // this count is exact.
                    let now = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
                    concurrency.most.fetch_max(now, Ordering::SeqCst);
                    // Uneven handler times, so partitions drift apart.
                    tokio::time::sleep(Duration::from_millis((step.seq % 3) as u64)).await;
                    let applied = record_step(tx, step, received, "consumer").await;
                    concurrency.now.fetch_sub(1, Ordering::SeqCst);
                    applied
                })
            },
        ))
    };
    let first = start(concurrency.clone())?;
    wait_for_effects(&db.pool, 700, Duration::from_secs(120)).await?;
    let first = first.stop().await?;
    let second = start(concurrency.clone())?;
    wait_for_effects(&db.pool, 2_000, Duration::from_secs(120)).await?;
    let second = second.stop().await?;
    // A clean stop finishes the record in hand and commits what it finished: the restart
    // starts right after it.
    assert_eq!(
        second.duplicates, 0,
        "nothing redelivered after a clean stop"
    );
    assert_eq!(first.applied + second.applied, 2_000);

    let report = effects_report(&db.pool).await?;
    assert_eq!(report.rows, 2_000);
    assert!(report.repeated.is_empty(), "{report:?}");
    assert!(
        report.out_of_order.is_empty(),
        "keys applied out of order: {:?}",
        report.out_of_order
    );
    let most = concurrency.most.load(Ordering::SeqCst);
    assert!(
        most > 1,
        "partitions ran in parallel (at most {most} handlers at once)"
    );
    assert!(
        most <= 4,
        "max_in_flight bounds the handlers running at once: {most}"
    );
    println!("per-key order held over 4 partitions with up to {most} handlers at once");
    Ok(())
}
