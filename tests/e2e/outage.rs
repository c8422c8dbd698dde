//! The relay survives outages of its services: the broker down for longer than the producer's send
//! timeout, PostgreSQL restarted under it. Both run against services of their own
//! ([`outbox_tests::private`]) so that stopping them never disturbs the tests running in parallel.

use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use outbox_tests::keyed::{
    dead_letter_count, enqueue, max_attempts, outbox_count, verify, wait_until_drained,
    wait_until_outbox_at_most,
};
use outbox_tests::private::{PrivateBroker, PrivatePostgres, log_tail};
use outbox_tests::{
    RelayProcess, TestDb, create_topic, create_topic_on, init_logs, read_topic, read_topic_from,
    run_relay_program, services,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

use crate::relay_program;

const BACKLOG: usize = 5_000;
/// Messages committed while the broker is down.
const DURING: usize = 1_000;
/// Messages committed behind an open enqueuing transaction just before PostgreSQL restarts.
const HELD: usize = 500;
const KEYS: usize = 50;

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_during_a_backlog_loses_nothing_and_drains_after_recovery()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let mut broker = PrivateBroker::start().await?;
    let brokers = broker.brokers();
    let topic = create_topic_on(&brokers, 6).await?;
    let mut enqueued = enqueue(&db.pool, &topic, 0..BACKLOG, KEYS).await?;

    // --lease 5s: the relay gives up on a send after 1 s (message.timeout.ms = lease / 5).
    let flags = [
        "--poll-interval",
        "100ms",
        "--batch-size",
        "200",
        "--initial-backoff",
        "100ms",
        "--max-backoff",
        "1s",
        "--lease",
        "5s",
        "--connect-timeout",
        "20s",
    ];
    let mut relay = RelayProcess::spawn_with(relay_program(), &db.url, &brokers, &flags)?;
    wait_until_outbox_at_most(&db.pool, (BACKLOG * 4 / 5) as i64, &relay).await?;

    broker.stop().await?;
    let outage = Instant::now();
    // The relay may have drained the rest of the first part while the broker was stopping; the
    // messages committed now wait through the whole outage, whatever the machine's speed.
    enqueued.extend(enqueue(&db.pool, &topic, BACKLOG..BACKLOG + DURING, KEYS).await?);
    let at_stop = db.outbox_count().await?;
    assert!(at_stop > 0, "the outage must begin mid-backlog");
    // A window in flight when the broker went away settles once its last message timed out (1.5 s);
    // what was acknowledged before the outage leaves the outbox then, and nothing after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled_before = db.outbox_count().await?;
    let mut max_seen = 0;
    let mut samples = Vec::new();
    while outage.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let attempts = max_attempts(&db.pool).await?;
        max_seen = max_seen.max(attempts);
        samples.push(attempts);
        assert_eq!(
            db.dead_letter_count().await?,
            0,
            "a broker outage dead-lettered messages; relay log ({}):\n{}",
            relay.log.display(),
            log_tail(&relay.log, 30)
        );
        assert_eq!(
            db.outbox_count().await?,
            settled_before,
            "messages left the outbox while no broker could acknowledge them"
        );
        assert!(
            relay.exit_status()?.is_none(),
            "the relay exited during the broker outage:\n{}",
            log_tail(&relay.log, 30)
        );
    }
    println!(
        "broker down for {:?} with {at_stop} messages in the outbox; max attempts sampled every 0.5 s: {samples:?}",
        outage.elapsed()
    );

    broker.start_again().await?;
    let recovered = Instant::now();
    loop {
        let left = db.outbox_count().await?;
        max_seen = max_seen.max(max_attempts(&db.pool).await?);
        let dead: Option<(i64, i32, String)> = sqlx::query_as(
            "SELECT count(*) OVER (), attempts, error FROM outbox_dead_letters ORDER BY seq LIMIT 1",
        )
        .fetch_optional(&db.pool)
        .await?;
        if let Some((count, attempts, error)) = dead {
            panic!(
                "{count} messages were dead-lettered after the broker came back (the first after \
                 {attempts} attempts: {error}); {left} still in the outbox.\n\
                 relay log ({}):\n{}\nbroker log: {}",
                relay.log.display(),
                log_tail(&relay.log, 10),
                broker.log().display(),
            );
        }
        if left == 0 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(120),
            "the outbox still holds {left} messages 120 s after the broker came back; relay log ({}):\n{}",
            relay.log.display(),
            log_tail(&relay.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = recovered.elapsed();
    let status = relay.terminate().await?;
    assert!(status.success(), "relay exits cleanly on SIGTERM: {status}");

    let records = read_topic_from(&brokers, &topic, usize::MAX, Duration::from_secs(5)).await?;
    let duplicates = verify(&records, &enqueued)?;
    println!(
        "broker outage: {} records for {} messages, 0 lost, {duplicates} duplicates, \
         max attempts seen {max_seen}, outbox drained {drained_in:?} after the broker answered again",
        records.len(),
        enqueued.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_while_relaying_loses_nothing_and_the_relay_recovers_by_itself()
-> anyhow::Result<()> {
    init_logs();
    let mut postgres = PrivatePostgres::start().await?;
    let url = postgres.url();
    let (status, output) =
        run_relay_program(relay_program(), &["migrate", "--database-url", &url]).await?;
    assert!(status.success(), "outbox-relay migrate failed: {output}");
    let topic = create_topic(6).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let mut enqueued = enqueue(&pool, &topic, 0..BACKLOG, KEYS).await?;

    let flags = [
        "--poll-interval",
        "100ms",
        "--batch-size",
        "200",
        "--lease",
        "5s",
        "--connect-timeout",
        "20s",
    ];
    let mut relay = RelayProcess::spawn_with(relay_program(), &url, &services::brokers()?, &flags)?;
    wait_until_outbox_at_most(&pool, (BACKLOG * 3 / 5) as i64, &relay).await?;
    // An enqueuing transaction left open holds the publish horizon, so the messages committed after
    // it wait whatever the relay's speed; the restart ends (rolls back) that transaction.
    let mut holder = PgConnection::connect(&url).await?;
    let mut open = holder.begin().await?;
    PgOutbox::new()
        .enqueue(
            &mut open,
            &Message::builder(&topic).key("held").json(&"rolled back")?,
        )
        .await?;
    enqueued.extend(enqueue(&pool, &topic, BACKLOG..BACKLOG + HELD, KEYS).await?);

    pool.close().await;
    postgres.restart(Duration::from_secs(2)).await?;
    drop(open);
    drop(holder);
    let restarted = Instant::now();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let at_restart = outbox_count(&pool).await?;
    assert!(at_restart > 0, "the restart must happen mid-backlog");
    // Writers go on after the restart; what they enqueue follows the backlog, key by key.
    for start in (BACKLOG + HELD..BACKLOG + HELD + 300).step_by(50) {
        enqueued.extend(enqueue(&pool, &topic, start..start + 50, KEYS).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut max_seen = 0;
    wait_until_drained(&pool, Duration::from_secs(120), &relay, &mut max_seen).await?;
    let drained_in = restarted.elapsed();
    assert_eq!(
        dead_letter_count(&pool).await?,
        0,
        "nothing is dead-lettered"
    );
    assert!(
        relay.exit_status()?.is_none(),
        "the relay process must survive the restart by itself:\n{}",
        log_tail(&relay.log, 30)
    );
    let log = relay.log.clone();
    let status = relay.terminate().await?;
    assert!(status.success(), "relay exits cleanly on SIGTERM: {status}");

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let duplicates = verify(&records, &enqueued)?;
    let sessions = std::fs::read_to_string(&log)?
        .matches("relay session opened")
        .count();
    println!(
        "postgres restart with {at_restart} messages in the outbox: {} records for {} messages, \
         0 lost, {duplicates} duplicates, max attempts seen {max_seen}, relay sessions opened \
         {sessions}, outbox drained {:?} after the restart",
        records.len(),
        enqueued.len(),
        drained_in,
    );
    pool.close().await;
    Ok(())
}
