//! 10,000 messages, forced redeliveries: each effect is applied exactly once, in per-key order.

use std::time::{Duration, Instant};

use outbox_tests::consumers::{
    ConsumerProcess, EffectsReport, effects_report, publish, steps, wait_for_effects,
};

use super::{
    Running, consumer_program, fresh, group, publish_steps, step_consumer, wait_for_stats,
};

const KEYS: usize = 100;
const PER_KEY: usize = 100;
const TOTAL: i64 = (KEYS * PER_KEY) as i64;

/// Every message applied once, every key in order.
fn assert_exactly_once(report: &EffectsReport) {
    assert_eq!(report.rows, TOTAL, "one effect per message: {report:?}");
    assert_eq!(report.distinct, TOTAL, "every message applied: {report:?}");
    assert!(
        report.repeated.is_empty(),
        "applied twice: {:?}",
        report.repeated
    );
    assert!(
        report.out_of_order.is_empty(),
        "keys applied out of order: {:?}",
        report.out_of_order
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_through_an_aborted_consumer_a_restart_and_a_full_replay_apply_once()
-> anyhow::Result<()> {
    let started = Instant::now();
    let (db, topic) = fresh(4).await?;
    publish_steps(&topic, KEYS, PER_KEY).await?;
    let group_one = group("once");

    // A consumer applies part of the stream; its task is aborted: whatever it had not committed
    // to Kafka is redelivered.
    let first = Running::start(step_consumer(&db, &topic, &group_one, "first")?)?;
    wait_for_effects(&db.pool, 2_500, Duration::from_secs(120)).await?;
    let first = first.abort().await;

    // A second consumer of the same group resumes from the committed offsets ...
    let second = Running::start(step_consumer(&db, &topic, &group_one, "second")?)?;
    wait_for_effects(&db.pool, 5_000, Duration::from_secs(120)).await?;
    // ... while a consumer of another group, under the same inbox name, replays the topic from
    // the beginning: every record reaches the inbox twice.
    let replay = Running::start(step_consumer(&db, &topic, &group("replay"), "replay")?)?;
    wait_for_stats(&replay.stats, Duration::from_secs(180), "the replay", |s| {
        s.applied + s.duplicates >= TOTAL as u64
    })
    .await?;
    wait_for_effects(&db.pool, TOTAL, Duration::from_secs(60)).await?;
    let second = second.stop().await?;
    let replay = replay.stop().await?;
    let first = first.snapshot();

    let report = effects_report(&db.pool).await?;
    assert_exactly_once(&report);
    let absorbed = first.duplicates + second.duplicates + replay.duplicates;
    assert_eq!(
        first.applied + second.applied + replay.applied,
        TOTAL as u64,
        "the counters agree with the table"
    );
    assert!(
        replay.duplicates >= TOTAL as u64 - replay.applied,
        "the replay's deliveries were absorbed: {replay:?}"
    );
    println!(
        "10,000 messages: applied by first {} / second {} / replay {}; redeliveries absorbed {absorbed} \
         (second {}, replay {}); {:?}",
        first.applied,
        second.applied,
        replay.applied,
        second.duplicates,
        replay.duplicates,
        started.elapsed()
    );
    Ok(())
}

/// The members use the library's default assignment, `cooperative-sticky`: each rebalance moves
/// only the partitions that change owner, while the others keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_killed_joining_and_leaving_while_records_flow_still_apply_each_message_once()
-> anyhow::Result<()> {
    let started = Instant::now();
    let (db, topic) = fresh(4).await?;
    let messages = steps(&topic, KEYS, PER_KEY)?;
    let (early, rest) = messages.split_at(5_000);
    let (middle, late) = rest.split_at(2_500);
    publish(early).await?;
    let group = group("crash");

    // SIGKILLed mid-stream: no shutdown, no final commit; its open transaction dies with it.
    let killed = ConsumerProcess::spawn(consumer_program(), &db.url, &topic, &group, "killed")?;
    wait_for_effects(&db.pool, 1_500, Duration::from_secs(120)).await?;
    killed.kill().await?;
    let at_kill = effects_report(&db.pool).await?.rows;

    let leaving = ConsumerProcess::spawn(consumer_program(), &db.url, &topic, &group, "leaving")?;
    wait_for_effects(&db.pool, 3_000, Duration::from_secs(120)).await?;
    // A member joins while records flow: the group rebalances and the joiner takes partitions over.
    let mut joiner = ConsumerProcess::spawn(consumer_program(), &db.url, &topic, &group, "joiner")?;
    joiner
        .wait_for_partitions(&topic, Duration::from_secs(120))
        .await?;
    publish(middle).await?;
    wait_for_effects(&db.pool, 6_000, Duration::from_secs(120)).await?;
    // The other member leaves (SIGTERM: it finishes the record in hand, commits, leaves the group)
    // while records flow; the joiner takes its partitions over.
    let publishing_late = tokio::spawn({
        let late = late.to_vec();
        async move { publish(&late).await }
    });
    let left_at = effects_report(&db.pool).await?.rows;
    let absorbed_by_leaver = duplicates_in(&leaving.terminate().await?);
    publishing_late.await??;
    wait_for_effects(&db.pool, TOTAL, Duration::from_secs(180)).await?;
    // Time for a stray duplicate effect to show, if there were one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(joiner.is_running()?, "the joiner still runs");
    let absorbed = absorbed_by_leaver + duplicates_in(&joiner.terminate().await?);

    let report = effects_report(&db.pool).await?;
    assert_exactly_once(&report);
    let applied_by = |label: &str| {
        report
            .by_applier
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0, |(_, n)| *n)
    };
    assert!(
        applied_by("joiner") > 0 && applied_by("leaving") > 0,
        "both members applied records: {:?}",
        report.by_applier
    );
    let redelivered = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM inbox")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(redelivered, TOTAL, "one inbox row per message");
    println!(
        "killed after {at_kill} effects, a member left after {left_at}; applied by {:?}; \
         redeliveries absorbed by the survivors {absorbed}; {:?}",
        report.by_applier,
        started.elapsed(),
    );
    Ok(())
}

/// The `duplicates` counter a consumer program printed when it stopped.
fn duplicates_in(log: &str) -> u64 {
    log.rsplit("duplicates: ")
        .next()
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
