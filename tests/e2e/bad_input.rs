//! Bad input: unreachable services, invalid settings, a message the broker cannot take.

use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_tests::{Fixture, InProcessRelay, TestDb, read_topic, run_relay_program, services};

use crate::{quick_config, relay_program};

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_named_and_the_relay_exits_non_zero_after_the_configured_wait()
-> anyhow::Result<()> {
    let started = Instant::now();
    let (status, stderr) = run_relay_program(
        relay_program(),
        &[
            "run",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/nowhere",
            "--brokers",
            "127.0.0.1:9",
            "--connect-timeout",
            "2s",
        ],
    )
    .await?;
    let took = started.elapsed();
    assert!(!status.success(), "exit status {status}");
    assert!(stderr.contains("could not reach PostgreSQL"), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:1"),
        "names the address: {stderr}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "gave up after {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_is_named_and_the_relay_exits_non_zero() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let (status, stderr) = run_relay_program(
        relay_program(),
        &[
            "run",
            "--database-url",
            &db.url,
            "--brokers",
            "127.0.0.1:9",
            "--connect-timeout",
            "2s",
        ],
    )
    .await?;
    assert!(!status.success(), "exit status {status}");
    assert!(stderr.contains("Kafka is not reachable"), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:9"),
        "names the brokers: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_settings_get_a_clear_error() -> anyhow::Result<()> {
    let brokers = services::brokers()?;
    let cases: [(&[&str], &str); 5] = [
        (
            &["run", "--database-url", "not a url", "--brokers", &brokers],
            "invalid --database-url",
        ),
        (
            &[
                "run",
                "--database-url",
                "postgres://u:secret@127.0.0.1:1/x",
                "--brokers",
                &brokers,
                "--lanes",
                "3",
                "--connect-timeout",
                "1s",
            ],
            "invalid --lanes",
        ),
        (
            &[
                "run",
                "--database-url",
                "postgres://127.0.0.1/x",
                "--brokers",
                &brokers,
                "--batch-size",
                "0",
            ],
            "invalid --batch-size",
        ),
        (
            &[
                "run",
                "--database-url",
                "postgres://127.0.0.1/x",
                "--brokers",
                &brokers,
                "--poll-interval",
                "soon",
            ],
            "invalid --poll-interval `soon`",
        ),
        (
            &[
                "run",
                "--database-url",
                "postgres://127.0.0.1/x",
                "--brokers",
                &brokers,
                "-X",
                "acks=1",
            ],
            "acks=1",
        ),
    ];
    for (args, expected) in cases {
        let (status, stderr) = run_relay_program(relay_program(), args).await?;
        assert!(!status.success(), "{args:?} exited {status}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in: {stderr}"
        );
        assert!(
            !stderr.contains("secret"),
            "passwords are never printed: {stderr}"
        );
    }
    let (status, stderr) =
        run_relay_program(relay_program(), &["run", "--brokers", &brokers]).await?;
    assert!(!status.success());
    assert!(
        stderr.contains("--database-url"),
        "a missing setting is named: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_creates_the_tables_once() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    sqlx::raw_sql("DROP TABLE outbox, outbox_dead_letters, inbox, outbox_migrations; DROP SEQUENCE IF EXISTS outbox_seq")
        .execute(&db.pool)
        .await?;
    let (status, stderr) =
        run_relay_program(relay_program(), &["migrate", "--database-url", &db.url]).await?;
    assert!(status.success(), "{stderr}");
    let (status, stderr) =
        run_relay_program(relay_program(), &["migrate", "--database-url", &db.url]).await?;
    assert!(status.success(), "{stderr}");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM outbox_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(db.outbox_count().await?, 0, "the outbox table exists");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_larger_than_the_broker_accepts_is_parked_with_its_error_and_the_others_flow()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(1).await?;
    let mut messages = Vec::new();
    for n in 0..5 {
        messages.push(Message::builder(&topic).key("same-key").json(&n)?);
    }
    let huge = Message::builder(&topic)
        .key("same-key")
        .bytes(vec![b'x'; 2_000_000], "application/octet-stream")?;
    messages.insert(2, huge.clone());
    // The default limit (Kafka's default record size) refuses it in the business transaction.
    let refused = db
        .enqueue_committed(&messages)
        .await
        .expect_err("above 1 MiB");
    assert!(
        refused.to_string().contains("above the outbox's limit"),
        "{refused}"
    );
    // A writer whose limit is above what the broker accepts gets it stored; the relay parks it.
    let mut tx = db.pool.begin().await?;
    outbox_postgres::PgOutbox::new()
        .max_message_bytes(4 << 20)
        .enqueue_all(&mut tx, &messages)
        .await?;
    tx.commit().await?;

    let relay = InProcessRelay::start(&db, quick_config())?;
    db.wait_until_drained(Duration::from_secs(30)).await?;
    let stats = relay.stop().await?;
    assert_eq!(stats.published, 5);
    assert_eq!(stats.dead_lettered, 1);

    let (id, error, payload_len): (uuid::Uuid, String, i32) =
        sqlx::query_as("SELECT id, error, length(payload) FROM outbox_dead_letters")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(id, huge.id, "the oversized message is kept, not lost");
    assert_eq!(payload_len, 2_000_000);
    assert!(error.contains("MessageTooLarge"), "classified: {error}");
    let records = read_topic(&topic, 5, Duration::from_secs(10)).await?;
    let numbers: Vec<i64> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        numbers,
        vec![0, 1, 2, 3, 4],
        "the rest of the lane was delivered in order"
    );
    Ok(())
}

/// `outbox-relay run` against the database at `url` and the test broker, giving up on the
/// database after 5 s: its exit status and stderr.
async fn run_against(url: &str) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let brokers = services::brokers()?;
    run_relay_program(
        relay_program(),
        &[
            "run",
            "--database-url",
            url,
            "--brokers",
            &brokers,
            "--connect-timeout",
            "5s",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_without_the_outbox_schema_is_refused_with_the_fix_named() -> anyhow::Result<()>
{
    let db = TestDb::create().await?;
    sqlx::raw_sql("DROP TABLE outbox, outbox_dead_letters, inbox, outbox_migrations")
        .execute(&db.pool)
        .await?;
    let (status, stderr) = run_against(&db.url).await?;
    assert!(!status.success(), "exit status {status}");
    assert!(stderr.contains("lacks migrations [1, 2, 3, 4]"), "{stderr}");
    assert!(
        stderr.contains("outbox-relay migrate"),
        "names the fix: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_reached_through_a_transaction_pooler_is_refused_before_anything_is_claimed()
-> anyhow::Result<()> {
    let db = TestDb::create().await?;
    db.enqueue_committed(&[outbox_core::Message::builder("never-published").json(&1)?])
        .await?;
    let pooled = services::pgbouncer_url(&db.name)?;
    let (status, stderr) = run_against(&pooled).await?;
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("pooler in transaction or statement mode"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pool_mode = session"),
        "names the fix: {stderr}"
    );
    assert_eq!(
        db.outbox_count().await?,
        1,
        "nothing was claimed or published"
    );

    // An embedded relay's store says the same.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pooled)
        .await?;
    let store = outbox_postgres::PgRelayStore::new(pool, Default::default());
    let error = store.check().await.expect_err("a transaction pooler");
    assert!(
        error
            .to_string()
            .contains("pooler in transaction or statement mode"),
        "{error}"
    );
    Ok(())
}
