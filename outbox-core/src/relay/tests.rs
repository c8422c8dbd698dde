//! The engine against the in-memory doubles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::PublishErrorKind;
use crate::message::Message;
use crate::retry::RetryPolicy;
use crate::testing::{MemoryPublisher, MemoryStore};

fn message(key: &str, n: usize) -> Message {
    message_to("t", key, n)
}

fn message_to(topic: &str, key: &str, n: usize) -> Message {
    Message::builder(topic)
        .key(key)
        .json(&n)
        .expect("valid message")
}

fn fast_config() -> RelayConfig {
    RelayConfig::default()
        .batch_size(7)
        .expect("valid")
        .window(3)
        .expect("valid")
        .poll_interval(Duration::from_millis(5))
        .expect("valid")
        .store_backoff(Duration::from_millis(5))
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .expect("valid")
                .backoff(Duration::from_millis(1), Duration::from_millis(2))
                .expect("valid"),
        )
}

fn relay(
    store: &MemoryStore,
    publisher: &MemoryPublisher,
    config: RelayConfig,
) -> Relay<MemoryStore, MemoryPublisher> {
    Relay::new(store.clone(), publisher.clone(), config).expect("valid relay")
}

async fn run_until(
    relay: &Relay<MemoryStore, MemoryPublisher>,
    store: &MemoryStore,
    done: impl Fn(&MemoryStore) -> bool,
) -> RelayStats {
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let watcher = async {
        while !done(store) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stopper.cancel();
    };
    let (stats, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(relay.run(shutdown), watcher)
    })
    .await
    .expect("relay finished in time");
    assert_eq!(store.violations(), Vec::<String>::new());
    stats
}

fn payloads(publisher: &MemoryPublisher, key: &str) -> Vec<String> {
    publisher
        .published()
        .into_iter()
        .filter(|m| m.key.as_deref() == Some(key.as_bytes()))
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

#[tokio::test]
async fn publishes_every_message_in_key_order_and_empties_the_outbox() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let keys = ["a", "b", "c", "d", "e"];
    store.enqueue((0..50).map(|n| message(keys[n % keys.len()], n)));
    let relay = relay(&store, &publisher, fast_config());
    let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
    assert_eq!(stats.published, 50);
    assert_eq!(publisher.published().len(), 50, "each message once");
    for (k, key) in keys.iter().enumerate() {
        let expected: Vec<String> = (0..50)
            .filter(|n| n % keys.len() == k)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(payloads(&publisher, key), expected, "key {key}");
    }
}

#[tokio::test(start_paused = true)]
async fn windows_of_different_lanes_are_in_flight_together_never_two_of_one_lane() {
    let store = MemoryStore::with_lanes(8);
    // Every hand-over takes 50 ms to be acknowledged: a batch-at-a-time engine would have one in
    // flight at any moment.
    let publisher = MemoryPublisher::new().with_ack_delay(|_| Duration::from_millis(50));
    let keys: Vec<String> = (0..32).map(|k| format!("key-{k}")).collect();
    store.enqueue((0..320).map(|n| message(&keys[n % keys.len()], n)));
    let config = fast_config()
        .batch_size(40)
        .expect("valid")
        .window(5)
        .expect("valid")
        .max_in_flight(100)
        .expect("valid");
    let relay = relay(&store, &publisher, config);
    let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
    assert_eq!(stats.published, 320);
    assert!(
        publisher.most_in_flight() >= 4,
        "only {} windows were ever in flight at once",
        publisher.most_in_flight()
    );
    // The store records a second window of a busy lane as a violation (checked in run_until).
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_budget_bounds_what_waits_for_the_broker() {
    let store = MemoryStore::with_lanes(16);
    let publisher = MemoryPublisher::new().with_ack_delay(|_| Duration::from_millis(20));
    store.enqueue((0..400).map(|n| message(&format!("k{n}"), n)));
    let config = fast_config()
        .batch_size(100)
        .expect("valid")
        .window(1)
        .expect("valid")
        .max_in_flight(6)
        .expect("valid")
        .phases(1)
        .expect("valid");
    let relay = relay(&store, &publisher, config);
    let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
    assert_eq!(stats.published, 400);
    assert!(
        publisher.most_in_flight() <= 6,
        "{} one-message windows were in flight with a budget of 6",
        publisher.most_in_flight()
    );
}

#[tokio::test]
async fn transient_failures_hold_the_key_back_then_succeed() {
    let store = MemoryStore::new();
    let failures = Arc::new(AtomicU32::new(0));
    let seen = failures.clone();
    let publisher = MemoryPublisher::failing(move |stored| {
        (stored.seq == 1 && seen.fetch_add(1, Ordering::SeqCst) < 2)
            .then_some(PublishErrorKind::Transient)
    });
    store.enqueue([message("a", 0), message("a", 1)]);
    let relay = relay(&store, &publisher, fast_config());
    let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
    assert_eq!(
        failures.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert_eq!(
        stats.retried, 4,
        "both messages twice: the second waits behind the first"
    );
    assert_eq!(payloads(&publisher, "a"), ["0", "1"]);
    assert!(store.dead_letters().is_empty());
}

#[tokio::test]
async fn a_retry_holds_back_its_topic_in_its_lane_not_the_other_topics() {
    let store = MemoryStore::with_lanes(1);
    let publisher = MemoryPublisher::failing(|stored| {
        (stored.message.topic == "stuck").then_some(PublishErrorKind::Transient)
    });
    store.enqueue([message_to("stuck", "a", 0)]);
    store.enqueue((1..=5).map(|n| message_to("flowing", "a", n)));
    let config = fast_config().retry(
        RetryPolicy::default()
            .max_attempts(100)
            .expect("valid")
            .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
            .expect("valid"),
    );
    let relay = relay(&store, &publisher, config);
    run_until(&relay, &store, |s| s.pending().len() == 1).await;
    assert_eq!(
        publisher.published().len(),
        5,
        "the other topic of the lane flows while `stuck` waits an hour"
    );
    assert_eq!(store.pending()[0].message.topic, "stuck");
}

#[tokio::test]
async fn permanent_failures_become_dead_letters_and_the_rest_flows() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::failing(|stored| {
        (stored.seq == 3).then_some(PublishErrorKind::MessageTooLarge)
    });
    store.enqueue((0..10).map(|n| message("a", n)));
    let relay = relay(&store, &publisher, fast_config());
    let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.seq, 3);
    assert_eq!(dead[0].1.attempts, 1);
    assert!(
        dead[0].1.error.contains("MessageTooLarge"),
        "{}",
        dead[0].1.error
    );
    assert_eq!(publisher.published().len(), 9);
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stats.published, 9);
}

#[tokio::test]
async fn transient_failures_past_the_limit_become_dead_letters() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::failing(|_| Some(PublishErrorKind::Transient));
    store.enqueue([message("a", 0)]);
    let relay = relay(&store, &publisher, fast_config());
    run_until(&relay, &store, |s| s.pending().is_empty()).await;
    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.attempts, 3, "max_attempts");
}

#[tokio::test]
async fn an_outage_longer_than_the_attempt_budget_uses_none_of_it() {
    let store = MemoryStore::new();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    // Ten outages (more than the 3 attempts allowed), then one transient failure, then success.
    let publisher = MemoryPublisher::failing(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
        0..10 => Some(PublishErrorKind::Unavailable),
        10 => Some(PublishErrorKind::Transient),
        _ => None,
    });
    store.enqueue([message("a", 0)]);
    let relay = relay(&store, &publisher, fast_config());
    run_until(&relay, &store, |s| s.pending().is_empty()).await;
    assert!(
        store.dead_letters().is_empty(),
        "a transient failure after an outage is the first attempt, not the eleventh: {:?}",
        store.dead_letters()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 12);
    assert_eq!(publisher.published().len(), 1);
}

#[tokio::test]
async fn a_window_whose_outcome_cannot_be_written_is_published_again_and_counted_once() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    store.enqueue((0..5).map(|n| message("a", n)));
    store.fail_next_settles(1);
    let config = fast_config().window(5).expect("valid");
    let relay = relay(&store, &publisher, config);
    let stats = run_until(&relay, &store, |s| s.pending().is_empty()).await;
    assert_eq!(stats.abandoned_windows, 1);
    assert_eq!(
        publisher.published().len(),
        10,
        "each message twice: at least once, never lost"
    );
    assert_eq!(
        stats.published, 5,
        "only what was written counts as published"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_claim_leaves_the_windows_in_flight_to_be_settled() {
    let store = MemoryStore::with_lanes(4);
    let publisher = MemoryPublisher::new().with_ack_delay(|_| Duration::from_millis(100));
    store.enqueue((0..4).map(|n| message(&format!("k{n}"), n)));
    store.fail_next_claims(0);
    let config = fast_config().phases(4).expect("valid");
    let relay = relay(&store, &publisher, config);
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let failing = store.clone();
    let (stats, ()) = tokio::join!(relay.run(shutdown), async move {
        // The first window is in flight; the claims after it fail for a while.
        while failing.claims() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        failing.fail_next_claims(5);
        while !failing.pending().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stopper.cancel();
    });
    assert_eq!(store.violations(), Vec::<String>::new());
    assert_eq!(stats.published, 4);
    assert_eq!(stats.abandoned_windows, 0, "no window was dropped");
    assert_eq!(publisher.published().len(), 4, "and none published twice");
}

#[tokio::test]
async fn a_relay_whose_lease_expired_sends_nothing_more_and_settles_nothing() {
    let store = MemoryStore::with_lanes(1);
    store.enqueue((0..20).map(|n| message("a", n)));
    let lease = store.clone();
    let publisher = MemoryPublisher::failing(move |stored| {
        // The lease runs out while the fifth message is being handed over.
        if stored.seq == 5 {
            lease.fence().expire();
        }
        None
    });
    let config = fast_config()
        .batch_size(10)
        .expect("valid")
        .window(10)
        .expect("valid");
    let relay = relay(&store, &publisher, config);
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let (stats, ()) = tokio::join!(relay.run(shutdown), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopper.cancel();
    });
    assert_eq!(
        publisher.published().len(),
        5,
        "messages 1-5 went out before the lease expired, none after"
    );
    assert_eq!(
        store.pending().len(),
        20,
        "nothing settled: the next owner publishes the window again"
    );
    assert!(stats.abandoned_windows >= 1);
    assert_eq!(stats.published, 0);
}

#[tokio::test(start_paused = true)]
async fn a_lane_given_up_is_drained_then_released_and_the_others_keep_flowing() {
    let store = MemoryStore::with_lanes(2);
    let publisher = MemoryPublisher::new().with_ack_delay(|_| Duration::from_millis(10));
    let lane_of = |key: &str| store.lane_of(&message(key, 0));
    let (zero, one): (Vec<String>, Vec<String>) = (0..40)
        .map(|k| format!("k{k}"))
        .partition(|key| lane_of(key) == 0);
    assert!(!zero.is_empty() && !one.is_empty(), "both lanes have keys");
    store.enqueue((0..20).map(|n| message(&zero[n % zero.len()], n)));
    store.enqueue((0..20).map(|n| message(&one[n % one.len()], n)));
    let relay = relay(&store, &publisher, fast_config().phases(1).expect("valid"));
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let control = store.clone();
    let (stats, ()) = tokio::join!(relay.run(shutdown), async move {
        while control.claims() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        control.give_up([1]);
        while control.owned().contains(&1) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let lane_one_left = control
            .pending()
            .iter()
            .filter(|m| control.lane_of(&m.message) == 1)
            .count();
        assert!(lane_one_left > 0, "lane 1 was released with messages left");
        while control
            .pending()
            .iter()
            .any(|m| control.lane_of(&m.message) == 0)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stopper.cancel();
    });
    assert_eq!(store.violations(), Vec::<String>::new());
    assert_eq!(
        stats.abandoned_windows, 0,
        "the lane's last window was settled before release"
    );
    let published = publisher.published();
    assert_eq!(
        published.len() as u64,
        stats.published,
        "nothing published without being settled"
    );
    assert!(
        store
            .pending()
            .iter()
            .all(|m| store.lane_of(&m.message) == 1)
    );
}

#[tokio::test]
async fn shutdown_while_idle_returns_promptly() {
    let relay = relay(
        &MemoryStore::new(),
        &MemoryPublisher::new(),
        RelayConfig::default(),
    );
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(1), relay.run(shutdown))
        .await
        .expect("prompt");
    assert_eq!(stats, RelayStats::default());
}

#[tokio::test(start_paused = true)]
async fn on_shutdown_the_windows_in_flight_are_settled_within_the_grace() {
    let store = MemoryStore::with_lanes(4);
    let publisher = MemoryPublisher::new().with_ack_delay(|_| Duration::from_secs(2));
    store.enqueue((0..8).map(|n| message(&format!("k{n}"), n)));
    let relay = relay(&store, &publisher, fast_config().phases(1).expect("valid"));
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let watched = store.clone();
    let (stats, ()) = tokio::join!(relay.run(shutdown), async move {
        while watched.claims() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stopper.cancel();
    });
    assert!(stats.published > 0, "{stats:?}");
    assert_eq!(stats.abandoned_windows, 0);
    assert_eq!(publisher.published().len() as u64, stats.published);
}

#[test]
fn a_send_timeout_the_lease_does_not_cover_is_refused() {
    let config = RelayConfig::default;
    let leased = || MemoryStore::new().with_lease(Duration::from_secs(1));
    let slow = MemoryPublisher::new().with_send_timeout(Duration::from_secs(5));
    let error = Relay::new(leased(), slow, config()).expect_err("5 s sends on a 1 s lease");
    assert!(error.to_string().contains("send timeout"), "{error}");
    let unbounded = Relay::new(leased(), MemoryPublisher::new(), config()).expect_err("unbounded");
    assert!(unbounded.to_string().contains("lease"), "{unbounded}");
    // Half the lease was accepted once: a record handed over as the fence closed (4/5 of the lease)
    // could then reach the broker after the lane's next owner started.
    let half = MemoryPublisher::new().with_send_timeout(Duration::from_millis(500));
    let error = Relay::new(leased(), half, config()).expect_err("half the lease");
    assert!(error.to_string().contains("at most a fifth"), "{error}");
    let fifth = MemoryPublisher::new().with_send_timeout(Duration::from_millis(200));
    assert!(Relay::new(leased(), fifth, config()).is_ok());
    assert!(
        Relay::new(MemoryStore::new(), MemoryPublisher::new(), config()).is_ok(),
        "no lease, nothing to outlive"
    );
}
