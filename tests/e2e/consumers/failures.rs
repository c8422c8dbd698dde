//! Failing handlers, poison records and undecodable records: retried, then dead-lettered with
//! their error headers; the partition moves on; nothing is skipped silently.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::Message;
use outbox_kafka::Received;
use outbox_kafka::dead_letter::{
    DLQ_ATTEMPTS, DLQ_CONSUMER, DLQ_ERROR, DLQ_GROUP, DLQ_ORIGINAL_OFFSET, DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC, DLQ_REASON,
};
use outbox_tests::consumers::{STEP, Step, effects_report, publish, record_step, wait_for_effects};
use outbox_tests::{Record, create_topic, kafka_config, read_topic};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{
    INBOX_NAME, Running, builder, fresh, group, publish_steps, quick_retry, step_consumer,
    wait_for_stats,
};

/// Step `seq` of key `k` as an event of type `event_type`.
fn event(topic: &str, event_type: &str, seq: i64) -> anyhow::Result<Message> {
    let step = Step {
        key: "k".into(),
        seq,
    };
    Ok(Message::builder(topic)
        .key("k")
        .event_type(event_type)
        .json(&step)?)
}

/// How many times the handler was called, per message id.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<Uuid, u32>>>);

impl Calls {
    /// Counts a call for `id`; returns which call it is (1 for the first).
    fn next(&self, id: Uuid) -> u32 {
        let mut calls = self.0.lock().expect("not poisoned");
        let call = calls.entry(id).or_default();
        *call += 1;
        *call
    }

    /// The calls counted for `id`.
    fn of(&self, id: Uuid) -> u32 {
        self.0
            .lock()
            .expect("not poisoned")
            .get(&id)
            .copied()
            .unwrap_or(0)
    }
}

fn header<'r>(record: &'r Record, name: &str) -> &'r str {
    record.headers.get(name).map_or("<missing>", String::as_str)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_failing_three_times_applies_once_and_a_poison_record_is_dead_lettered_while_its_partition_continues()
-> anyhow::Result<()> {
    let (db, topic) = fresh(2).await?;
    let dead_letters = create_topic(1).await?;
    // One key, so one partition: 20 steps in order.
    let messages = publish_steps(&topic, 1, 20).await?;
    let flaky = messages[4].clone();
    let poison = messages[9].clone();

    let calls = Calls::default();
    let counted = calls.clone();
    let (flaky_id, poison_id) = (flaky.id, poison.id);
    let group = group("failures");
    let consumer = Running::start(
        builder(&db, &topic, &group)?
            .on(
                STEP,
                move |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
                    let call = counted.next(received.id);
                    if received.id == flaky_id && call <= 3 {
                        return Box::pin(async move {
                            Err(format!("downstream unavailable (call {call})").into())
                        });
                    }
                    if received.id == poison_id {
                        return Box::pin(async {
                            Err("poison: this record can never be applied".into())
                        });
                    }
                    record_step(tx, step, received, "consumer")
                },
            )
            .retry(quick_retry(4))
            .dead_letter_topic(&dead_letters),
    )?;
    wait_for_effects(&db.pool, 19, Duration::from_secs(60)).await?;
    let stats = consumer.stop().await?;
    assert_eq!(stats.dead_lettered, 1);

    assert_eq!(calls.of(flaky.id), 4, "three failures, then success");
    assert_eq!(
        calls.of(poison.id),
        4,
        "all four attempts spent on the poison record"
    );
    assert_eq!(stats.failures, 3 + 4);
    assert_eq!(stats.applied, 19);
    let applied: Vec<i64> = sqlx::query_scalar("SELECT seq FROM effects ORDER BY n")
        .fetch_all(&db.pool)
        .await?;
    let expected: Vec<i64> = (1..=20).filter(|seq| *seq != 10).collect();
    assert_eq!(
        applied, expected,
        "flaky applied once; the partition continued past the poison"
    );
    let flaky_effects: i64 =
        sqlx::query_scalar("SELECT count(*) FROM effects WHERE message_id = $1")
            .bind(flaky.id)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(flaky_effects, 1, "the failed attempts left nothing behind");

    let records = read_topic(&dead_letters, 1, Duration::from_secs(15)).await?;
    assert_eq!(records.len(), 1, "one dead letter");
    let dead = &records[0];
    assert_eq!(dead.id(), Some(poison.id), "ce_id kept");
    assert_eq!(dead.key.as_deref(), poison.key.as_deref(), "key kept");
    assert_eq!(dead.payload, poison.payload, "payload kept");
    assert_eq!(header(dead, "ce_type"), STEP);
    assert_eq!(header(dead, DLQ_REASON), "handler-failed");
    assert_eq!(header(dead, DLQ_ATTEMPTS), "4");
    assert!(header(dead, DLQ_ERROR).contains("poison: this record can never be applied"));
    assert_eq!(header(dead, DLQ_ORIGINAL_TOPIC), topic);
    let original = read_topic(&topic, 20, Duration::from_secs(15)).await?;
    let at = original
        .iter()
        .find(|r| r.id() == Some(poison.id))
        .expect("the poison record is on the topic");
    assert_eq!(
        header(dead, DLQ_ORIGINAL_PARTITION),
        at.partition.to_string()
    );
    assert_eq!(header(dead, DLQ_ORIGINAL_OFFSET), at.offset.to_string());
    assert_eq!(header(dead, DLQ_CONSUMER), INBOX_NAME);
    assert_eq!(header(dead, DLQ_GROUP), group);
    Ok(())
}

/// Log lines written while a test runs on the current thread.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Produces a record as given, headers and all, bypassing the publisher (which always sets
/// `ce_id`).
async fn produce_raw(
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka_config()?.create()?;
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        owned = owned.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)?;
    Ok(())
}

// The current-thread runtime runs every task of the consumer on this thread, where the test's
// log subscriber is installed.
#[tokio::test(flavor = "current_thread")]
async fn undecodable_records_are_dead_lettered_with_a_log_line_unknown_types_are_skipped_and_the_partition_continues()
-> anyhow::Result<()> {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("outbox_kafka=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let (db, topic) = fresh(1).await?;
    let dead_letters = create_topic(1).await?;
    let first = event(&topic, STEP, 1)?;
    let not_json = Message::builder(&topic)
        .key("k")
        .event_type(STEP)
        .bytes(b"{\"key\": \"k\", \"seq\": ".to_vec(), "application/json")?;
    let wrong_shape = Message::builder(&topic)
        .key("k")
        .event_type(STEP)
        .json(&"a string")?;
    let unknown = event(&topic, "OrderCancelled", 0)?;
    let last = event(&topic, STEP, 2)?;
    let first_id = first.id.to_string();
    publish(&[first, not_json.clone(), wrong_shape.clone(), unknown]).await?;
    // Offset 4: no ce_id at all.
    produce_raw(
        &topic,
        "k",
        br#"{"key":"k","seq":99}"#,
        &[("ce_type", STEP)],
    )
    .await?;
    // Offset 5: a second ce_id forging the first step's: read as that one, it would be absorbed as
    // a duplicate and its own effect lost without a trace.
    let own_id = Uuid::now_v7().to_string();
    produce_raw(
        &topic,
        "k",
        br#"{"key":"k","seq":98}"#,
        &[("ce_id", &own_id), ("ce_type", STEP), ("ce_id", &first_id)],
    )
    .await?;
    publish(&[last]).await?;

    let consumer = Running::start(
        step_consumer(&db, &topic, &group("undecodable"), "consumer")?
            .dead_letter_topic(&dead_letters),
    )?;
    wait_for_effects(&db.pool, 2, Duration::from_secs(60)).await?;
    // The dead letters precede the last step on the partition: all sent by now.
    let stats = consumer.stop().await?;
    assert_eq!(stats.dead_lettered, 4);

    // The partition continued: steps 1 and 2 applied, nothing else.
    let report = effects_report(&db.pool).await?;
    assert_eq!(report.rows, 2, "{report:?}");
    assert_eq!(stats.ignored, 1, "the unknown type was skipped and counted");
    assert_eq!(stats.failures, 0, "undecodable records are not retried");

    assert_eq!(
        stats.duplicates, 0,
        "the forged id was not taken for the first step's"
    );
    let records = read_topic(&dead_letters, 4, Duration::from_secs(15)).await?;
    let by_offset: BTreeMap<String, &Record> = records
        .iter()
        .map(|r| (header(r, DLQ_ORIGINAL_OFFSET).to_owned(), r))
        .collect();
    assert_eq!(
        by_offset.keys().collect::<Vec<_>>(),
        ["1", "2", "4", "5"],
        "{records:?}"
    );
    for record in by_offset.values() {
        assert_eq!(header(record, DLQ_REASON), "undecodable");
        assert_eq!(header(record, DLQ_ATTEMPTS), "0");
    }
    assert!(header(by_offset["1"], DLQ_ERROR).contains("does not decode as"));
    assert_eq!(by_offset["1"].payload, not_json.payload);
    assert!(header(by_offset["2"], DLQ_ERROR).contains("does not decode as"));
    assert_eq!(by_offset["2"].id(), Some(wrong_shape.id));
    assert!(header(by_offset["4"], DLQ_ERROR).contains("no ce_id"));
    assert_eq!(header(by_offset["4"], "ce_type"), STEP);
    assert!(header(by_offset["5"], DLQ_ERROR).contains("`ce_id` appears more than once"));

    // Each dead-lettering is a log line at ERROR naming the record and the error.
    let lines = logs.lines();
    for offset in [1, 2, 4, 5] {
        let line = lines
            .iter()
            .find(|l| {
                l.contains("dead-letter topic; the partition moves on")
                    && l.contains(&format!("offset={offset} "))
            })
            .unwrap_or_else(|| panic!("no dead-letter log line for offset {offset}: {lines:#?}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains(&format!("topic={topic}")), "{line}");
        assert!(line.contains("partition=0"), "{line}");
        assert!(line.contains("reason=undecodable"), "{line}");
        assert!(line.contains("error="), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")
            && l.contains("no handler for this event type")
            && l.contains("OrderCancelled")),
        "the skipped record is logged at debug: {lines:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn while_the_dead_letter_topic_cannot_be_written_the_partition_waits_and_nothing_is_skipped()
-> anyhow::Result<()> {
    let (db, topic) = fresh(1).await?;
    let dead_letters = create_topic(1).await?;
    let poison = publish_steps(&topic, 1, 3).await?[1].clone();
    let poison_id = poison.id;
    let group = group("dlq-outage");
    let consumer = |dead_letter_producer: outbox_kafka::ClientConfig| {
        builder(&db, &topic, &group).map(|builder| {
            builder
                .on(
                    STEP,
                    move |tx: &mut Transaction<'static, Postgres>,
                          step: Step,
                          received: &Received| {
                        if received.id == poison_id {
                            return Box::pin(async { Err("poison".into()) });
                        }
                        record_step(tx, step, received, "consumer")
                    },
                )
                .retry(quick_retry(2))
                .dead_letter_topic(&dead_letters)
                .dead_letter_producer(dead_letter_producer)
        })
    };

    // No broker behind the dead-letter producer: every send fails.
    let mut unreachable = outbox_kafka::ClientConfig::new();
    unreachable
        .set("bootstrap.servers", "127.0.0.1:9")
        .set("message.timeout.ms", "500");
    let blocked = Running::start(consumer(unreachable)?)?;
    wait_for_effects(&db.pool, 1, Duration::from_secs(60)).await?;
    let stats = wait_for_stats(
        &blocked.stats,
        Duration::from_secs(30),
        "failed sends",
        |s| s.dead_letter_errors >= 2,
    )
    .await?;
    assert_eq!(stats.dead_lettered, 0);
    let stats = blocked.stop().await?;
    let report = effects_report(&db.pool).await?;
    assert_eq!(
        report.rows, 1,
        "the partition did not move past the poison record: {stats:?}"
    );

    // With the dead-letter topic reachable again the record goes there, and the partition
    // continues from it: nothing was skipped.
    let mut reachable = kafka_config()?;
    reachable.set("message.timeout.ms", "10000");
    let healed = Running::start(consumer(reachable)?)?;
    wait_for_effects(&db.pool, 2, Duration::from_secs(60)).await?;
    let stats = healed.stop().await?;
    assert_eq!(stats.dead_lettered, 1);
    let records = read_topic(&dead_letters, 1, Duration::from_secs(15)).await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id(), Some(poison.id));
    let applied: Vec<i64> = sqlx::query_scalar("SELECT seq FROM effects ORDER BY n")
        .fetch_all(&db.pool)
        .await?;
    assert_eq!(applied, [1, 3]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_is_a_failed_attempt_and_unknown_types_can_be_dead_lettered()
-> anyhow::Result<()> {
    let (db, topic) = fresh(1).await?;
    let dead_letters = create_topic(1).await?;
    let first = event(&topic, STEP, 1)?;
    let unknown = event(&topic, "OrderCancelled", 0)?;
    let last = event(&topic, STEP, 2)?;
    publish(&[first.clone(), unknown.clone(), last]).await?;

    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = panicked.clone();
    let first_id = first.id;
    let consumer = Running::start(
        builder(&db, &topic, &group("panic"))?
            .on(
                STEP,
                move |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
                    let panics = received.id == first_id
                        && !once.swap(true, std::sync::atomic::Ordering::SeqCst);
                    assert!(!panics, "a handler bug, on the first attempt only");
                    record_step(tx, step, received, "consumer")
                },
            )
            .unknown_types(outbox_kafka::UnknownTypes::DeadLetter)
            .dead_letter_topic(&dead_letters),
    )?;
    wait_for_effects(&db.pool, 2, Duration::from_secs(60)).await?;
    let stats = consumer.stop().await?;
    assert!(panicked.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(stats.failures, 1, "the panic counted as one failed attempt");
    assert_eq!(
        stats.applied, 2,
        "then the record was applied, and the runner went on"
    );
    assert_eq!(stats.ignored, 0);
    assert_eq!(stats.dead_lettered, 1);

    let records = read_topic(&dead_letters, 1, Duration::from_secs(15)).await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id(), Some(unknown.id));
    assert_eq!(header(&records[0], DLQ_REASON), "unknown-type");
    assert!(header(&records[0], DLQ_ERROR).contains("OrderCancelled"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_swallows_a_failed_statement_or_ends_its_transaction_is_retried_not_counted_applied()
-> anyhow::Result<()> {
    let (db, topic) = fresh(1).await?;
    let dead_letters = create_topic(1).await?;
    let messages = publish_steps(&topic, 1, 3).await?;
    let (swallowing, rolling_back, poison) = (messages[0].id, messages[1].id, messages[2].id);

    let calls = Calls::default();
    let counted = calls.clone();
    let consumer = Running::start(
        builder(&db, &topic, &group("swallowed"))?
            .on(
                STEP,
                move |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
                    let call = counted.next(received.id);
                    let id = received.id;
                    Box::pin(async move {
                        record_step(tx, step, received, "consumer").await?;
                        if (id == swallowing && call == 1) || id == poison {
                            // A failing statement whose error the handler drops.
                            let ignored = sqlx::query("SELECT 1 / 0").execute(&mut **tx).await;
                            assert!(ignored.is_err(), "division by zero fails");
                        }
                        if id == rolling_back && call == 1 {
                            sqlx::query("ROLLBACK").execute(&mut **tx).await?;
                        }
                        Ok(())
                    })
                },
            )
            .retry(quick_retry(3))
            .dead_letter_topic(&dead_letters),
    )?;
    wait_for_effects(&db.pool, 2, Duration::from_secs(60)).await?;
    wait_for_stats(
        &consumer.stats,
        Duration::from_secs(30),
        "the poison dead-lettered",
        |s| s.dead_lettered == 1,
    )
    .await?;
    let stats = consumer.stop().await?;

    let report = effects_report(&db.pool).await?;
    assert_eq!(
        report.rows, 2,
        "each applied once, nothing lost: {report:?}"
    );
    let applied: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM effects ORDER BY n")
        .fetch_all(&db.pool)
        .await?;
    assert_eq!(applied, [swallowing, rolling_back]);
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE message_id = $1")
        .bind(poison)
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(inbox, 0, "the poison record is not remembered as applied");
    assert_eq!(stats.applied, 2, "{stats:?}");
    assert_eq!(stats.failures, 1 + 1 + 3, "{stats:?}");
    assert_eq!(
        (
            calls.of(swallowing),
            calls.of(rolling_back),
            calls.of(poison)
        ),
        (2, 2, 3)
    );

    let records = read_topic(&dead_letters, 1, Duration::from_secs(15)).await?;
    assert_eq!(records[0].id(), Some(poison));
    assert_eq!(header(&records[0], DLQ_REASON), "handler-failed");
    assert!(
        header(&records[0], DLQ_ERROR).contains("returned Ok regardless"),
        "{}",
        header(&records[0], DLQ_ERROR)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_handler_is_cut_off_by_the_timeout_and_its_partition_shows_as_stalled_meanwhile()
-> anyhow::Result<()> {
    let (db, topic) = fresh(1).await?;
    let messages = publish_steps(&topic, 1, 2).await?;
    let hung = messages[0].id;
    let calls = Calls::default();
    let counted = calls.clone();
    let timeout = Duration::from_secs(3);
    let consumer = Running::start(
        builder(&db, &topic, &group("hung"))?
            .on(
                STEP,
                move |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
                    let call = counted.next(received.id);
                    let id = received.id;
                    Box::pin(async move {
                        record_step(tx, step, received, "consumer").await?;
                        if id == hung && call == 1 {
                            // A remote call that never answers, with the transaction open.
                            std::future::pending::<()>().await;
                        }
                        Ok(())
                    })
                },
            )
            .handler_timeout(timeout),
    )?;
    // While it hangs, its partition shows the record in hand, for longer and longer. (Joining the
    // group takes a while; once fetched, the record is in hand for the 3 s of the timeout.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stalled = Vec::new();
    while tokio::time::Instant::now() < deadline {
        stalled = consumer.stats.in_hand();
        if stalled
            .first()
            .is_some_and(|r| r.elapsed >= Duration::from_millis(500))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = stalled.first().cloned();
    assert!(
        first
            .as_ref()
            .is_some_and(|r| r.topic == topic && r.partition == 0 && r.offset == 0),
        "the hung record is in hand: {stalled:?}"
    );
    wait_for_effects(&db.pool, 2, Duration::from_secs(60)).await?;
    let stats = consumer.stop().await?;
    assert_eq!(stats.timeouts, 1, "{stats:?}");
    assert_eq!(stats.failures, 1, "{stats:?}");
    assert_eq!(stats.applied, 2, "{stats:?}");
    let report = effects_report(&db.pool).await?;
    assert_eq!(
        report.rows, 2,
        "the cut-off attempt left nothing: {report:?}"
    );
    assert_eq!(calls.of(hung), 2);
    Ok(())
}
