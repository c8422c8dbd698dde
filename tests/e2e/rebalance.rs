//! Lanes move to a relay that joins while another one is busy with a backlog.

use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_tests::{Fixture, RelayProcess, TestDb};

use crate::relay_program;

const FLAGS: [&str; 6] = [
    "--lanes",
    "16",
    "--batch-size",
    "100",
    "--poll-interval",
    "100ms",
];

/// Lane locks (exclusive advisory locks) held per relay session in the test database.
async fn lanes_per_relay(db: &TestDb) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.mode = 'ExclusiveLock' AND l.granted
           AND a.application_name = 'outbox-relay' AND a.datname = current_database()
         GROUP BY l.pid ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_joining_during_a_backlog_gets_its_share_of_lanes_within_seconds()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(4).await?;
    let messages: Vec<Message> = (0..30_000)
        .map(|n| {
            Message::builder(&topic)
                .key(format!("key-{}", n % 500))
                .json(&n)
        })
        .collect::<Result<_, _>>()?;
    for chunk in messages.chunks(5_000) {
        db.enqueue_committed(chunk).await?;
    }
    let first = RelayProcess::spawn(relay_program(), &db, &FLAGS)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while lanes_per_relay(&db).await? != vec![16] {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first relay never owned all 16 lanes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.wait_until_backlog_at_most(28_000, Duration::from_secs(60))
        .await?;

    // The first relay is busy (windows in flight all the time); the second must still get lanes.
    let second = RelayProcess::spawn(relay_program(), &db, &FLAGS)?;
    let joined = Instant::now();
    let mut split = lanes_per_relay(&db).await?;
    while split != vec![8, 8] {
        anyhow::ensure!(
            joined.elapsed() < Duration::from_secs(10),
            "lanes per relay still {split:?} {:?} after the second joined",
            joined.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        split = lanes_per_relay(&db).await?;
    }
    let took = joined.elapsed();
    let backlog = db.outbox_count().await?;
    assert!(
        backlog > 0,
        "the split must happen while the backlog lasts, to prove the point"
    );
    println!(
        "lanes split 8/8 {took:?} after the second relay joined, with {backlog} messages still waiting"
    );
    db.wait_until_drained(Duration::from_secs(120)).await?;
    assert!(first.terminate().await?.success());
    assert!(second.terminate().await?.success());
    Ok(())
}
