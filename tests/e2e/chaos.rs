//! Chaos: three relay processes over one outbox, SIGKILLed and restarted at random while a writer
//! enqueues; one kept stopped for a while. Nothing may be lost and, per key, first occurrences must
//! follow enqueue order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_postgres::PgOutbox;
use outbox_tests::{Fixture, RelayProcess, read_topic};
use uuid::Uuid;

use crate::relay_program;

const MESSAGES: usize = 50_000;
const KEYS: usize = 200;
const PER_TRANSACTION: usize = 50;
const RELAYS: usize = 3;
const KILLS: usize = 12;
// The lease only matters for a relay that hangs; SIGKILL closes the session and frees the lanes at
// once. A longer lease keeps `message.timeout.ms` (a fifth of it, 3 s) well above the broker's
// latency when the machine is loaded.
const FLAGS: [&str; 8] = [
    "--lease",
    "15s",
    "--batch-size",
    "250",
    "--poll-interval",
    "100ms",
    "--lanes",
    "64",
];

/// A small deterministic generator, so a failing run can be repeated with the printed seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_relays_killed_at_random_while_writing_lose_nothing_and_keep_per_key_order()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(6).await?;
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|n| {
            Message::builder(&topic)
                .key(format!("key-{}", n % KEYS))
                .json(&n)
        })
        .collect::<Result<_, _>>()?;
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();

    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        let outbox = PgOutbox::new();
        for chunk in messages.chunks(PER_TRANSACTION) {
            let mut tx = pool.begin().await?;
            outbox.enqueue_all(&mut tx, chunk).await?;
            tx.commit().await?;
        }
        anyhow::Ok(())
    });

    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Uuid::now_v7().as_u128() as u64);
    println!("chaos seed {seed} (set CHAOS_SEED to repeat)");
    let mut rng = Lcg(seed);
    let mut relays: Vec<Option<RelayProcess>> = (0..RELAYS)
        .map(|_| RelayProcess::spawn(relay_program(), &db, &FLAGS).map(Some))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut parked: Option<(usize, Instant)> = None;
    while kills.len() < KILLS || !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(300 + rng.next(700))).await;
        if let Some((slot, since)) = parked
            && since.elapsed() > Duration::from_secs(5)
        {
            relays[slot] = Some(RelayProcess::spawn(relay_program(), &db, &FLAGS)?);
            parked = None;
        }
        let slot = rng.next(RELAYS as u64) as usize;
        let Some(relay) = relays[slot].take() else {
            continue;
        };
        relay.kill().await?;
        let left = db.outbox_count().await?;
        kills.push(left);
        if kills.len() == 4 {
            // Keep this one down for a while: the others must take its lanes over.
            parked = Some((slot, Instant::now()));
        } else {
            relays[slot] = Some(RelayProcess::spawn(relay_program(), &db, &FLAGS)?);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "chaos phase took too long"
        );
    }
    writer.await??;
    if let Some((slot, _)) = parked.take() {
        relays[slot] = Some(RelayProcess::spawn(relay_program(), &db, &FLAGS)?);
    }
    db.wait_until_drained(Duration::from_secs(180)).await?;
    for relay in relays.into_iter().flatten() {
        let status = relay.terminate().await?;
        assert!(status.success(), "a relay did not stop cleanly: {status}");
    }

    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let mut first_seen: HashMap<Uuid, usize> = HashMap::with_capacity(MESSAGES);
    for (position, record) in records.iter().enumerate() {
        let id = record
            .id()
            .ok_or_else(|| anyhow::anyhow!("record without ce_id"))?;
        first_seen.entry(id).or_insert(position);
    }
    let lost = ids.iter().filter(|id| !first_seen.contains_key(id)).count();
    assert_eq!(
        lost, 0,
        "{lost} of {MESSAGES} messages never reached the topic"
    );
    assert_eq!(
        first_seen.len(),
        MESSAGES,
        "no record outside the enqueued set"
    );
    let mut last: HashMap<usize, usize> = HashMap::new();
    for (n, id) in ids.iter().enumerate() {
        let position = first_seen[id];
        if let Some(previous) = last.insert(n % KEYS, position) {
            assert!(
                position > previous,
                "key-{}: message {n} first appeared before its predecessor",
                n % KEYS
            );
        }
    }
    let duplicates = records.len() - MESSAGES;
    println!(
        "{} kills (outbox backlog at each: {kills:?}); {} records for {MESSAGES} messages: {duplicates} duplicates, {:.0} per kill; {:.1} s",
        kills.len(),
        records.len(),
        duplicates as f64 / kills.len() as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
