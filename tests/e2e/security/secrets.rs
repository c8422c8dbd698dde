//! Secrets planted in every place a user may give them — the database URL's user-info and its
//! `?password=`, `-X` properties, the config file, a malformed `-X`, a config file that is not
//! valid TOML — appear in no output of any command and in no log of a relay that ran, failed to
//! connect, or was refused.

use std::time::Duration;

use outbox_postgres::PgOutbox;
use outbox_tests::keyed::outbox_count;
use outbox_tests::secure::RELAY_PRINCIPAL;
use outbox_tests::{RelayProcess, create_topic_named, run_relay_program_with_env, services};

use super::{KAFKA_PASSWORD_VARIABLE, migrated, relay_kafka_flags};
use crate::relay_program;

/// Fails naming the output and the secret if any secret occurs in `output`.
fn assert_clean(what: &str, output: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !output.contains(secret),
            "{what} shows the secret `{secret}`:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_secrets_appear_in_no_command_output_and_in_no_relay_log() -> anyhow::Result<()> {
    let (services, db) = migrated().await?;
    let kafka_password = services.kafka_password(RELAY_PRINCIPAL)?.to_owned();
    let planted = [
        "planted-query-password-1",
        "planted-userinfo-password-2",
        "planted-sasl-password-3",
        "planted-key-password-4",
        "planted-malformed-5",
        "planted-file-sasl-6",
        "planted-file-url-7",
        "planted-broken-toml-8",
    ];
    let mut secrets: Vec<&str> = planted.to_vec();
    secrets.extend([
        db.relay.password.as_str(),
        db.migrator.password.as_str(),
        kafka_password.as_str(),
    ]);
    let brokers = services.brokers.clone();
    let dir = tempfile_dir()?;
    let file = dir.join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\nurl = \"postgres://app:{}@127.0.0.1/db\"\n[kafka]\nbrokers = \"{brokers}\"\n\
             [kafka.properties]\n\"sasl.password\" = \"{}\"\n",
            planted[6], planted[5]
        ),
    )?;
    let broken = dir.join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "[database]\nurl = \"postgres://app:{}@127.0.0.1/db\n",
            planted[7]
        ),
    )?;
    let query_url = format!("postgres://app@127.0.0.1/db?password={}", planted[0]);
    let userinfo_url = format!("postgres://app:{}@127.0.0.1/db", planted[1]);
    let sasl = format!("sasl.password={}", planted[2]);
    let key = format!("ssl.key.password={}", planted[3]);
    let malformed = format!("sasl.password:{}", planted[4]);
    let relay_url = db.url(&db.relay);
    let migrator_url = db.url(&db.migrator);
    let file_arg = file.display().to_string();
    let broken_arg = broken.display().to_string();
    let kafka = relay_kafka_flags(&services, &services.ca);
    let mut secure_run: Vec<&str> = vec!["--brokers", &brokers, "--connect-timeout", "10s"];
    secure_run.extend(kafka.iter().map(String::as_str));

    let commands: Vec<(&str, Vec<&str>)> = vec![
        (
            "config check with secrets in the URL's query and in -X",
            vec![
                "config",
                "check",
                "--database-url",
                &query_url,
                "--brokers",
                &brokers,
                "-X",
                &sasl,
                "-X",
                &key,
            ],
        ),
        (
            "config check with the password in the URL's user-info",
            vec![
                "config",
                "check",
                "--database-url",
                &userinfo_url,
                "--brokers",
                &brokers,
            ],
        ),
        (
            "config check with a malformed -X",
            vec![
                "config",
                "check",
                "--database-url",
                &query_url,
                "--brokers",
                &brokers,
                "-X",
                &malformed,
            ],
        ),
        (
            "config check with a config file",
            vec!["config", "check", "--config", &file_arg],
        ),
        (
            "status with a config file that is not TOML",
            vec!["status", "--config", &broken_arg],
        ),
        ("migrate", vec!["migrate", "--database-url", &migrator_url]),
        ("status", vec!["status", "--database-url", &relay_url]),
        (
            "dead-letters list",
            vec!["dead-letters", "list", "--database-url", &relay_url],
        ),
        (
            "wal status",
            vec!["wal", "status", "--database-url", &relay_url],
        ),
        (
            "run against an unreachable database",
            vec![
                "run",
                "--database-url",
                &userinfo_url,
                "--brokers",
                &brokers,
                "--connect-timeout",
                "1s",
                "-X",
                &sasl,
            ],
        ),
    ];
    for (what, args) in &commands {
        let (status, stdout, stderr) =
            run_relay_program_with_env(relay_program(), args, &[]).await?;
        assert_clean(what, &format!("{status}\n{stdout}\n{stderr}"), &secrets);
    }

    // Refused by the database (a wrong password) and by the brokers (a wrong password given on the
    // command line, the worst place for it).
    let mut wrong_db = db.relay.clone();
    wrong_db.password = planted[1].to_owned();
    let wrong_db_url = db.url(&wrong_db);
    let mut args = vec!["run", "--database-url", &wrong_db_url];
    args.extend(&secure_run);
    let (_, stdout, stderr) = run_relay_program_with_env(
        relay_program(),
        &args,
        &[(KAFKA_PASSWORD_VARIABLE, &kafka_password)],
    )
    .await?;
    assert_clean(
        "run refused by the database",
        &format!("{stdout}\n{stderr}"),
        &secrets,
    );
    let mut args = vec!["run", "--database-url", &relay_url];
    args.extend(&secure_run);
    let wrong_kafka = format!("sasl.password={}", planted[2]);
    args.extend(["-X", &wrong_kafka]);
    let (status, stdout, stderr) = run_relay_program_with_env(relay_program(), &args, &[]).await?;
    assert!(
        !status.success(),
        "a wrong Kafka password must stop the relay: {stderr}"
    );
    assert_clean(
        "run refused by the brokers",
        &format!("{stdout}\n{stderr}"),
        &secrets,
    );

    // A relay that runs, with its real Kafka password on the command line, at debug level.
    let topic = create_topic_named(
        &services::brokers()?,
        outbox_tests::secure::ALLOWED_TOPICS,
        1,
        &[],
    )
    .await?;
    let writer = db.pool(&db.writer).await?;
    let mut tx = writer.begin().await?;
    PgOutbox::new()
        .enqueue(
            &mut tx,
            &outbox_core::Message::builder(&topic).key("k").json(&1)?,
        )
        .await?;
    tx.commit().await?;
    let real_kafka = format!("sasl.password={kafka_password}");
    let mut flags: Vec<&str> = kafka.iter().map(String::as_str).collect();
    flags.extend(["-X", &real_kafka, "--poll-interval", "100ms"]);
    let relay = RelayProcess::spawn_with_env(
        relay_program(),
        &relay_url,
        &brokers,
        &flags,
        &[("OUTBOX_LOG", "debug")],
    )?;
    let relay_pool = db.pool(&db.relay).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while outbox_count(&relay_pool).await? > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the message was not relayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log_path = relay.log.clone();
    assert_eq!(relay.terminate().await?.code(), Some(0));
    let log = std::fs::read_to_string(&log_path)?;
    assert!(
        log.contains("relay starting"),
        "the log is the relay's: {log}"
    );
    assert_clean("the log of a relay that ran at debug level", &log, &secrets);
    Ok(())
}

/// A fresh directory under the system's temporary one.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("outbox-secrets-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
