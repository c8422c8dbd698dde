//! Lanes: ownership shared among the relays of one outbox, and only of that outbox.

use std::collections::BTreeSet;
use std::time::Duration;

use outbox_core::{Lease, Message};
use outbox_postgres::{Error, PgOutbox, PgRelayStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::support::{
    REBALANCE, claim, enqueue_committed, key_in_lane, lane_of, message, migrate, partition_of,
    rebalance_until, store,
};

const LANES: u32 = 8;

/// One message per lane, in lane order.
fn one_per_lane() -> Vec<Message> {
    (0..LANES as i32)
        .map(|lane| message(&key_in_lane("lane", lane, LANES), lane as u64))
        .collect()
}

/// The lanes of the messages a store claims.
async fn claimed_lanes(store: &PgRelayStore) -> BTreeSet<i32> {
    claim(store, 100)
        .await
        .iter()
        .map(|stored| {
            let key = stored.message.key.as_deref().expect("keyed message");
            lane_of(std::str::from_utf8(key).expect("utf-8 key"), LANES)
        })
        .collect()
}

fn evenly(count: usize) -> impl Fn(&[Vec<i32>]) -> bool {
    move |owned| {
        partition_of(owned, LANES)
            && owned
                .iter()
                .all(|lanes| lanes.len() <= LANES.div_ceil(count as u32) as usize)
    }
}

#[sqlx::test(migrations = false)]
async fn two_relays_split_the_lanes_and_claim_only_their_own(pool: PgPool) {
    migrate(&pool).await;
    let a = store(&pool, LANES);
    let b = store(&pool, LANES);

    let owned = rebalance_until(&[&a, &b], evenly(2)).await;
    assert_eq!(owned[0].len(), 4, "{owned:?}");
    assert_eq!(owned[1].len(), 4, "{owned:?}");
    assert!(
        owned[0].iter().all(|lane| !owned[1].contains(lane)),
        "{owned:?}"
    );

    enqueue_committed(&pool, &one_per_lane()).await;
    let by_a = claimed_lanes(&a).await;
    let by_b = claimed_lanes(&b).await;
    assert_eq!(
        by_a,
        owned[0].iter().copied().collect(),
        "A claims exactly its lanes"
    );
    assert_eq!(
        by_b,
        owned[1].iter().copied().collect(),
        "B claims exactly its lanes"
    );

    // When B stops, A takes every lane within a few claims.
    b.close().await;
    let mut claims = 0;
    while a.owned_lanes().await.len() < LANES as usize {
        claims += 1;
        assert!(claims <= 5, "A still owns only {:?}", a.owned_lanes().await);
        tokio::time::sleep(REBALANCE + Duration::from_millis(10)).await;
        claim(&a, 1).await;
    }
    assert_eq!(a.owned_lanes().await, (0..LANES as i32).collect::<Vec<_>>());
    assert_eq!(claimed_lanes(&a).await, (0..LANES as i32).collect());
    a.close().await;
}

#[sqlx::test(migrations = false)]
async fn every_lane_stays_owned_as_relays_come_and_go(pool: PgPool) {
    migrate(&pool).await;
    let a = store(&pool, LANES);
    let b = store(&pool, LANES);
    rebalance_until(&[&a, &b], evenly(2)).await;

    // B leaves: A takes over the lanes B had, next to the ones it already owned.
    b.close().await;
    rebalance_until(&[&a], evenly(1)).await;

    // Two more relays join, one after the other: A must give lanes back for real each time.
    let c = store(&pool, LANES);
    rebalance_until(&[&a, &c], evenly(2)).await;
    let d = store(&pool, LANES);
    let owned = rebalance_until(&[&a, &c, &d], evenly(3)).await;
    assert!(owned.iter().all(|lanes| !lanes.is_empty()), "{owned:?}");

    // Every lane's message is claimed by exactly one relay.
    enqueue_committed(&pool, &one_per_lane()).await;
    let mut seen = Vec::new();
    for relay in [&a, &c, &d] {
        seen.extend(claimed_lanes(relay).await);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..LANES as i32).collect::<Vec<_>>());
    for relay in [&a, &c, &d] {
        relay.close().await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_relay_with_another_lane_count_refuses_to_start(pool: PgPool) {
    migrate(&pool).await;
    enqueue_committed(&pool, &[message("k", 1)]).await;
    let eight = store(&pool, 8);
    assert_eq!(claim(&eight, 10).await.len(), 1);

    let sixteen = store(&pool, 16);
    for _ in 0..2 {
        let err = crate::support::try_claim(&sixteen, 10)
            .await
            .expect_err("lane counts differ");
        assert!(
            matches!(
                err,
                Error::LaneCountMismatch {
                    ours: 16,
                    theirs: 8
                }
            ),
            "{err:?}"
        );
        assert!(sixteen.owned_lanes().await.is_empty());
    }
    // The refused relay holds nothing: the running one keeps every lane.
    tokio::time::sleep(REBALANCE + Duration::from_millis(10)).await;
    assert_eq!(claim(&eight, 10).await.len(), 1);
    assert_eq!(eight.owned_lanes().await.len(), 8);

    // Once the other relay is gone, the new lane count is accepted.
    eight.close().await;
    assert_eq!(claim(&sixteen, 10).await.len(), 1);
    assert_eq!(sixteen.owned_lanes().await.len(), 16);
    sixteen.close().await;
}

/// A second database on the same server, with the default outbox tables, dropped at the end.
struct OtherDatabase {
    name: String,
    pool: PgPool,
}

impl OtherDatabase {
    async fn create(pool: &PgPool) -> Self {
        let name = format!("outbox_other_{}", Uuid::now_v7().simple());
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(pool)
            .await
            .expect("create a second database");
        let options = pool.connect_options().as_ref().clone().database(&name);
        let other = PgPoolOptions::new()
            .max_connections(3)
            .connect_with(options)
            .await
            .expect("connect to the second database");
        migrate(&other).await;
        Self { name, pool: other }
    }

    async fn drop_with(self, pool: &PgPool) {
        self.pool.close().await;
        sqlx::raw_sql(&format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name))
            .execute(pool)
            .await
            .expect("drop the second database");
    }
}

/// What a relay of this database saw while another database had its own relay and writer.
#[derive(Debug)]
struct NextToAnotherDatabase {
    foreign_locks: i64,
    claimed: Vec<Uuid>,
    owned: usize,
}

async fn observe_next_to(
    pool: &PgPool,
    other: &PgPool,
    foreign: &PgRelayStore,
    ours: &PgRelayStore,
    local: &Message,
) -> Result<NextToAnotherDatabase, String> {
    // In the other database: a relay with another lane count, and an open enqueuing transaction.
    crate::support::try_claim(foreign, 10)
        .await
        .map_err(|e| format!("the other database's relay: {e:?}"))?;
    let mut foreign_writer = other.begin().await.map_err(|e| format!("begin: {e}"))?;
    PgOutbox::new()
        .enqueue(&mut foreign_writer, &message("k", 0))
        .await
        .map_err(|e| format!("enqueue in the other database: {e:?}"))?;
    let foreign_locks: i64 = sqlx::query(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname <> current_database()",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| format!("read pg_locks: {e}"))?
    .get(0);

    // Here: the only relay of this database.
    enqueue_committed(pool, std::slice::from_ref(local)).await;
    let batch = crate::support::try_claim(ours, 10)
        .await
        .map_err(|e| format!("our relay: {e:?}"))?;
    let owned = ours.owned_lanes().await.len();
    foreign_writer
        .rollback()
        .await
        .map_err(|e| format!("rollback: {e}"))?;
    Ok(NextToAnotherDatabase {
        foreign_locks,
        claimed: batch.iter().map(|stored| stored.message.id).collect(),
        owned,
    })
}

#[sqlx::test(migrations = false)]
async fn relays_and_writers_of_another_database_are_ignored(pool: PgPool) {
    migrate(&pool).await;
    let other = OtherDatabase::create(&pool).await;
    let foreign = store(&other.pool, 16);
    let ours = store(&pool, LANES);
    let local = message("k", 1);
    let seen = observe_next_to(&pool, &other.pool, &foreign, &ours, &local).await;
    // Clean up before asserting, so that a failure leaves no database behind.
    foreign.close().await;
    drop(foreign);
    ours.close().await;
    other.drop_with(&pool).await;

    let seen = seen.expect("a relay of another database is not counted");
    assert!(
        seen.foreign_locks > 0,
        "the other database's locks are visible from here"
    );
    assert_eq!(
        seen.claimed,
        vec![local.id],
        "a writer of another database does not hold the horizon back"
    );
    assert_eq!(seen.owned, LANES as usize, "the only relay owns every lane");
}

#[sqlx::test(migrations = false)]
async fn relays_with_different_lane_counts_starting_at_once_never_both_hold_lanes(pool: PgPool) {
    migrate(&pool).await;
    enqueue_committed(&pool, &[message("k", 1)]).await;
    for round in 0..20 {
        let (eight, sixteen) = (store(&pool, 8), store(&pool, 16));
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let claims = [&eight, &sixteen].map(|relay| {
            let start = start.clone();
            async move {
                start.wait().await;
                crate::support::try_claim(relay, 10).await
            }
        });
        let [a, b] = claims;
        let (a, b) = tokio::join!(a, b);
        let holding = [
            (a.is_ok(), eight.owned_lanes().await.len()),
            (b.is_ok(), sixteen.owned_lanes().await.len()),
        ];
        assert!(
            holding
                .iter()
                .filter(|(ok, lanes)| *ok || *lanes > 0)
                .count()
                <= 1,
            "round {round}: both lane counts were accepted at once: {holding:?}"
        );
        for (result, expected) in [(a, 8), (b, 16)] {
            if let Err(error) = result {
                assert!(
                    matches!(error, Error::LaneCountMismatch { ours, .. } if ours == expected),
                    "round {round}: {error:?}"
                );
            }
        }
        eight.close().await;
        sixteen.close().await;
    }
}
