//! The whole flow over the secured services, each program as its own role: the migration role
//! migrates (above), the writer enqueues, the relay publishes over SASL_SSL as `outbox-relay`, the
//! consumer applies through the inbox as `outbox-consumer`; and each role is refused what it does
//! not need.

use std::time::Duration;

use outbox_core::CancellationToken;
use outbox_kafka::{InboxConsumer, Received};
use outbox_postgres::{PgInbox, PgOutbox};
use outbox_tests::consumers::{EffectsReport, STEP, Step, effects_report, record_step, steps};
use outbox_tests::keyed::{dead_letter_count, outbox_count};
use outbox_tests::secure::{ALLOWED_TOPICS, CONSUMER_PRINCIPAL, FORBIDDEN_TOPICS};
use outbox_tests::{ANY_PORT, create_topic_named, run_relay_program_output, services};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{migrated, spawn_secured_relay};
use crate::relay_program;

const KEYS: usize = 8;
const PER_KEY: usize = 25;
const TOTAL: i64 = (KEYS * PER_KEY) as i64;

/// Waits until the outbox is empty.
async fn drained(pool: &PgPool, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = outbox_count(pool).await?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the outbox still holds {left} messages after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The SQLSTATE of a failed statement.
async fn refused_with(pool: &PgPool, sql: &str) -> Option<String> {
    match sqlx::raw_sql(sql).execute(pool).await {
        Ok(_) => None,
        Err(error) => Some(
            error
                .as_database_error()
                .and_then(|e| e.code().map(|c| c.into_owned()))
                .unwrap_or_else(|| format!("not a database error: {error}")),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_program_runs_as_its_own_role_over_verified_tls_and_scram_and_each_message_is_applied_once()
-> anyhow::Result<()> {
    let (services, db) = migrated().await?;
    let topic = create_topic_named(&services::brokers()?, ALLOWED_TOPICS, 3, &[]).await?;

    // The consumer's effects table belongs to the migration role; the consumer may add to it.
    let owner = db.pool(&db.migrator).await?;
    sqlx::raw_sql(&format!(
        "{}; GRANT SELECT, INSERT ON effects TO {consumer}; GRANT USAGE ON SEQUENCE effects_n_seq TO {consumer}",
        outbox_tests::consumers::EFFECTS_TABLE,
        consumer = db.consumer.name
    ))
    .execute(&owner)
    .await?;

    // The writer enqueues in its own transaction, over TLS, with nothing but INSERT.
    let writer = db.pool(&db.writer).await?;
    let messages = steps(&topic, KEYS, PER_KEY)?;
    let mut tx = writer.begin().await?;
    PgOutbox::new().enqueue_all(&mut tx, &messages).await?;
    tx.commit().await?;

    // The relay, as its role, to the SASL_SSL listener as its principal.
    let relay = spawn_secured_relay(
        &services,
        &db,
        &["--metrics-address", ANY_PORT, "--poll-interval", "100ms"],
    )?;
    let relay_pool = db.pool(&db.relay).await?;
    drained(&relay_pool, Duration::from_secs(60))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; the relay's log:\n{}",
                std::fs::read_to_string(&relay.log).unwrap_or_default()
            )
        })?;
    let address = relay.metrics_address().await?;
    relay
        .wait_for_readiness(&address, 200, Duration::from_secs(30))
        .await?;

    // Every session of the relay is encrypted (the server's own view, which only a superuser sees
    // whole).
    let superuser = PgPool::connect(&services::database_url()?).await?;
    let sessions: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_activity AS a JOIN pg_stat_ssl AS s USING (pid) WHERE a.usename = $1",
    )
    .bind(&db.relay.name)
    .fetch_all(&superuser)
    .await?;
    assert!(
        !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
        "the relay's sessions and whether each uses TLS: {sessions:?}"
    );

    // The admin commands, as the relay's role over TLS.
    for command in [&["status"][..], &["dead-letters", "list"]] {
        let mut args = command.to_vec();
        let url = db.url(&db.relay);
        args.extend(["--database-url", &url]);
        let (status, stdout, stderr) = run_relay_program_output(relay_program(), &args).await?;
        assert!(
            status.success(),
            "{command:?} as the relay's role: {status}\n{stdout}\n{stderr}"
        );
    }

    // The consumer, as its role over TLS and its principal over SASL_SSL, applies each once.
    let mut config = services.kafka_client(CONSUMER_PRINCIPAL)?;
    config
        .set(
            "group.id",
            format!("{ALLOWED_TOPICS}{}", Uuid::now_v7().simple()),
        )
        .set("session.timeout.ms", "6000")
        .set("auto.commit.interval.ms", "500");
    let consumer_pool = db.pool(&db.consumer).await?;
    let consumer = InboxConsumer::builder(&config, PgInbox::new(consumer_pool.clone()), "effects")
        .topics([topic.as_str()])
        .on(
            STEP,
            |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
                record_step(tx, step, received, "secured")
            },
        )
        .build()?;
    let stats = consumer.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let report: EffectsReport = loop {
        let report = effects_report(&owner).await?;
        if report.rows >= TOTAL || tokio::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(60), task).await??;
    stopped.map_err(|e| anyhow::anyhow!("the consumer failed: {e}; {:?}", stats.snapshot()))?;
    assert_eq!(report.rows, TOTAL, "{report:?}");
    assert_eq!(report.distinct, TOTAL, "{report:?}");
    assert!(report.repeated.is_empty(), "{report:?}");
    assert!(report.out_of_order.is_empty(), "{report:?}");

    // What each role may not do: the writer reads and deletes nothing; no role changes the schema.
    let denied = "42501";
    for (pool, role, sql) in [
        (&writer, "writer", "SELECT count(*) FROM outbox"),
        (&writer, "writer", "DELETE FROM outbox"),
        (
            &writer,
            "writer",
            "SELECT count(*) FROM outbox_dead_letters",
        ),
        (&writer, "writer", "CREATE TABLE sneaky (id int)"),
        (&relay_pool, "relay", "CREATE TABLE sneaky (id int)"),
        (
            &relay_pool,
            "relay",
            "ALTER TABLE outbox ADD COLUMN sneaky int",
        ),
        (&relay_pool, "relay", "DROP TABLE outbox_dead_letters"),
        (&relay_pool, "relay", "SELECT count(*) FROM inbox"),
        (&consumer_pool, "consumer", "SELECT count(*) FROM outbox"),
        (&consumer_pool, "consumer", "CREATE TABLE sneaky (id int)"),
    ] {
        assert_eq!(
            refused_with(pool, sql).await.as_deref(),
            Some(denied),
            "the {role} role ran `{sql}`"
        );
    }
    assert_eq!(relay.terminate().await?.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_the_relay_may_not_write_is_a_dead_letter_with_the_brokers_error_and_the_rest_flows()
-> anyhow::Result<()> {
    let (services, db) = migrated().await?;
    let plain = services::brokers()?;
    let allowed = create_topic_named(&plain, ALLOWED_TOPICS, 1, &[]).await?;
    let forbidden = create_topic_named(&plain, FORBIDDEN_TOPICS, 1, &[]).await?;
    let writer = db.pool(&db.writer).await?;
    let messages = [
        outbox_core::Message::builder(&forbidden)
            .key("k")
            .json(&1)?,
        outbox_core::Message::builder(&allowed).key("k").json(&2)?,
    ];
    let mut tx = writer.begin().await?;
    PgOutbox::new().enqueue_all(&mut tx, &messages).await?;
    tx.commit().await?;

    let relay = spawn_secured_relay(&services, &db, &["--poll-interval", "100ms"])?;
    let relay_pool = db.pool(&db.relay).await?;
    drained(&relay_pool, Duration::from_secs(60)).await?;
    assert_eq!(dead_letter_count(&relay_pool).await?, 1);
    let (topic, error): (String, String) =
        sqlx::query_as("SELECT topic, error FROM outbox_dead_letters")
            .fetch_one(&relay_pool)
            .await?;
    assert_eq!(topic, forbidden);
    assert!(
        error.to_ascii_lowercase().contains("authorization"),
        "the broker's error is kept: {error}"
    );
    let records = outbox_tests::read_topic(&allowed, 1, Duration::from_secs(5)).await?;
    assert_eq!(records.len(), 1, "the allowed topic's message arrived");
    assert_eq!(relay.terminate().await?.code(), Some(0));

    // The relay's role may replay its dead letters (back into the outbox, in one transaction).
    let url = db.url(&db.relay);
    let (status, stdout, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "dead-letters",
            "replay",
            "--topic",
            &forbidden,
            "--database-url",
            &url,
        ],
    )
    .await?;
    assert!(
        status.success(),
        "replay as the relay's role: {stdout}\n{stderr}"
    );
    assert_eq!(dead_letter_count(&relay_pool).await?, 0);
    assert_eq!(
        outbox_count(&relay_pool).await?,
        1,
        "the message waits in the outbox again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_reads_its_slot_over_verified_tls_as_the_relays_role() -> anyhow::Result<()> {
    let (services, db) = migrated().await?;
    let topic = create_topic_named(&services::brokers()?, ALLOWED_TOPICS, 2, &[]).await?;
    let slot = db.name.clone();

    // The migration role creates the slot (it has REPLICATION and owns the database, where the
    // slot's publication goes), through the admin command over TLS.
    let (status, stdout, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "wal",
            "create-slot",
            "--slot",
            &slot,
            "--database-url",
            &db.url(&db.migrator),
        ],
    )
    .await?;
    assert!(
        status.success(),
        "wal create-slot: {status}\n{stdout}\n{stderr}"
    );

    let writer = db.pool(&db.writer).await?;
    let messages: Vec<outbox_core::Message> = (0..50)
        .map(|n| {
            outbox_core::Message::builder(&topic)
                .key(format!("k{}", n % 5))
                .json(&n)
        })
        .collect::<Result<_, _>>()?;
    let mut tx = writer.begin().await?;
    PgOutbox::wal().enqueue_all(&mut tx, &messages).await?;
    tx.commit().await?;

    let relay = spawn_secured_relay(
        &services,
        &db,
        &["--capture", "wal", "--wal-slot", &slot, "--lease", "10s"],
    )?;
    let records = outbox_tests::read_topic(&topic, messages.len(), Duration::from_secs(60)).await?;
    let ids: std::collections::BTreeSet<_> = records.iter().filter_map(|r| r.id()).collect();
    let sent: std::collections::BTreeSet<_> = messages.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        sent,
        "every message arrived; the relay's log: {}",
        relay.log.display()
    );

    // The walsender serving the slot runs as the relay's role, over TLS.
    let superuser = PgPool::connect(&services::database_url()?).await?;
    let reader: Option<(String, bool)> = sqlx::query_as(
        "SELECT a.usename::text, s.ssl FROM pg_replication_slots AS r
         JOIN pg_stat_activity AS a ON a.pid = r.active_pid JOIN pg_stat_ssl AS s ON s.pid = r.active_pid
         WHERE r.slot_name = $1",
    )
    .bind(&slot)
    .fetch_optional(&superuser)
    .await?;
    assert_eq!(reader, Some((db.relay.name.clone(), true)));
    assert_eq!(relay.terminate().await?.code(), Some(0));
    Ok(())
}
