//! `wait_for_work`: woken by the NOTIFY of a committed enqueue, otherwise a bounded sleep.

use std::time::{Duration, Instant};

use outbox_core::{Lease, WakeUps};
use outbox_postgres::PgOutbox;
use sqlx::PgPool;

use crate::support::{message, migrate, store};

const MAX_WAIT: Duration = Duration::from_secs(5);

/// Runs `wait_for_work(max_wait)` and returns how long it took.
async fn timed_wait(relay: &impl WakeUps, max_wait: Duration) -> Duration {
    let started = Instant::now();
    relay.wait_for_work(max_wait).await;
    started.elapsed()
}

async fn enqueue_later(pool: &PgPool, outbox: PgOutbox, after: Duration, commit: bool) {
    tokio::time::sleep(after).await;
    let mut tx = pool.begin().await.expect("begin");
    outbox
        .enqueue(&mut tx, &message("k", 1))
        .await
        .expect("enqueue");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
}

#[sqlx::test(migrations = false)]
async fn a_committed_enqueue_wakes_the_waiting_relay(pool: PgPool) {
    migrate(&pool).await;
    let relay = store(&pool, 8);
    // The first wait opens the LISTEN connection.
    let idle = timed_wait(&relay, Duration::from_millis(300)).await;
    assert!(
        idle >= Duration::from_millis(250),
        "woke after {idle:?} with nothing to do"
    );

    let (woke, ()) = tokio::join!(
        timed_wait(&relay, MAX_WAIT),
        enqueue_later(&pool, PgOutbox::new(), Duration::from_millis(200), true)
    );
    assert!(
        woke >= Duration::from_millis(150),
        "woke after {woke:?}, before the commit"
    );
    assert!(woke < Duration::from_secs(2), "woke only after {woke:?}");
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn without_a_commit_the_relay_waits_for_the_whole_max_wait(pool: PgPool) {
    migrate(&pool).await;
    let relay = store(&pool, 8);
    let max_wait = Duration::from_millis(800);

    let idle = timed_wait(&relay, max_wait).await;
    assert!(idle >= Duration::from_millis(750), "woke after {idle:?}");
    assert!(idle < Duration::from_secs(3), "slept {idle:?}");

    // A rolled-back enqueue notifies nobody.
    let (waited, ()) = tokio::join!(
        timed_wait(&relay, max_wait),
        enqueue_later(&pool, PgOutbox::new(), Duration::from_millis(100), false)
    );
    assert!(
        waited >= Duration::from_millis(750),
        "woke after {waited:?}"
    );

    // Neither does a quiet outbox, even when it commits.
    let (waited, ()) = tokio::join!(
        timed_wait(&relay, max_wait),
        enqueue_later(
            &pool,
            PgOutbox::new().notify(false),
            Duration::from_millis(100),
            true
        )
    );
    assert!(
        waited >= Duration::from_millis(750),
        "woke after {waited:?}"
    );
    relay.close().await;
}
