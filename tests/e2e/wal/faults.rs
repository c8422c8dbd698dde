//! Faults under WAL capture, each on real PostgreSQL and real Kafka, each judged by what a consumer
//! of the topic sees (nothing lost, per key the first occurrences in commit order, duplicates only
//! where the relay had not confirmed): a relay killed mid-stream and restarted; a standby taking the
//! slot over from a killed reader, and from a paused one that must then publish nothing; PostgreSQL
//! restarted under a frozen relay and under a live one; a transaction larger than any buffer; a
//! transaction left open, also across relay restarts; a broker outage.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_postgres::{PgOutbox, SlotName};
use outbox_tests::keyed::{self, Enqueued};
use outbox_tests::private::{PrivateBroker, log_tail};
use outbox_tests::{
    Fixture, Record, RelayProcess, TestDb, create_topic, create_topic_on, init_logs, read_topic,
    read_topic_from, services, wal,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::relay_program;

/// The batch of the one-lane relays of the pause test: the most one window holds.
const BATCH: usize = 200;

const KEYS: usize = 100;

/// `--capture wal --wal-slot SLOT` and `extra`.
fn flags(slot: &SlotName, extra: &[&str]) -> Vec<String> {
    let mut flags = wal::relay_flags(slot);
    flags.extend(extra.iter().map(|flag| (*flag).to_owned()));
    flags
}

fn spawn(db: &TestDb, flags: &[String]) -> anyhow::Result<RelayProcess> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    RelayProcess::spawn(relay_program(), db, &flags)
}

/// Messages of one transaction, and the WAL position read right after its commit (at or past the
/// transaction's end).
struct Committed {
    messages: Vec<Enqueued>,
    after: u64,
}

/// Commits `numbers` in WAL mode, 500 per transaction, keys `key-{n % KEYS}` ([`keyed`]).
async fn commit(
    pool: &PgPool,
    topic: &str,
    numbers: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Committed>> {
    let mut committed = Vec::new();
    for start in numbers.clone().step_by(500) {
        let end = (start + 500).min(numbers.end);
        let messages =
            keyed::enqueue_through(&PgOutbox::wal(), pool, topic, start..end, KEYS).await?;
        let after = wal::wal_position(pool).await?;
        committed.push(Committed { messages, after });
    }
    Ok(committed)
}

fn all(committed: &[Committed]) -> Vec<Enqueued> {
    committed
        .iter()
        .flat_map(|c| c.messages.iter().cloned())
        .collect()
}

/// The relay's log without terminal colours.
fn plain_log(relay: &RelayProcess) -> String {
    plain_text(&relay.log)
}

/// A log file without terminal colours.
fn plain_text(log: &std::path::Path) -> String {
    outbox_tests::without_colours(&std::fs::read_to_string(log).unwrap_or_default())
}

/// Waits until the relay's log, past its first `since` bytes (of [`plain_log`]), contains one of
/// `lines`; returns which.
async fn wait_for_any_log(
    relay: &RelayProcess,
    since: usize,
    lines: &[&'static str],
    within: Duration,
) -> anyhow::Result<&'static str> {
    let deadline = Instant::now() + within;
    loop {
        let log = plain_log(relay);
        let new = log.get(since..).unwrap_or_default();
        if let Some(line) = lines.iter().find(|line| new.contains(**line)) {
            return Ok(line);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay logged none of {lines:?} within {within:?}; its log:\n{}",
            log_tail(&relay.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the slot's confirmed position reaches `position`.
async fn wait_until_confirmed_past(
    pool: &PgPool,
    slot: &SlotName,
    position: u64,
    relay: &RelayProcess,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while wal::confirmed_position(pool, slot)
        .await?
        .unwrap_or_default()
        < position
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the slot was not confirmed up to {} within 120 s; relay log:\n{}",
            wal::lsn_text(position),
            log_tail(&relay.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How many records the topic holds, all partitions.
async fn held(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    Ok(wal::end_offsets(brokers, topic).await?.iter().sum())
}

/// Everything on the topic now, read until the count the broker reports is in.
async fn read_all_now(brokers: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let count = usize::try_from(held(brokers, topic).await?)?;
    let records = read_topic_from(brokers, topic, count, Duration::from_secs(30)).await?;
    anyhow::ensure!(
        records.len() == count,
        "read {} of the {count} records of {topic}",
        records.len()
    );
    Ok(records)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_killed_twice_mid_stream_loses_nothing_and_repeats_only_what_it_had_not_confirmed()
-> anyhow::Result<()> {
    let (Fixture { db, topic }, slot) = wal::fixture(6).await?;
    let brokers = services::brokers()?;
    let flags = flags(
        &slot,
        &[
            "--batch-size",
            "100",
            "--lease",
            "5s",
            "--poll-interval",
            "100ms",
        ],
    );
    let mut committed = commit(&db.pool, &topic, 0..2_000).await?;

    // Each relay is killed with messages it provably never published, whatever the machine's
    // speed: it is frozen (SIGSTOP), 2,500 more are committed, and only then is it killed. Before
    // the freeze it has confirmed a part of its backlog, and has put on the topic a part of 1,000
    // messages committed after that (usually not yet confirmed: the stream reports its position
    // every lease / 10): what a restart may publish again.
    struct Kill {
        /// The slot's confirmed position once the killed relay's walsender had left.
        confirmed: u64,
        /// Each partition's end offset after the kill: records at or past it came later.
        ends: Vec<i64>,
    }
    let mut kills: Vec<Kill> = Vec::new();
    for (more, frozen) in [(2_000..3_000, 3_000..5_500), (5_500..6_500, 6_500..9_000)] {
        // The first transaction the previous relay had not confirmed.
        let next = kills.last().map_or(0, |kill| {
            committed
                .iter()
                .position(|tx| tx.after > kill.confirmed)
                .unwrap_or(committed.len() - 1)
        });
        let relay = spawn(&db, &flags)?;
        wait_until_confirmed_past(&db.pool, &slot, committed[next].after, &relay).await?;
        let before = held(&brokers, &topic).await?;
        committed.extend(commit(&db.pool, &topic, more).await?);
        wal::wait_for_records(&brokers, &topic, before + 100, Duration::from_secs(120)).await?;
        wal::signal(&relay, "STOP")?;
        let before_freeze = committed.len();
        committed.extend(commit(&db.pool, &topic, frozen.clone()).await?);
        relay.kill().await?;
        wal::wait_for_slot_reader(&db.pool, &slot, Duration::from_secs(60), |r| r.is_none())
            .await?;
        let confirmed = wal::confirmed_position(&db.pool, &slot)
            .await?
            .unwrap_or_default();
        let ends = wal::end_offsets(&brokers, &topic).await?;
        let records = read_all_now(&brokers, &topic).await?;
        let frozen_ids: HashSet<_> = all(&committed[before_freeze..])
            .iter()
            .map(|m| m.id)
            .collect();
        let published_frozen = records
            .iter()
            .filter(|r| r.id().is_some_and(|id| frozen_ids.contains(&id)))
            .count();
        assert_eq!(
            published_frozen, 0,
            "a relay frozen before {frozen:?} were committed published {published_frozen} of them"
        );
        kills.push(Kill { confirmed, ends });
    }
    committed.extend(commit(&db.pool, &topic, 9_000..10_000).await?);
    let relay = spawn(&db, &flags)?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(120)).await?;
    let status = relay.terminate().await?;
    assert!(status.success(), "the relay stops cleanly: {status}");

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let enqueued = all(&committed);
    assert_eq!(enqueued.len(), 10_000);
    let duplicates = keyed::verify(&records, &enqueued)?;

    // A restarted relay reads from the slot's confirmed position: a record published after a kill
    // (at or past the partition's end offset then) is never one of a transaction that had ended
    // at or before the position confirmed at that kill. Retries within one relay's run may repeat
    // a record too; those land before the next kill's offsets and are not judged here.
    let after: HashMap<uuid::Uuid, (usize, u64)> = committed
        .iter()
        .flat_map(|tx| tx.messages.iter().map(|m| (m.id, (m.n, tx.after))))
        .collect();
    let mut first_seen: HashSet<uuid::Uuid> = HashSet::new();
    let mut repeated = vec![0usize; kills.len()];
    let mut confirmed_again = Vec::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for record in sorted {
        let id = record
            .id()
            .ok_or_else(|| anyhow::anyhow!("record without ce_id"))?;
        let fresh = first_seen.insert(id);
        let partition = usize::try_from(record.partition)?;
        let Some(k) = kills
            .iter()
            .rposition(|kill| record.offset >= kill.ends[partition])
        else {
            continue;
        };
        let (n, tx_after) = after[&id];
        if tx_after <= kills[k].confirmed {
            confirmed_again.push((n, k + 1));
        }
        if !fresh {
            repeated[k] += 1;
        }
    }
    assert!(
        confirmed_again.is_empty(),
        "published again after a kill although their transaction was confirmed before it \
         (number, kill): {:?}",
        &confirmed_again[..confirmed_again.len().min(20)]
    );
    let confirmed: Vec<String> = kills.iter().map(|k| wal::lsn_text(k.confirmed)).collect();
    let on_topic: Vec<i64> = kills.iter().map(|k| k.ends.iter().sum()).collect();
    println!(
        "relay killed twice mid-stream (records on the topic at the kills {on_topic:?}, slot \
         confirmed at {confirmed:?}); {} records for {} messages: 0 lost, {duplicates} duplicates \
         ({repeated:?} repeated after each kill), none of a transaction confirmed before the kill",
        records.len(),
        enqueued.len()
    );
    Ok(())
}

/// Which of `relays` took the capture lock: the index of the only one that did.
fn the_reader(relays: &[&RelayProcess]) -> anyhow::Result<usize> {
    let taken: Vec<usize> = relays.iter().map(|relay| wal::locks_taken(relay)).collect();
    let readers: Vec<usize> = (0..relays.len()).filter(|&i| taken[i] > 0).collect();
    anyhow::ensure!(
        readers.len() == 1 && taken[readers[0]] == 1,
        "exactly one relay must have taken the capture lock, once; taken per relay: {taken:?}"
    );
    Ok(readers[0])
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_relays_on_one_slot_one_reads_and_the_standby_takes_over_when_it_is_killed()
-> anyhow::Result<()> {
    let (Fixture { db, topic }, slot) = wal::fixture(6).await?;
    let brokers = services::brokers()?;
    // The kill frees the lock at once; the lease only has to outlast a busy machine's pauses
    // between heartbeats, which would otherwise rightly hand the slot over early.
    let flags = flags(
        &slot,
        &[
            "--lease",
            "10s",
            "--poll-interval",
            "100ms",
            "--batch-size",
            "200",
        ],
    );
    let first = spawn(&db, &flags)?;
    let second = spawn(&db, &flags)?;
    for relay in [&first, &second] {
        relay
            .wait_for_log("capturing from the WAL", Duration::from_secs(60))
            .await?;
    }
    let mut committed = commit(&db.pool, &topic, 0..3_000).await?;
    wal::wait_for_records(&brokers, &topic, 500, Duration::from_secs(120)).await?;
    // Both have been trying the lock for as long as the first part took to publish.
    let reader_pid = wal::slot_reader(&db.pool, &slot)
        .await?
        .ok_or_else(|| anyhow::anyhow!("nobody reads the slot although records arrive"))?;
    let (reader, standby) = match the_reader(&[&first, &second])? {
        0 => (first, second),
        _ => (second, first),
    };

    // The reader is killed with messages it provably never published: frozen first, then 3,000
    // more committed.
    wal::signal(&reader, "STOP")?;
    committed.extend(commit(&db.pool, &topic, 3_000..6_000).await?);
    reader.kill().await?;
    let killed = Instant::now();
    standby
        .wait_for_log(wal::LOCK_TAKEN, Duration::from_secs(60))
        .await?;
    let took_over = killed.elapsed();
    let new_reader = wal::wait_for_slot_reader(&db.pool, &slot, Duration::from_secs(60), |r| {
        r.is_some_and(|pid| pid != reader_pid)
    })
    .await?;
    committed.extend(commit(&db.pool, &topic, 6_000..9_000).await?);
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(120)).await?;
    assert_eq!(
        wal::locks_taken(&standby),
        1,
        "the standby took the lock once"
    );
    let status = standby.terminate().await?;
    assert!(status.success(), "the standby stops cleanly: {status}");

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let enqueued = all(&committed);
    let duplicates = keyed::verify(&records, &enqueued)?;
    println!(
        "reader killed: the standby took the lock {took_over:?} later (walsender {reader_pid} -> \
         {new_reader:?}); {} records for {} messages: 0 lost, {duplicates} duplicates",
        records.len(),
        enqueued.len()
    );
    Ok(())
}

/// Fails unless the first occurrence of each number comes after that of every smaller one.
fn assert_first_occurrences_ascend(numbers: &[usize]) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let mut last = None;
    for &n in numbers {
        if seen.insert(n) {
            anyhow::ensure!(
                last.is_none_or(|last| n > last),
                "{n} first appeared after {last:?}: out of commit order"
            );
            last = Some(n);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_paused_past_its_lease_loses_the_slot_and_after_resuming_sends_only_what_its_producer_held()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let slot = wal::create_slot(&db).await?;
    // One partition, one key, one lane: the topic's order is the order of publication.
    let topic = create_topic(1).await?;
    let brokers = services::brokers()?;
    let flags = flags(
        &slot,
        &[
            "--lanes",
            "1",
            "--lease",
            "5s",
            "--batch-size",
            "200",
            "--poll-interval",
            "100ms",
        ],
    );
    let numbered = |range: std::ops::Range<usize>| -> anyhow::Result<Vec<Message>> {
        range
            .map(|n| Message::builder(&topic).key("one-key").json(&n))
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    };
    let commit_numbered = |range: std::ops::Range<usize>| {
        let messages = numbered(range);
        let pool = db.pool.clone();
        async move {
            for chunk in messages?.chunks(500) {
                let mut tx = pool.begin().await?;
                PgOutbox::wal().enqueue_all(&mut tx, chunk).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }
    };

    let first = spawn(&db, &flags)?;
    first
        .wait_for_log(wal::LOCK_TAKEN, Duration::from_secs(60))
        .await?;
    let second = spawn(&db, &flags)?;
    second
        .wait_for_log("capturing from the WAL", Duration::from_secs(60))
        .await?;
    commit_numbered(0..6_000).await?;
    wal::wait_for_records(&brokers, &topic, 1_000, Duration::from_secs(120)).await?;
    let paused_pid = wal::slot_reader(&db.pool, &slot)
        .await?
        .ok_or_else(|| anyhow::anyhow!("nobody reads the slot although records arrive"))?;
    wal::signal(&first, "STOP")?;
    let paused = Instant::now();
    let at_pause = held(&brokers, &topic).await?;
    // Committed while the reader is frozen: it never publishes these (its walsender may still
    // send them into its socket, where they wait for it).
    commit_numbered(6_000..8_000).await?;

    let successor_pid = wal::wait_for_slot_reader(&db.pool, &slot, Duration::from_secs(60), |r| {
        r.is_some_and(|pid| pid != paused_pid)
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("the slot lost its reader"))?;
    let taken_over = paused.elapsed();
    second
        .wait_for_log(wal::LOCK_TAKEN, Duration::from_secs(10))
        .await?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(120)).await?;
    let before_resume = held(&brokers, &topic).await?;

    // The paused reader resumes: whatever it still holds (windows handed to its producer, events
    // in its socket) must not reach the topic, and it must not read the slot again.
    let log_before = plain_log(&first).len();
    wal::signal(&first, "CONT")?;
    let noticed = wait_for_any_log(
        &first,
        log_before,
        &[
            "the lease expired before it was renewed",
            "capture session lost",
            "lease expired while publishing",
            "replication stream ended",
        ],
        Duration::from_secs(30),
    )
    .await?;
    let resumed_log = plain_log(&first)[log_before..].to_owned();
    commit_numbered(8_000..9_000).await?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(120)).await?;
    assert_eq!(
        wal::slot_reader(&db.pool, &slot).await?,
        Some(successor_pid),
        "the successor's walsender still reads the slot: the resumed relay did not take it back"
    );
    assert_eq!(
        wal::locks_taken(&first),
        1,
        "the resumed relay took no lock"
    );
    assert_eq!(wal::locks_taken(&second), 1);
    let first_log = first.log.clone();
    assert!(first.terminate().await?.success());
    assert!(second.terminate().await?.success());
    let abandoned = plain_text(&first_log)
        .lines()
        .filter_map(|line| line.split("abandoned_windows: ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .next_back();

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let numbers: Vec<usize> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload))
        .collect::<Result<_, _>>()?;
    let distinct: HashSet<usize> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), 9_000, "nothing lost");
    assert!(distinct.iter().all(|n| *n < 9_000), "nothing foreign");
    // After the resume the topic received the messages committed after it (each at least once,
    // in order), and of what the resumed relay held at most what its producer had packed into a
    // request before the pause (window R4 of docs/guarantees.md): its one window, a batch at most,
    // around the records on the topic at the pause. Nothing it still had to claim, nothing read
    // from its socket after the resume. The successor had confirmed all earlier ones by then, so
    // it had none of them left to publish.
    let resume_at = usize::try_from(before_resume)?;
    let after_resume = &numbers[resume_at..];
    let at_pause_records = usize::try_from(at_pause)?;
    let in_its_producer = at_pause_records.saturating_sub(BATCH)..at_pause_records + BATCH;
    let stale: Vec<usize> = after_resume
        .iter()
        .copied()
        .filter(|n| *n < 8_000)
        .collect();
    let unexplained: Vec<usize> = stale
        .iter()
        .copied()
        .filter(|n| !in_its_producer.contains(n))
        .collect();
    assert!(
        unexplained.is_empty() && stale.len() <= BATCH,
        "{} records of messages committed before the resume reached the topic after it (from \
         offset {resume_at}), {} of them outside the window the paused relay's producer could \
         hold ({in_its_producer:?}), e.g. {:?}; the resumed relay's log:\n{resumed_log}",
        stale.len(),
        unexplained.len(),
        &unexplained[..unexplained.len().min(20)]
    );
    let fresh: Vec<usize> = after_resume
        .iter()
        .copied()
        .filter(|n| *n >= 8_000)
        .collect();
    assert_first_occurrences_ascend(&fresh)?;
    assert_eq!(
        fresh.iter().copied().collect::<HashSet<_>>().len(),
        1_000,
        "each of the 1,000 messages committed after the resume arrived after it"
    );
    // Before: the paused relay's run, then the successor's from the slot's confirmed position.
    assert_first_occurrences_ascend(&numbers[..resume_at])?;
    let falls = numbers[..resume_at]
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .count();
    let unsettled = resumed_log
        .lines()
        .filter_map(|line| line.split("unsettled=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .max();
    println!(
        "reader paused with {at_pause} records on the topic; the standby read the slot \
         {taken_over:?} later (walsender {paused_pid} -> {successor_pid}); on resuming the paused \
         relay logged `{noticed}`, dropped {unsettled:?} unsettled messages ({abandoned:?} \
         windows in flight abandoned); {} records for 9000 messages, order fell back {falls} \
         time(s) before the resume (the takeover); after it the 1,000 committed then and {} late \
         records of the paused relay's producer",
        records.len(),
        stale.len(),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_mid_stream_loses_nothing_and_the_relay_recovers_by_itself()
-> anyhow::Result<()> {
    init_logs();
    // A fast shutdown waits until each logical walsender's client has confirmed what it was sent,
    // or until wal_sender_timeout ends the walsender: the frozen relay below never confirms, so
    // its walsender holds the shutdown for wal_sender_timeout, 10 s here rather than the default
    // minute (which would be at the limit of `pg_ctl stop -t 60`).
    let mut server = wal::logical_server(&["wal_sender_timeout = '10s'"]).await?;
    let url = server.url();
    let connect = || PgPoolOptions::new().max_connections(4).connect(&url);
    let pool = connect().await?;
    let slot = wal::create_slot_on(&pool, "restarted").await?;
    let topic = create_topic(6).await?;
    let brokers = services::brokers()?;
    let mut committed = commit(&pool, &topic, 0..3_000).await?;
    let flags = flags(
        &slot,
        &[
            "--lease",
            "5s",
            "--poll-interval",
            "100ms",
            "--batch-size",
            "200",
            "--connect-timeout",
            "20s",
        ],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut relay = RelayProcess::spawn_with(relay_program(), &url, &brokers, &flags)?;
    wal::wait_for_records(&brokers, &topic, 500, Duration::from_secs(120)).await?;

    // The restart finds messages the relay provably has not published: committed while it was
    // frozen. It stays frozen until the server is down, then finds all its connections gone and
    // the server refusing new ones until it is back.
    wal::signal(&relay, "STOP")?;
    committed.extend(commit(&pool, &topic, 3_000..5_000).await?);
    pool.close().await;
    let stopping = Instant::now();
    server.stop().await?;
    let stopped_in = stopping.elapsed();
    let log_before = plain_log(&relay).len();
    wal::signal(&relay, "CONT")?;
    let noticed = wait_for_any_log(
        &relay,
        log_before,
        &["replication stream ended", "capture session lost"],
        Duration::from_secs(30),
    )
    .await?;
    server.start_again().await?;
    let restarted = Instant::now();
    let pool = connect().await?;
    // Writers go on after the restart; what they commit follows the rest, key by key.
    committed.extend(commit(&pool, &topic, 5_000..6_000).await?);
    wal::wait_until_confirmed_on(&pool, &slot, Duration::from_secs(120)).await?;
    let recovered_in = restarted.elapsed();
    assert!(
        relay.exit_status()?.is_none(),
        "the relay process must survive the restart by itself:\n{}",
        log_tail(&relay.log, 30)
    );
    let log = plain_log(&relay);
    let status = relay.terminate().await?;
    assert!(status.success(), "the relay stops cleanly: {status}");

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let enqueued = all(&committed);
    // The relay was frozen at an arbitrary moment, possibly with a batch half in librdkafka's
    // hands, and resumed with its producer alive: reorder window R3 (docs/guarantees.md). A
    // message the frozen relay had handed over may have timed out and been published again after
    // a successor of its key that was delivered. Only messages committed before the freeze can
    // have been handed over; every message committed after it keeps its key's order.
    let verified = keyed::verify_allowing(&records, &enqueued, |predecessor, message| {
        predecessor.n < 3_000 && message.n < 3_000
    })?;
    println!(
        "postgres stopped in {stopped_in:?} with the relay frozen; it logged `{noticed}`, read the \
         slot again ({} streams started) and confirmed everything {recovered_in:?} after the \
         restart; {} records for {} messages: 0 lost, {} duplicates, {} inversions of R3 among \
         the messages committed before the freeze",
        log.matches("replication stream started").count(),
        records.len(),
        enqueued.len(),
        verified.duplicates,
        verified.allowed_inversions
    );
    pool.close().await;
    Ok(())
}

/// Messages of the large transaction, and the size of each payload.
const LARGE: usize = 100_000;
const PAYLOAD: usize = 2_048;

/// The payload of message `n` of the large transaction: its number in 8 digits, then filler.
fn large_payload(n: usize) -> Vec<u8> {
    let mut payload = format!("{n:08}").into_bytes();
    payload.extend((0..PAYLOAD - 8).map(|i| b'a' + ((n + i) % 26) as u8));
    payload
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_of_200_mib_is_relayed_in_bounded_memory_and_in_order() -> anyhow::Result<()>
{
    let (Fixture { db, topic }, slot) = wal::fixture(6).await?;
    let keys = 12;
    let relay = spawn(&db, &flags(&slot, &[]))?;
    // Warmed up: connected, reading the stream, its producer created and used once.
    let warm = Message::builder(&topic).key("warm-up").json(&"warm-up")?;
    wal::enqueue_committed(&db, std::slice::from_ref(&warm)).await?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    let warmed_up = wal::peak_rss(&relay)?;

    let mut enqueued: Vec<(String, uuid::Uuid)> = Vec::with_capacity(LARGE);
    let mut tx = db.pool.begin().await?;
    for start in (0..LARGE).step_by(1_000) {
        let messages: Vec<Message> = (start..start + 1_000)
            .map(|n| {
                Message::builder(&topic)
                    .key(format!("key-{}", n % keys))
                    .bytes(large_payload(n), "application/octet-stream")
            })
            .collect::<Result<_, _>>()?;
        PgOutbox::wal().enqueue_all(&mut tx, &messages).await?;
        enqueued.extend(
            messages
                .iter()
                .zip(start..)
                .map(|(m, n)| (format!("key-{}", n % keys), m.id)),
        );
    }
    let bytes = (LARGE * PAYLOAD) as u64;
    let committing = Instant::now();
    tx.commit().await?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(600)).await?;
    let drained_in = committing.elapsed();
    let peak = wal::peak_rss(&relay)?;
    let status = relay.terminate().await?;
    assert!(status.success(), "the relay stops cleanly: {status}");

    let records = read_topic(&topic, LARGE + 1, Duration::from_secs(30)).await?;
    let mut first: HashMap<uuid::Uuid, &Record> = HashMap::new();
    for record in &records {
        let id = record
            .id()
            .ok_or_else(|| anyhow::anyhow!("record without ce_id"))?;
        first.entry(id).or_insert(record);
    }
    let missing = enqueued
        .iter()
        .filter(|(_, id)| !first.contains_key(id))
        .count();
    assert_eq!(
        missing, 0,
        "{missing} of {LARGE} messages never reached the topic"
    );
    let mut previous: HashMap<&str, &Record> = HashMap::new();
    for (n, (key, id)) in enqueued.iter().enumerate() {
        let record = first[id];
        assert!(
            record.payload == large_payload(n),
            "message {n}: its payload arrived changed"
        );
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
        if let Some(before) = previous.insert(key, record) {
            assert!(
                (before.partition, before.offset) < (record.partition, record.offset)
                    && before.partition == record.partition,
                "{key}: message {n} arrived before its predecessor"
            );
        }
    }

    // What the relay may hold at once is bounded by its settings, not by the transaction: 2 x
    // --max-in-flight (2,000) = 4,000 messages read and unsettled (about 8 MiB of payload), and
    // what is in flight in the producer (a part of them); plus the stream's 256 events. A quarter
    // of the transaction (50 MiB) above the warmed-up relay is several times that, and a relay
    // that held the transaction, or any large part of it, would be far past it.
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let bound = warmed_up + bytes / 4;
    assert!(
        peak < bound,
        "the relay's peak RSS {:.0} MiB is not far below the transaction's {:.0} MiB (warmed up \
         {:.0} MiB, bound {:.0} MiB)",
        mib(peak),
        mib(bytes),
        mib(warmed_up),
        mib(bound)
    );
    println!(
        "one transaction of {LARGE} messages ({:.0} MiB of payload) relayed {drained_in:?} after \
         its commit; the relay's peak RSS {:.0} MiB (warmed up {:.0} MiB); {} records, in order per \
         key",
        mib(bytes),
        mib(peak),
        mib(warmed_up),
        records.len()
    );
    Ok(())
}

/// The number of the message left in an open transaction (after every other).
const HELD_OPEN: usize = 1_000_000;

/// Opens a transaction on a connection of its own and emits one WAL message of `key-0` in it;
/// returns the connection (the transaction still open) and the message.
async fn open_transaction(
    db: &TestDb,
    topic: &str,
) -> anyhow::Result<(sqlx::PgConnection, Enqueued)> {
    let mut conn = outbox_tests::connect(db).await?;
    sqlx::raw_sql("BEGIN").execute(&mut conn).await?;
    let message = Message::builder(topic).key("key-0").json(&HELD_OPEN)?;
    PgOutbox::wal().enqueue(&mut conn, &message).await?;
    let held = Enqueued {
        key: "key-0".to_owned(),
        id: message.id,
        n: HELD_OPEN,
    };
    Ok((conn, held))
}

/// Whether the topic holds a record of `id`.
fn on_topic(records: &[Record], id: uuid::Uuid) -> bool {
    records.iter().any(|r| r.id() == Some(id))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_transaction_does_not_hold_back_later_ones_and_its_message_follows_its_commit()
-> anyhow::Result<()> {
    let (Fixture { db, topic }, slot) = wal::fixture(3).await?;
    let flags = flags(&slot, &["--lease", "5s", "--poll-interval", "100ms"]);
    let relay = spawn(&db, &flags)?;
    let (mut open, held) = open_transaction(&db, &topic).await?;
    let opened = Instant::now();

    // Others commit after it began, wave after wave for two leases (a heartbeat every quarter
    // lease, a status update every tenth); each wave arrives while it is still open. A key is
    // shared with it: per key, commit order.
    let mut enqueued = Vec::new();
    let mut latencies = Vec::new();
    while opened.elapsed() < Duration::from_secs(10) {
        let wave = enqueued.len()..enqueued.len() + 500;
        let committed = Instant::now();
        enqueued.extend(all(&commit(&db.pool, &topic, wave).await?));
        wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
        latencies.push(committed.elapsed());
        let records = read_topic(&topic, enqueued.len(), Duration::from_secs(30)).await?;
        assert_eq!(
            records.len(),
            enqueued.len(),
            "every message committed after the open transaction arrived while it is open"
        );
        assert!(
            !on_topic(&records, held.id),
            "the open transaction's message was published before its commit"
        );
    }
    let open_for = opened.elapsed();
    sqlx::raw_sql("COMMIT").execute(&mut open).await?;
    enqueued.push(held);
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    let status = relay.terminate().await?;
    assert!(status.success(), "the relay stops cleanly: {status}");
    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let duplicates = keyed::verify(&records, &enqueued)?;
    assert_eq!(duplicates, 0, "nothing is published twice");
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "a transaction open for {open_for:?} held back nothing: {} waves committed after it were \
         each confirmed within {slowest:?} of their commits; its message arrived after its \
         commit, after every message committed before",
        latencies.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_open_across_a_relay_restart_is_still_published_after_its_commit()
-> anyhow::Result<()> {
    let (Fixture { db, topic }, slot) = wal::fixture(3).await?;
    let flags = flags(&slot, &["--lease", "5s", "--poll-interval", "100ms"]);
    let (mut open, held) = open_transaction(&db, &topic).await?;
    let mut enqueued = all(&commit(&db.pool, &topic, 0..1_000).await?);
    // The slot is confirmed past where the open transaction began, and its reader stops (cleanly,
    // advancing the slot to what it confirmed) and then is killed: each next reader starts past
    // the transaction's first record.
    let relay = spawn(&db, &flags)?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    assert!(relay.terminate().await?.success());
    enqueued.extend(all(&commit(&db.pool, &topic, 1_000..2_000).await?));
    let relay = spawn(&db, &flags)?;
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    relay.kill().await?;
    wal::wait_for_slot_reader(&db.pool, &slot, Duration::from_secs(60), |r| r.is_none()).await?;

    let relay = spawn(&db, &flags)?;
    sqlx::raw_sql("COMMIT").execute(&mut open).await?;
    enqueued.push(held);
    enqueued.extend(all(&commit(&db.pool, &topic, 2_000..2_500).await?));
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(60)).await?;
    assert!(relay.terminate().await?.success());
    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let duplicates = keyed::verify(&records, &enqueued)?;
    println!(
        "a transaction open across two relay restarts was published after its commit, in commit \
         order; {} records for {} messages, {duplicates} duplicates",
        records.len(),
        enqueued.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_mid_stream_is_retried_and_loses_nothing_in_wal_mode() -> anyhow::Result<()>
{
    init_logs();
    let db = TestDb::create().await?;
    let slot = wal::create_slot(&db).await?;
    let mut broker = PrivateBroker::start().await?;
    let brokers = broker.brokers();
    let topic = create_topic_on(&brokers, 6).await?;
    let mut committed = commit(&db.pool, &topic, 0..5_000).await?;
    // --lease 5s: the relay gives up on a send after 1 s (message.timeout.ms = lease / 5).
    let flags = flags(
        &slot,
        &[
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
        ],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut relay = RelayProcess::spawn_with(relay_program(), &db.url, &brokers, &flags)?;
    wal::wait_for_records(&brokers, &topic, 1_000, Duration::from_secs(120)).await?;

    broker.stop().await?;
    let outage = Instant::now();
    // Committed during the outage: whatever the machine's speed, none can be acknowledged before
    // the broker is back, so the slot must not be confirmed past the first of them.
    let first_during = committed.len();
    committed.extend(commit(&db.pool, &topic, 5_000..6_000).await?);
    let limit = committed[first_during].after;
    let mut samples = Vec::new();
    while outage.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let confirmed = wal::confirmed_position(&db.pool, &slot)
            .await?
            .unwrap_or_default();
        samples.push(wal::lsn_text(confirmed));
        assert!(
            confirmed < limit,
            "the slot was confirmed at {} during the outage, past the first transaction committed \
             in it (which ends before {})",
            wal::lsn_text(confirmed),
            wal::lsn_text(limit)
        );
        assert_eq!(
            db.dead_letter_count().await?,
            0,
            "a broker outage dead-lettered messages; relay log:\n{}",
            log_tail(&relay.log, 30)
        );
        assert!(
            relay.exit_status()?.is_none(),
            "the relay exited during the broker outage:\n{}",
            log_tail(&relay.log, 30)
        );
    }
    broker.start_again().await?;
    let recovered = Instant::now();
    wal::wait_until_confirmed(&db, &slot, Duration::from_secs(120)).await?;
    let drained_in = recovered.elapsed();
    assert_eq!(db.dead_letter_count().await?, 0, "nothing is dead-lettered");
    let log_path = relay.log.clone();
    let status = relay.terminate().await?;
    assert!(status.success(), "the relay stops cleanly: {status}");
    let log = plain_text(&log_path);
    let retried = log
        .lines()
        .filter_map(|line| line.split("retried: ").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .next_back();

    let records = read_topic_from(&brokers, &topic, usize::MAX, Duration::from_secs(5)).await?;
    let enqueued = all(&committed);
    let duplicates = keyed::verify(&records, &enqueued)?;
    println!(
        "broker down for {:?}; the slot stayed confirmed at {:?}; confirmed everything \
         {drained_in:?} after the broker answered again ({} stream restarts, {retried:?} sends \
         retried); {} records for {} messages: 0 lost, {duplicates} duplicates",
        recovered.duration_since(outage),
        samples.last(),
        log.matches("replication stream ended").count(),
        records.len(),
        enqueued.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_a_live_relay_is_not_held_up_by_it_and_loses_nothing()
-> anyhow::Result<()> {
    init_logs();
    // A fast shutdown waits for each logical walsender's client to confirm what it was sent, for
    // wal_sender_timeout at most: a live relay must let it go well before.
    let timeout = Duration::from_secs(10);
    let mut server = wal::logical_server(&["wal_sender_timeout = '10s'"]).await?;
    let url = server.url();
    let connect = || PgPoolOptions::new().max_connections(4).connect(&url);
    let pool = connect().await?;
    let slot = wal::create_slot_on(&pool, "live").await?;
    let topic = create_topic(6).await?;
    let brokers = services::brokers()?;
    let flags = flags(
        &slot,
        &[
            "--lease",
            "5s",
            "--poll-interval",
            "100ms",
            "--connect-timeout",
            "20s",
        ],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut relay = RelayProcess::spawn_with(relay_program(), &url, &brokers, &flags)?;
    let mut committed = commit(&pool, &topic, 0..1_000).await?;
    wal::wait_until_confirmed_on(&pool, &slot, Duration::from_secs(60)).await?;
    let confirmed_before = wal::confirmed_position(&pool, &slot)
        .await?
        .unwrap_or_default();
    committed.extend(commit(&pool, &topic, 1_000..6_000).await?);
    pool.close().await;
    let stopping = Instant::now();
    server.stop().await?;
    let stopped_in = stopping.elapsed();
    assert!(
        stopped_in < timeout,
        "the fast shutdown took {stopped_in:?}: the live relay held its walsender until \
         wal_sender_timeout; relay log:\n{}",
        log_tail(&relay.log, 30)
    );
    let at_stop = held(&brokers, &topic).await?;
    server.start_again().await?;
    let pool = connect().await?;
    let confirmed_after = wal::confirmed_position(&pool, &slot)
        .await?
        .unwrap_or_default();
    committed.extend(commit(&pool, &topic, 6_000..7_000).await?);
    wal::wait_until_confirmed_on(&pool, &slot, Duration::from_secs(120)).await?;
    assert!(
        relay.exit_status()?.is_none(),
        "the relay process must survive the restart by itself:\n{}",
        log_tail(&relay.log, 30)
    );
    let status = relay.terminate().await?;
    assert!(status.success(), "the relay stops cleanly: {status}");
    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let enqueued = all(&committed);
    let duplicates = keyed::verify(&records, &enqueued)?;
    println!(
        "fast shutdown under a live relay took {stopped_in:?} ({at_stop} records on the topic by \
         then); the slot was confirmed at {} before the restart and at {} after it; {} records \
         for {} messages: 0 lost, {duplicates} duplicates",
        wal::lsn_text(confirmed_before),
        wal::lsn_text(confirmed_after),
        records.len(),
        enqueued.len()
    );
    pool.close().await;
    Ok(())
}
