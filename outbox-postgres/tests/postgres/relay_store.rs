//! Claim and settle: published, retried and dead-lettered messages, fencing, corrupt rows, and the
//! relay engine end to end.

use std::time::Duration;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use outbox_core::testing::MemoryPublisher;
use outbox_core::{
    CancellationToken, ClaimRequest, DeadLetter, LaneStore, Lease, Message, PublishErrorKind,
    Relay, RelayConfig, Retry, Settlement, WakeUps,
};
use outbox_postgres::{PgRelayStore, PgRelayStoreConfig};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{
    Claimed, DeadRow, claim, count, dead_letters, enqueue_committed, ids, key_in_lane, message,
    message_to, migrate, outbox_ids, outbox_seqs, publish, retry_state, seqs, store, try_claim,
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
async fn a_retry_holds_back_its_topic_in_its_lane_until_it_is_due_on_the_database_clock(
    pool: PgPool,
) {
    migrate(&pool).await;
    let key = key_in_lane("held", 0, LANES);
    let other_key = key_in_lane("free", 1, LANES);
    let head = message(&key, 1);
    let follower = message(&key, 2);
    let elsewhere = message(&other_key, 3);
    let other_topic = message_to("payments", &key, 4);
    enqueue_committed(
        &pool,
        &[
            head.clone(),
            follower.clone(),
            elsewhere.clone(),
            other_topic.clone(),
        ],
    )
    .await;
    let relay = store(&pool, LANES);

    let batch = claim(&relay, 10).await;
    assert_eq!(
        ids(&batch),
        vec![head.id, follower.id, elsewhere.id, other_topic.id]
    );
    let head_seq = batch[0].seq;

    // The head failed; the rest of its window was not settled (the engine would have offered the
    // follower again too).
    let settlement = Settlement {
        retries: vec![Retry {
            seq: head_seq,
            attempts: 1,
            delay: Duration::from_millis(1500),
            error: "Transient: broker unreachable".into(),
        }],
        ..batch.settlement()
    };
    let before: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .expect("the database's clock");
    assert_eq!(relay.settle(&settlement).await.expect("settle").len(), 1);

    let state = retry_state(&pool, head_seq).await;
    assert_eq!(state.attempts, 1);
    assert_eq!(
        state.last_error.as_deref(),
        Some("Transient: broker unreachable")
    );
    let stored = state.not_before.expect("not_before is set");
    let waited = (stored - before).num_milliseconds();
    assert!(
        (1500..2500).contains(&waited),
        "not_before is 1.5 s after the database's now(), got {waited} ms"
    );

    // While the head waits, nothing of its topic in its lane is offered, not even the follower; the
    // lane's other topic and the other lanes are.
    let waiting = claim(&relay, 10).await;
    assert_eq!(ids(&waiting), vec![elsewhere.id, other_topic.id]);
    assert_eq!(publish(&relay, &waiting).await, 2);
    assert!(claim(&relay, 10).await.is_empty());

    // Once due, the head comes first again, with its attempt count, then the follower.
    let mut again = claim(&relay, 10).await;
    while again.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        again = claim(&relay, 10).await;
    }
    assert_eq!(ids(&again), vec![head.id, follower.id]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[1].attempts, 0);
    relay.close().await;
}

/// One claim request, as the engine makes it.
async fn claim_windows(
    relay: &PgRelayStore,
    busy: &[u32],
    window: usize,
    phases: usize,
    max_bytes: u64,
) -> Vec<(u32, Vec<Uuid>)> {
    let busy: BTreeSet<u32> = busy.iter().copied().collect();
    let windows = relay
        .claim(ClaimRequest {
            busy: &busy,
            max_messages: 100,
            max_bytes,
            window,
            phases,
        })
        .await
        .expect("claim");
    let mut lanes: Vec<(u32, Vec<Uuid>)> = windows
        .into_iter()
        .map(|w| (w.lane, ids(&w.messages)))
        .collect();
    lanes.sort();
    lanes
}

#[sqlx::test(migrations = false)]
async fn a_claim_takes_a_window_of_each_idle_lane_and_nothing_of_busy_ones(pool: PgPool) {
    migrate(&pool).await;
    let (a, b, c) = (
        key_in_lane("a", 0, LANES),
        key_in_lane("b", 1, LANES),
        key_in_lane("c", 2, LANES),
    );
    let messages: Vec<Message> = (0..12)
        .map(|n| message([&a, &b, &c][n % 3], n as u64))
        .collect();
    enqueue_committed(&pool, &messages).await;
    let relay = store(&pool, LANES);
    let of = |lane: usize, take: usize| -> Vec<Uuid> {
        messages
            .iter()
            .skip(lane)
            .step_by(3)
            .take(take)
            .map(|m| m.id)
            .collect()
    };

    // Lane 1 is busy: windows of two messages from lanes 0 and 2, their oldest first.
    assert_eq!(
        claim_windows(&relay, &[1], 2, 1, u64::MAX).await,
        vec![(0, of(0, 2)), (2, of(2, 2))]
    );
    // Four phases of eight owned lanes: at most two lanes, the ones whose oldest message is oldest.
    assert_eq!(
        claim_windows(&relay, &[], 3, 4, u64::MAX).await,
        vec![(0, of(0, 3)), (1, of(1, 3))]
    );
    // A byte budget smaller than one message still takes the oldest message, and only it.
    assert_eq!(
        claim_windows(&relay, &[], 10, 1, 1).await,
        vec![(0, of(0, 1))]
    );
    relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_statement_stuck_on_a_lock_gives_up_within_the_lease_and_keeps_the_session(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..2).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let config = PgRelayStoreConfig::default()
        .lanes(LANES)
        .expect("valid lanes")
        .lease(Duration::from_secs(2))
        .expect("valid lease");
    let relay = PgRelayStore::new(pool.clone(), config);
    let batch = claim(&relay, 10).await;
    let owned = relay.owned_lanes().await;
    assert_eq!(owned.len(), LANES as usize);

    // Somebody holds a row lock on the first message, as a long admin transaction would.
    let mut admin = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM outbox WHERE seq = $1 FOR UPDATE")
        .bind(batch[0].seq)
        .execute(&mut *admin)
        .await
        .expect("lock the row");
    let started = std::time::Instant::now();
    let error = relay
        .settle(&Settlement {
            published: seqs(&batch),
            ..batch.settlement()
        })
        .await
        .expect_err("the delete waits for the lock and gives up");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1600),
        "gave up after {waited:?}, not well inside the 2 s lease"
    );
    assert!(
        format!("{error:?}").contains("55P03"),
        "a lock timeout: {error:?}"
    );
    admin.rollback().await.expect("rollback");

    // Nothing was written, and the session kept its lanes: the same messages are claimed again
    // on it and settle now.
    assert_eq!(count(&pool, "outbox").await, 2);
    assert_eq!(relay.owned_lanes().await, owned);
    let again = claim(&relay, 10).await;
    assert_eq!(again.token, batch.token, "the same session");
    assert_eq!(seqs(&again), seqs(&batch));
    assert_eq!(publish(&relay, &again).await, 2);
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
            delay: Duration::from_secs(3600),
            error: "Transient: timed out".into(),
        }],
        token: batch.token,
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
    assert_eq!(relay.settle(&settlement).await.expect("settle").len(), 4);

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

/// Ends the one session of the relay program on this database, as a failover or an admin would.
async fn end_relay_session(pool: &PgPool) {
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'outbox-relay' AND datname = current_database()",
    )
    .fetch_all(pool)
    .await
    .expect("terminate the relay session");
    assert_eq!(terminated, vec![true], "exactly the relay's session");
}

#[sqlx::test(migrations = false)]
async fn a_settlement_after_the_session_was_killed_changes_nothing(pool: PgPool) {
    migrate(&pool).await;
    let messages: Vec<_> = (0..3).map(|n| message("k", n)).collect();
    enqueue_committed(&pool, &messages).await;
    let relay = store(&pool, LANES);
    let batch = claim(&relay, 10).await;
    assert_eq!(batch.len(), 3);

    end_relay_session(&pool).await;

    let dead_letter = Settlement {
        dead_letters: vec![DeadLetter {
            seq: batch[1].seq,
            attempts: 1,
            error: "x".into(),
        }],
        published: vec![batch[0].seq, batch[2].seq],
        ..batch.settlement()
    };
    match relay.settle(&dead_letter).await {
        Ok(changed) => assert!(changed.is_empty(), "{changed:?}"),
        Err(error) => assert!(error.is_transient(), "{error:?}"),
    }
    assert_eq!(outbox_ids(&pool).await, ids_of(&messages));
    assert!(dead_letters(&pool).await.is_empty());

    // The relay reconnects and is offered the same messages again.
    let mut again = Claimed::default();
    for _ in 0..3 {
        match try_claim(&relay, 10).await {
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
    // Written by plain SQL: a user header forging the id consumers deduplicate on.
    let forged = format!(r#"{{"ce_id": "{}"}}"#, good_before.id);
    let forged_id = insert_raw(&pool, "orders", &forged).await;
    let good_after = message("k", 2);
    enqueue_committed(&pool, std::slice::from_ref(&good_after)).await;

    let relay = store(&pool, LANES);
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![good_before.id, good_after.id]);

    let dead = dead_letters(&pool).await;
    assert_eq!(
        dead.iter().map(|d| d.seq).collect::<Vec<_>>(),
        vec![bad_headers, bad_header_value, bad_topic, forged_id]
    );
    for row in &dead {
        assert!(row.error.contains("corrupt row"), "{row:?}");
        assert_eq!(row.attempts, 0);
    }
    assert!(dead[0].error.contains("not a JSON object"), "{:?}", dead[0]);
    assert!(dead[1].error.contains("`a`"), "{:?}", dead[1]);
    assert!(dead[2].error.contains("unroutable"), "{:?}", dead[2]);
    assert_eq!(dead[2].topic, "not a topic!");
    assert!(
        dead[3].error.contains("`ce_id` is reserved"),
        "{:?}",
        dead[3]
    );
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
    })
    .with_send_timeout(Duration::from_secs(1));
    let config = RelayConfig::default()
        .batch_size(7)
        .expect("valid batch size")
        .poll_interval(Duration::from_millis(20))
        .expect("valid poll interval");
    let relay = Relay::new(store(&pool, LANES), publisher.clone(), config).expect("valid relay");

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

#[sqlx::test(migrations = false)]
async fn a_relay_whose_pool_is_all_taken_by_the_listener_still_opens_a_new_session(pool: PgPool) {
    migrate(&pool).await;
    enqueue_committed(&pool, &[message("k", 1)]).await;
    // One pooled connection, which the wake-up listener keeps once it listens.
    let single = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("a pool of one");
    let relay = PgRelayStore::new(single, PgRelayStoreConfig::default());
    assert_eq!(claim(&relay, 10).await.len(), 1);
    relay.wait_for_work(Duration::from_millis(10)).await;
    end_relay_session(&pool).await;
    enqueue_committed(&pool, &[message("k", 2)]).await;
    // The lost session fails one claim; the next one opens a new session without the pool.
    let _ = crate::support::try_claim(&relay, 10).await;
    let reopened = tokio::time::timeout(
        Duration::from_secs(10),
        crate::support::try_claim(&relay, 10),
    )
    .await
    .expect("a new session within 10 s, not after the pool's acquire timeout")
    .expect("a new session");
    assert!(
        !reopened.is_empty(),
        "the waiting messages are claimed again"
    );
    relay.close().await;
}
