//! Reorder window R3 with delivery timeouts (docs/guarantees.md), on librdkafka's mock cluster.
//!
//! Every test runs the real [`KafkaPublisher`] against a one-broker mock cluster, injects the same
//! fault into the first Produce request of messages of one key, and reads the topic back:
//!
//! * the broker answers that request with a retriable error (so it wrote nothing) but holds the
//!   answer back; librdkafka times the request out after `message.timeout.ms` (5 s), checking once
//!   a second, so by 6 s at the latest: it closes the connection and reports the request's
//!   messages as `MessageTimedOut`;
//! * at 7.5 s the broker sends everything it held back and from then on answers at once, so what
//!   was handed to librdkafka well after the first request (its deadline is at least 9 s) is
//!   acknowledged.
//!
//! Whether the window opens depends only on when the later messages of the key reach librdkafka.

use std::time::{Duration, Instant};

use outbox_core::testing::MemoryStore;
use outbox_core::{
    CancellationToken, Fence, Message, PublishErrorKind, Publisher, Relay, RelayConfig, RelayStats,
    RetryPolicy, StoredMessage,
};
use outbox_kafka::KafkaPublisher;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

/// The topic under test (one partition, so every record of a key is in one log).
const TOPIC: &str = "orders";
/// A topic for the message that connects the producer before the fault is injected.
const WARM_UP: &str = "warm-up";
/// librdkafka's delivery timeout (`message.timeout.ms`, the publisher's default).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker holds its answers back once the fault is injected: until released.
const ANSWER_DELAY: Duration = Duration::from_secs(60);
/// When the held answers are released, counted from the first hand-over: after the first request
/// has timed out (by `MESSAGE_TIMEOUT` plus librdkafka's 1 s scan interval), well before anything
/// handed over at [`LATER_HAND_OVER`] or later can time out.
const RELEASE_AFTER: Duration = Duration::from_millis(7_500);
/// When the publisher-level test hands over the later messages: while the first request waits.
const LATER_HAND_OVER: Duration = Duration::from_secs(4);

/// A one-broker mock cluster with [`TOPIC`] and [`WARM_UP`].
struct Broker {
    mock: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl Broker {
    fn start() -> Self {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic(TOPIC, 1, 1).expect("topic");
        mock.create_topic(WARM_UP, 1, 1).expect("topic");
        let bootstrap = mock.bootstrap_servers();
        Self { mock, bootstrap }
    }

    /// A publisher with the test's timeout and `settings`.
    fn publisher(&self, settings: &[(&str, &str)]) -> KafkaPublisher {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap).set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        );
        for (key, value) in settings {
            config.set(*key, *value);
        }
        KafkaPublisher::new(&config).expect("publisher")
    }

    /// The fault: the next Produce request fails without being written, and every answer is held.
    fn fail_the_next_request_and_hold_answers(&self) {
        self.mock
            .broker_round_trip_time(-1, ANSWER_DELAY)
            .expect("answers held");
        self.mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS],
        );
    }

    /// Sends every held answer and answers at once from now on.
    fn release_answers(&self) {
        self.mock
            .broker_round_trip_time(-1, Duration::ZERO)
            .expect("answers released");
    }

    /// Every record of [`TOPIC`], in log order, as `key:payload`.
    fn records(&self) -> Vec<String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "reorder-window-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let (low, high) = consumer
            .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(TOPIC, 0, Offset::Offset(low))
            .expect("partition");
        consumer.assign(&partitions).expect("assign");
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut next = low;
        while next < high {
            assert!(
                Instant::now() < deadline,
                "read only {records:?} of offsets {low}..{high}"
            );
            let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let record = polled.expect("consumed record");
            let key = String::from_utf8_lossy(record.key().unwrap_or_default());
            let payload = String::from_utf8_lossy(record.payload().unwrap_or_default());
            records.push(format!("{key}:{payload}"));
            next = record.offset() + 1;
        }
        records
    }
}

/// Message `n` of key `k` on [`TOPIC`].
fn message(n: u32) -> Message {
    Message::builder(TOPIC)
        .key("k")
        .json(&n)
        .expect("valid message")
}

/// What a user can observe after the relay has emptied the outbox.
#[derive(Debug)]
struct Observed {
    /// The records of [`TOPIC`] in log order.
    records: Vec<String>,
    stats: RelayStats,
    dead_letters: usize,
    pending: usize,
}

/// The engine over a [`MemoryStore`] with a publisher made with `settings`: one batch of four
/// messages of key `k`, whose first Produce request fails as the module documentation describes.
async fn relay_a_batch_whose_first_request_times_out(settings: &[(&str, &str)]) -> Observed {
    let broker = Broker::start();
    let store = MemoryStore::new();
    let relay = Relay::new(
        store.clone(),
        broker.publisher(settings),
        RelayConfig::default()
            .poll_interval(Duration::from_millis(10))
            .expect("valid")
            .retry(
                RetryPolicy::default()
                    .backoff(Duration::from_millis(50), Duration::from_millis(100))
                    .expect("valid"),
            ),
    )
    .expect("valid relay");
    let shutdown = CancellationToken::new();
    let driver = async {
        // Connect the producer (metadata and producer id) before the fault.
        store.enqueue([Message::builder(WARM_UP).json(&"hello").expect("valid")]);
        wait_until_empty(&store, Duration::from_secs(20)).await;

        broker.fail_the_next_request_and_hold_answers();
        store.enqueue((0..4).map(message));
        tokio::time::sleep(RELEASE_AFTER).await;
        broker.release_answers();

        wait_until_empty(&store, Duration::from_secs(30)).await;
        shutdown.cancel();
    };
    let (stats, ()) = tokio::join!(relay.run(shutdown.clone()), driver);
    Observed {
        records: broker.records(),
        stats,
        dead_letters: store.dead_letters().len(),
        pending: store.pending().len(),
    }
}

async fn wait_until_empty(store: &MemoryStore, limit: Duration) {
    let started = Instant::now();
    while !store.pending().is_empty() {
        assert!(
            started.elapsed() < limit,
            "the outbox still holds {:?} after {limit:?}",
            store.pending()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The relay hands a batch to librdkafka at once, so its messages of one partition travel in one
/// request with one deadline: the timeout fails all four, the relay retries all four, and the
/// topic holds each once, in enqueue order. No reorder.
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_fails_the_messages_handed_over_with_it_and_the_retry_keeps_their_order() {
    let observed = relay_a_batch_whose_first_request_times_out(&[]).await;
    assert_eq!(
        observed.records,
        ["k:0", "k:1", "k:2", "k:3"],
        "{observed:?}"
    );
    assert_eq!(observed.stats.retried, 4, "{observed:?}");
    assert_eq!(
        observed.stats.published, 5,
        "warm-up and batch: {observed:?}"
    );
    assert_eq!((observed.dead_letters, observed.pending), (0, 0));
}

/// With room for one message in librdkafka's queue, the publisher hands over each message of the
/// batch only once the one before has left the queue, which for the first is when it times out.
/// The other three then go out on a fresh connection with a new producer epoch and are
/// acknowledged: the relay settles them as published and retries the first, which lands after
/// them. Nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_timed_out_before_its_successors_were_handed_over_lands_after_them() {
    let observed =
        relay_a_batch_whose_first_request_times_out(&[("queue.buffering.max.messages", "1")]).await;
    assert_eq!(
        observed.records,
        ["k:1", "k:2", "k:3", "k:0"],
        "{observed:?}"
    );
    assert_eq!(observed.stats.retried, 1, "{observed:?}");
    assert_eq!(
        observed.stats.published, 5,
        "warm-up and batch: {observed:?}"
    );
    assert_eq!((observed.dead_letters, observed.pending), (0, 0));
}

/// What librdkafka does when the later messages of the partition are handed over before the first
/// request times out (as when a relay is stalled for seconds between two messages of a batch): it
/// fails only the timed-out request's messages (its gapless guarantee excludes timeouts), keeps the
/// later ones, and sends them once the broker answers again. The later ones are acknowledged and
/// on the topic; the first ones are not, so their retry follows the later ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_does_not_fail_the_later_messages_of_the_partition_already_handed_over() {
    let broker = Broker::start();
    let publisher = broker.publisher(&[]);
    let fence = Fence::unbounded();
    let stored = |seq: i64, message: Message| StoredMessage {
        seq,
        attempts: 0,
        message,
    };
    let warm_up = [stored(
        1,
        Message::builder(WARM_UP).json(&"hello").expect("valid"),
    )];
    assert!(publisher.publish(&warm_up, &fence).await[0].is_ok());

    broker.fail_the_next_request_and_hold_answers();
    let first = [stored(2, message(0)), stored(3, message(1))];
    let later = [stored(4, message(2)), stored(5, message(3))];
    let (first_outcomes, later_outcomes, ()) = tokio::join!(
        publisher.publish(&first, &fence),
        async {
            tokio::time::sleep(LATER_HAND_OVER).await;
            publisher.publish(&later, &fence).await
        },
        async {
            tokio::time::sleep(RELEASE_AFTER).await;
            broker.release_answers();
        },
    );

    for outcome in &first_outcomes {
        let error = outcome.as_ref().expect_err("the first request timed out");
        assert_eq!(error.kind(), PublishErrorKind::Unavailable);
        assert!(
            error
                .describe()
                .contains(&format!("{:?}", RDKafkaErrorCode::MessageTimedOut)),
            "{}",
            error.describe()
        );
    }
    for outcome in &later_outcomes {
        assert!(
            outcome.is_ok(),
            "the later messages were acknowledged: {later_outcomes:?}"
        );
    }
    assert_eq!(broker.records(), ["k:2", "k:3"]);
}
