//! Claim and settle: published, retried and dead-lettered messages, fencing, corrupt rows, and the
//! relay engine end to end.

use std::time::Duration;

use chrono::Utc;
use outbox_core::testing::MemoryPublisher;
use outbox_core::{
    CancellationToken, DeadLetter, Message, PublishErrorKind, Relay, RelayConfig, RelayStore,
    Retry, Settlement,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{
    DeadRow, claim, count, dead_letters, enqueue_committed, ids, key_in_lane, message, migrate,
    outbox_ids, outbox_seqs, publish, retry_state, seqs, store,
};

const LANES: u32 = 8;

#[sqlx::test(migrations = false)]
async fn published_messages_are_deleted_and_only_those(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..5).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let relay = store(&pool, LANES);

    let batch = claim(&relay, 3).await;
    assert_eq!(ids(&batch), ids_of(&messages[..3]));
    assert_eq!(publish(&relay, &batch).await, 3);
    assert_eq!(outbox_ids(&pool).await, ids_of(&messages[3..]));

    // Settling the same seqs again changes nothing: they are gone.
    assert_eq!(publish(&relay, &batch).await, 0);
    assert_eq!(count(&pool, "outbox").await, 2);

    let rest = claim(&relay, 10).await;
    assert_eq!(ids(&rest), ids_of(&messages[3..]));
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_retry_holds_back_its_whole_lane_until_it_is_due(pool: PgPool) {
    migrate(&pool).await;
    let key = key_in_lane("held", 0, LANES);
    let other_key = key_in_lane("free", 1, LANES);
    let head = message(&key, 1);
    let follower = message(&key, 2);
    let elsewhere = message(&other_key, 3);
    enqueue_committed(&pool, &[head.clone(), follower.clone(), elsewhere.clone()]).await;
    let relay = store(&pool, LANES);

    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![head.id, follower.id, elsewhere.id]);
    let head_seq = batch[0].seq;

    // The head failed; its follower and the message of the other lane were not settled (the engine
    // would have offered the follower again too).
    let not_before = Utc::now() + chrono::Duration::milliseconds(1500);
    let settlement = Settlement {
        retries: vec![Retry {
            seq: head_seq,
            attempts: 1,
            not_before,
            error: "Transient: broker unreachable".into(),
        }],
        ..Settlement::default()
    };
    assert_eq!(relay.settle(&settlement).await.expect("settle"), 1);

    let state = retry_state(&pool, head_seq).await;
    assert_eq!(state.attempts, 1);
    assert_eq!(
        state.last_error.as_deref(),
        Some("Transient: broker unreachable")
    );
    let stored = state.not_before.expect("not_before is set");
    assert!(
        (stored - not_before).num_milliseconds().abs() <= 1,
        "not_before {not_before} stored as {stored}"
    );

    // While the head waits, nothing of its lane is offered, not even the follower; other lanes are.
    let waiting = claim(&relay, 10).await;
    assert_eq!(ids(&waiting), vec![elsewhere.id]);
    assert_eq!(publish(&relay, &waiting).await, 1);
    assert!(claim(&relay, 10).await.is_empty());

    // Once due, the head comes first again, with its attempt count, then the follower.
    let due = not_before + chrono::Duration::milliseconds(50);
    let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    tokio::time::sleep(wait).await;
    let again = claim(&relay, 10).await;
    assert_eq!(ids(&again), vec![head.id, follower.id]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[1].attempts, 0);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn claiming_ahead_takes_what_follows_the_in_flight_batch_and_skips_lanes_with_a_retry(
    pool: PgPool,
) {
    migrate(&pool).await;
    let retried_key = key_in_lane("retried", 0, LANES);
    let free_key = key_in_lane("free", 1, LANES);
    let head = message(&retried_key, 1);
    enqueue_committed(&pool, std::slice::from_ref(&head)).await;
    let relay = store(&pool, LANES);
    let first = claim(&relay, 10).await;
    assert_eq!(ids(&first), vec![head.id]);
    // The head failed once and is already due again: a plain claim would offer it.
    let settlement = Settlement {
        retries: vec![Retry {
            seq: first[0].seq,
            attempts: 1,
            not_before: Utc::now(),
            error: "Transient".into(),
        }],
        ..Settlement::default()
    };
    assert_eq!(relay.settle(&settlement).await.expect("settle"), 1);

    let in_flight: Vec<_> = (2..5).map(|n| message(&free_key, n)).collect();
    let following: Vec<_> = (5..8).map(|n| message(&free_key, n)).collect();
    let behind_retry = message(&retried_key, 8);
    enqueue_committed(&pool, &in_flight).await;
    enqueue_committed(&pool, &following).await;
    enqueue_committed(&pool, std::slice::from_ref(&behind_retry)).await;

    let batch = relay.claim(3).await.expect("claim");
    assert_eq!(ids(&batch), vec![head.id, in_flight[0].id, in_flight[1].id]);
    let seqs: Vec<i64> = batch.iter().map(|m| m.seq).collect();
    let ahead = relay.claim_after(10, &seqs).await.expect("claim ahead");
    assert_eq!(
        ids(&ahead),
        vec![
            in_flight[2].id,
            following[0].id,
            following[1].id,
            following[2].id
        ],
        "only what follows the in-flight batch, and nothing of the lane whose head is being retried"
    );
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn claiming_ahead_resumes_a_lane_it_skipped_from_its_head(pool: PgPool) {
    migrate(&pool).await;
    let a = key_in_lane("a", 0, LANES);
    let b = key_in_lane("b", 1, LANES);
    let (a1, b1, b2, a2, b3, b4) = (
        message(&a, 1),
        message(&b, 2),
        message(&b, 3),
        message(&a, 4),
        message(&b, 5),
        message(&b, 6),
    );
    enqueue_committed(
        &pool,
        &[
            a1.clone(),
            b1.clone(),
            b2.clone(),
            a2.clone(),
            b3.clone(),
            b4.clone(),
        ],
    )
    .await;
    let relay = store(&pool, LANES);
    // a1 failed once and is due again.
    let first = claim(&relay, 1).await;
    let settlement = Settlement {
        retries: vec![Retry {
            seq: first[0].seq,
            attempts: 1,
            not_before: Utc::now(),
            error: "Unavailable".into(),
        }],
        ..Settlement::default()
    };
    assert_eq!(relay.settle(&settlement).await.expect("settle"), 1);

    let batch = relay.claim(2).await.expect("claim");
    assert_eq!(ids(&batch), vec![a1.id, b1.id]);
    let in_flight: Vec<i64> = batch.iter().map(|m| m.seq).collect();
    let ahead = relay
        .claim_after(10, &in_flight)
        .await
        .expect("claim ahead");
    assert_eq!(
        ids(&ahead),
        vec![b2.id, b3.id, b4.id],
        "lane a waits: its head is being retried"
    );
    assert_eq!(publish(&relay, &batch).await, 2);

    // Lane a's retry went through; claiming ahead of b2..b4 must resume lane a at a2, although a2
    // is numbered below b4.
    let in_flight: Vec<i64> = ahead.iter().map(|m| m.seq).collect();
    let next = relay
        .claim_after(10, &in_flight)
        .await
        .expect("claim ahead");
    assert_eq!(ids(&next), vec![a2.id]);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn dead_letters_move_to_their_table_with_error_and_attempts(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..4).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let relay = store(&pool, LANES);
    let batch = claim(&relay, 10).await;
    let s = seqs(&batch);

    // One settlement with every outcome: written together.
    let settlement = Settlement {
        published: vec![s[0]],
        retries: vec![Retry {
            seq: s[3],
            attempts: 2,
            not_before: Utc::now() + chrono::Duration::hours(1),
            error: "Transient: timed out".into(),
        }],
        dead_letters: vec![
            DeadLetter {
                seq: s[1],
                attempts: 1,
                error: "MessageTooLarge: record is 2 MB".into(),
            },
            DeadLetter {
                seq: s[2],
                attempts: 10,
                error: "Transient: gave up".into(),
            },
        ],
    };
    assert_eq!(relay.settle(&settlement).await.expect("settle"), 4);

    assert_eq!(outbox_seqs(&pool).await, vec![s[3]]);
    assert_eq!(
        dead_letters(&pool).await,
        vec![
            DeadRow {
                seq: s[1],
                id: messages[1].id,
                topic: "orders".into(),
                attempts: 1,
                error: "MessageTooLarge: record is 2 MB".into(),
            },
            DeadRow {
                seq: s[2],
                id: messages[2].id,
                topic: "orders".into(),
                attempts: 10,
                error: "Transient: gave up".into(),
            },
        ]
    );
    // The dead letter keeps the whole message.
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM outbox_dead_letters WHERE seq = $1")
            .bind(s[1])
            .fetch_one(&pool)
            .await
            .expect("read the dead letter");
    assert_eq!(payload, messages[1].payload);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_settlement_after_the_session_was_killed_changes_nothing(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..3).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let relay = store(&pool, LANES);
    let batch = claim(&relay, 10).await;
    assert_eq!(batch.len(), 3);

    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'outbox-relay' AND datname = current_database()",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate the relay session");
    assert_eq!(terminated, vec![true], "exactly the relay's session");

    let dead_letter = Settlement {
        dead_letters: vec![DeadLetter {
            seq: batch[1].seq,
            attempts: 1,
            error: "x".into(),
        }],
        published: vec![batch[0].seq, batch[2].seq],
        ..Settlement::default()
    };
    match relay.settle(&dead_letter).await {
        Ok(changed) => assert_eq!(changed, 0),
        Err(error) => assert!(error.is_transient(), "{error:?}"),
    }
    assert_eq!(outbox_ids(&pool).await, ids_of(&messages));
    assert!(dead_letters(&pool).await.is_empty());

    // The relay reconnects and is offered the same messages again.
    let mut again = Vec::new();
    for _ in 0..3 {
        match relay.claim(10).await {
            Ok(batch) if !batch.is_empty() => {
                again = batch;
                break;
            }
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(seqs(&again), seqs(&batch));
    assert_eq!(publish(&relay, &again).await, 3);
    assert_eq!(count(&pool, "outbox").await, 0);
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_closed_store_settles_nothing(pool: PgPool) {
    migrate(&pool).await;
    enqueue_committed(&pool, &[message("k", 1)]).await;
    let relay = store(&pool, LANES);
    let batch = claim(&relay, 10).await;
    assert_eq!(batch.len(), 1);
    relay.close().await;
    assert!(relay.owned_lanes().await.is_empty());
    assert_eq!(publish(&relay, &batch).await, 0);
    assert_eq!(count(&pool, "outbox").await, 1);
}

async fn insert_raw(pool: &PgPool, topic: &str, headers: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (id, slot, topic, content_type, payload, headers, created_at)
         VALUES ($1, 0, $2, 'application/json', '\\x7b7d', $3::jsonb, now())
         RETURNING seq",
    )
    .bind(Uuid::now_v7())
    .bind(topic)
    .bind(headers)
    .fetch_one(pool)
    .await
    .expect("insert a row by hand")
}

#[sqlx::test(migrations = false)]
async fn corrupt_rows_are_dead_lettered_and_the_rest_is_claimed(pool: PgPool) {
    migrate(&pool).await;
    let good_before = message("k", 1);
    enqueue_committed(&pool, std::slice::from_ref(&good_before)).await;
    let bad_headers = insert_raw(&pool, "orders", "[1,2]").await;
    let bad_header_value = insert_raw(&pool, "orders", r#"{"a": 1}"#).await;
    let bad_topic = insert_raw(&pool, "not a topic!", "{}").await;
    let good_after = message("k", 2);
    enqueue_committed(&pool, std::slice::from_ref(&good_after)).await;

    let relay = store(&pool, LANES);
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![good_before.id, good_after.id]);

    let dead = dead_letters(&pool).await;
    assert_eq!(
        dead.iter().map(|d| d.seq).collect::<Vec<_>>(),
        vec![bad_headers, bad_header_value, bad_topic]
    );
    for row in &dead {
        assert!(row.error.contains("corrupt row"), "{row:?}");
        assert_eq!(row.attempts, 0);
    }
    assert!(dead[0].error.contains("not a JSON object"), "{:?}", dead[0]);
    assert!(dead[1].error.contains("`a`"), "{:?}", dead[1]);
    assert!(dead[2].error.contains("unroutable"), "{:?}", dead[2]);
    assert_eq!(dead[2].topic, "not a topic!");
    assert_eq!(outbox_ids(&pool).await, vec![good_before.id, good_after.id]);

    assert_eq!(publish(&relay, &batch).await, 2);
    assert!(claim(&relay, 10).await.is_empty());
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn the_relay_engine_publishes_everything_in_order_over_postgres(pool: PgPool) {
    migrate(&pool).await;
    let keys = ["a", "b", "c"];
    let messages: Vec<_> = (0..60_u64)
        .map(|n| message(keys[(n % 3) as usize], n))
        .collect();
    enqueue_committed(&pool, &messages).await;
    let poison = messages[20].id;
    let publisher = MemoryPublisher::failing(move |stored| {
        (stored.message.id == poison).then_some(PublishErrorKind::Rejected)
    });
    let config = RelayConfig::default()
        .batch_size(7)
        .expect("valid batch size")
        .poll_interval(Duration::from_millis(20))
        .expect("valid poll interval");
    let relay = Relay::new(store(&pool, LANES), publisher.clone(), config);

    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let watch = async {
        while count(&pool, "outbox").await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stopper.cancel();
    };
    let (stats, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(relay.run(shutdown), watch)
    })
    .await
    .expect("the relay emptied the outbox in time");

    assert_eq!(stats.published, 59);
    assert_eq!(stats.dead_lettered, 1);
    // Each key's messages were published once each, in enqueue order.
    let published = publisher.published();
    for key in keys {
        let of_key = |m: &&Message| m.key.as_deref() == Some(key.as_bytes());
        let expected: Vec<Uuid> = messages
            .iter()
            .filter(of_key)
            .map(|m| m.id)
            .filter(|id| *id != poison)
            .collect();
        let got: Vec<Uuid> = published.iter().filter(of_key).map(|m| m.id).collect();
        assert_eq!(got, expected, "order of key {key}");
    }
    assert_eq!(published.len(), 59);
    let dead = dead_letters(&pool).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, poison);
    assert!(dead[0].error.contains("Rejected"), "{:?}", dead[0]);
}

fn ids_of(messages: &[Message]) -> Vec<Uuid> {
    messages.iter().map(|m| m.id).collect()
}
