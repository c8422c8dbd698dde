//! A relay that the database or the brokers refuse — a CA that did not sign the server's
//! certificate, a wrong password, a connection without TLS, a SASL mechanism the listener does not
//! offer — stops at once with an error naming the connection and the reason, well within its
//! connect timeout; it does not retry quietly until the timeout.

use std::time::{Duration, Instant};

use outbox_tests::run_relay_program_with_env;
use outbox_tests::secure::RELAY_PRINCIPAL;

use super::{KAFKA_PASSWORD_VARIABLE, migrated, relay_kafka_flags};
use crate::relay_program;

/// Longer than any refusal takes: a run that waits it out has retried instead of stopping.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(40);

/// Runs the relay with `database_url` and the Kafka flags; returns its stderr once it exited
/// (with a failure, before the connect timeout).
async fn refused_run(
    database_url: &str,
    brokers: &str,
    kafka_flags: &[String],
    password: &str,
) -> anyhow::Result<String> {
    let timeout = format!("{}s", CONNECT_TIMEOUT.as_secs());
    let mut args = vec![
        "run",
        "--database-url",
        database_url,
        "--brokers",
        brokers,
        "--connect-timeout",
        &timeout,
    ];
    args.extend(kafka_flags.iter().map(String::as_str));
    let started = Instant::now();
    let (status, _, stderr) = run_relay_program_with_env(
        relay_program(),
        &args,
        &[(KAFKA_PASSWORD_VARIABLE, password)],
    )
    .await?;
    let took = started.elapsed();
    anyhow::ensure!(!status.success(), "the relay ran: {stderr}");
    anyhow::ensure!(
        took < CONNECT_TIMEOUT,
        "the relay took {took:?}, the whole connect timeout, to stop: {stderr}"
    );
    Ok(outbox_tests::without_colours(&stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_password_encryption_or_mechanism_stops_the_relay_at_once_naming_the_connection()
-> anyhow::Result<()> {
    let (services, db) = migrated().await?;
    let password = services.kafka_password(RELAY_PRINCIPAL)?.to_owned();
    let kafka = relay_kafka_flags(&services, &services.ca);
    let brokers = services.brokers.as_str();

    // PostgreSQL: a CA that did not sign the server's certificate.
    let error = refused_run(
        &db.url_as(&db.relay, &services.other_ca),
        brokers,
        &kafka,
        &password,
    )
    .await?;
    assert!(error.contains("PostgreSQL at"), "{error}");
    assert!(error.contains("refused the connection"), "{error}");
    assert!(
        error.to_ascii_lowercase().contains("certificate"),
        "{error}"
    );

    // PostgreSQL: a wrong password.
    let mut wrong = db.relay.clone();
    wrong.password = "not-the-password".into();
    let error = refused_run(&db.url(&wrong), brokers, &kafka, &password).await?;
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");

    // PostgreSQL: no TLS, which pg_hba.conf refuses these roles.
    let plain = db
        .url(&db.relay)
        .replace("sslmode=verify-full", "sslmode=disable");
    let error = refused_run(&plain, brokers, &kafka, &password).await?;
    assert!(error.contains("no encryption"), "{error}");

    // Kafka: the brokers' certificate checked against another CA.
    let relay_url = db.url(&db.relay);
    let other_ca = relay_kafka_flags(&services, &services.other_ca);
    let error = refused_run(&relay_url, brokers, &other_ca, &password).await?;
    assert!(
        error.contains(&format!(
            "the Kafka brokers at `{brokers}` refused the connection"
        )),
        "{error}"
    );
    assert!(error.contains("certificate verify failed"), "{error}");

    // Kafka: a wrong password.
    let error = refused_run(&relay_url, brokers, &kafka, "not-the-kafka-password").await?;
    assert!(error.contains("refused the connection"), "{error}");
    assert!(error.contains("Authentication failed"), "{error}");
    assert!(!error.contains("not-the-kafka-password"), "{error}");

    // Kafka: a mechanism the listener does not offer.
    let mechanism: Vec<String> = kafka
        .iter()
        .map(|flag| flag.replace("SCRAM-SHA-512", "SCRAM-SHA-256"))
        .collect();
    let error = refused_run(&relay_url, brokers, &mechanism, &password).await?;
    assert!(error.contains("refused the connection"), "{error}");
    assert!(error.contains("SCRAM-SHA-256"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_brokers_refuse_stops_with_the_reason_instead_of_waiting()
-> anyhow::Result<()> {
    let (services, db) = migrated().await?;
    let topic = outbox_tests::create_topic_named(
        &outbox_tests::services::brokers()?,
        outbox_tests::secure::ALLOWED_TOPICS,
        1,
        &[],
    )
    .await?;
    let pool = db.pool(&db.consumer).await?;
    let mut config = services.kafka_client(outbox_tests::secure::CONSUMER_PRINCIPAL)?;
    config
        .set("sasl.password", "not-the-consumer-password")
        .set(
            "group.id",
            format!(
                "{}{}",
                outbox_tests::secure::ALLOWED_TOPICS,
                uuid::Uuid::now_v7().simple()
            ),
        );
    let consumer = outbox_kafka::InboxConsumer::builder(
        &config,
        outbox_postgres::PgInbox::new(pool),
        "effects",
    )
    .topics([topic.as_str()])
    .raw(outbox_kafka::handler_fn(|_tx, _received| {
        Box::pin(async { Ok(()) })
    }))
    .build()?;
    let run = consumer.run(outbox_core::CancellationToken::new());
    let error = tokio::time::timeout(CONNECT_TIMEOUT, run)
        .await
        .map_err(|_| anyhow::anyhow!("the consumer kept running with a wrong password"))?
        .expect_err("a refused consumer stops with an error")
        .to_string();
    assert!(
        error.contains(&format!(
            "the Kafka brokers at `{}` refused the connection",
            services.brokers
        )),
        "{error}"
    );
    assert!(error.contains("Authentication failed"), "{error}");
    Ok(())
}
