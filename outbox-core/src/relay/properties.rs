//! The engine's lane-state machine against a simple model, under random acknowledgement delays,
//! failures, lost leases and rebalances.
//!
//! The model: every message is settled once, as published or as a dead letter; no lane ever has two
//! windows, and nothing is settled outside a window of the session that claimed it (the in-memory
//! store records both as violations); per key, the first publications come in enqueue order; and
//! only settled publications are counted.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use super::{Relay, RelayConfig};
use crate::CancellationToken;
use crate::message::Message;
use crate::publisher::PublishErrorKind;
use crate::retry::RetryPolicy;
use crate::testing::{MemoryPublisher, MemoryStore};

/// What can happen to the relay while it works.
#[derive(Debug, Clone)]
enum Chaos {
    /// The session is lost: its windows can no longer be settled.
    LoseLease,
    /// These lanes are given up (drained, then released), and taken back after a while.
    Rebalance(Vec<u32>),
}

#[derive(Debug, Clone)]
struct Scenario {
    lanes: u32,
    keys: usize,
    messages: usize,
    batch: usize,
    window: usize,
    in_flight: usize,
    phases: usize,
    /// Acknowledgement delays in ms, used in turn by the hand-overs.
    delays: Vec<u64>,
    /// Per message: how many transient failures before it goes through (3 or more: dead letter).
    failures: Vec<u8>,
    /// Chaos events, each after a pause in ms.
    chaos: Vec<(u64, Chaos)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::sample::select(vec![1u32, 2, 4, 8]),
        1usize..6,
        1usize..60,
        1usize..20,
        1usize..8,
        1usize..40,
        1usize..4,
        prop::collection::vec(0u64..30, 1..20),
        prop::collection::vec(prop::sample::select(vec![0u8, 0, 0, 0, 1, 2, 3]), 60),
        prop::collection::vec(
            (
                0u64..40,
                prop_oneof![
                    Just(Chaos::LoseLease),
                    prop::collection::vec(0u32..8, 1..4).prop_map(Chaos::Rebalance),
                ],
            ),
            0..4,
        ),
    )
        .prop_map(
            |(lanes, keys, messages, batch, window, in_flight, phases, delays, failures, chaos)| {
                Scenario {
                    lanes,
                    keys,
                    messages,
                    batch,
                    window,
                    in_flight,
                    phases,
                    delays,
                    failures,
                    chaos,
                }
            },
        )
}

fn run(scenario: &Scenario) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|error| TestCaseError::fail(format!("runtime: {error}")))?;
    runtime.block_on(check(scenario))
}

async fn check(scenario: &Scenario) -> Result<(), TestCaseError> {
    let store = MemoryStore::with_lanes(scenario.lanes);
    let messages: Vec<Message> = (0..scenario.messages)
        .map(|n| {
            Message::builder("t")
                .key(format!("key-{}", n % scenario.keys))
                .json(&n)
                .expect("valid message")
        })
        .collect();
    store.enqueue(messages.clone());
    let failures_left: Arc<Mutex<BTreeMap<i64, u8>>> = Arc::new(Mutex::new(
        (0..scenario.messages)
            .map(|n| (n as i64 + 1, scenario.failures[n]))
            .collect(),
    ));
    let script_failures = failures_left.clone();
    let delays = scenario.delays.clone();
    let mut turn = 0usize;
    let publisher = MemoryPublisher::failing(move |stored| {
        let mut left = script_failures.lock().expect("not poisoned");
        let count = left.entry(stored.seq).or_default();
        if *count == 0 {
            return None;
        }
        if *count < 3 {
            *count -= 1;
        }
        Some(PublishErrorKind::Transient)
    })
    .with_ack_delay(move |_| {
        turn += 1;
        Duration::from_millis(delays[turn % delays.len()])
    });
    let config = RelayConfig::default()
        .batch_size(scenario.batch)
        .and_then(|c| c.window(scenario.window))
        .and_then(|c| c.max_in_flight(scenario.in_flight))
        .and_then(|c| c.phases(scenario.phases))
        .and_then(|c| c.poll_interval(Duration::from_millis(5)))
        .expect("valid config")
        .store_backoff(Duration::from_millis(5))
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .and_then(|r| r.backoff(Duration::from_millis(1), Duration::from_millis(4)))
                .expect("valid policy"),
        );
    let relay = Relay::new(store.clone(), publisher.clone(), config).expect("valid relay");
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let control = store.clone();
    let chaos = scenario.chaos.clone();
    let all_lanes = scenario.lanes;
    let (stats, finished) = tokio::join!(relay.run(shutdown), async move {
        for (pause, event) in chaos {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match event {
                Chaos::LoseLease => control.lose_lease(),
                Chaos::Rebalance(lanes) => {
                    control.give_up(lanes.iter().map(|lane| lane % all_lanes));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    control.take(0..all_lanes);
                }
            }
        }
        // Lanes given up in the last event come back once their drain is over.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let finished = loop {
            control.take(0..all_lanes);
            if control.pending().is_empty() {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        stopper.cancel();
        finished
    });
    prop_assert!(
        finished,
        "messages left after ten virtual minutes: {:?}",
        store.pending().iter().map(|m| m.seq).collect::<Vec<_>>()
    );
    prop_assert_eq!(store.violations(), Vec::<String>::new());

    let dead: HashSet<uuid::Uuid> = store
        .dead_letters()
        .iter()
        .map(|(m, _)| m.message.id)
        .collect();
    let published = publisher.published();
    let published_ids: HashSet<uuid::Uuid> = published.iter().map(|m| m.id).collect();
    for message in &messages {
        prop_assert!(
            dead.contains(&message.id) != published_ids.contains(&message.id),
            "message {} must be published or a dead letter, exactly one of them",
            String::from_utf8_lossy(&message.payload)
        );
    }
    prop_assert_eq!(
        stats.published as usize,
        published_ids.len(),
        "settled publications count once"
    );
    prop_assert_eq!(stats.dead_lettered as usize, dead.len());

    // Per key, first publications follow enqueue order.
    let position: BTreeMap<uuid::Uuid, usize> = messages
        .iter()
        .enumerate()
        .map(|(n, m)| (m.id, n))
        .collect();
    let mut seen = HashSet::new();
    let mut last: BTreeMap<Option<Vec<u8>>, usize> = BTreeMap::new();
    for message in &published {
        if !seen.insert(message.id) {
            continue;
        }
        let at = position[&message.id];
        if let Some(before) = last.insert(message.key.clone(), at) {
            prop_assert!(
                before < at,
                "key {:?}: message {} was first published after message {}",
                message.key.as_deref().map(String::from_utf8_lossy),
                before,
                at
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_lane_state_machine_keeps_the_model(scenario in scenario()) {
        run(&scenario)?;
    }
}
