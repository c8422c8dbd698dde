//! What WAL capture refuses, before anything is read, with the setting and the fix named: a
//! server without logical decoding, a role that may not replicate, no free slot, a missing slot,
//! and a slot that belongs to another program (never taken over).

use std::time::Duration;

use sqlx::Connection;

use outbox_tests::private::PrivatePostgres;
use outbox_tests::{TestDb, init_logs, run_relay_program, run_relay_program_output, services};
use tokio::process::Command;
use uuid::Uuid;

use crate::relay_program;

/// Runs `outbox-relay run --capture wal` against `url` and slot `slot`; returns its exit status
/// and stderr.
async fn run_wal(url: &str, slot: &str) -> anyhow::Result<(std::process::ExitStatus, String)> {
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
            "--capture",
            "wal",
            "--wal-slot",
            slot,
        ],
    )
    .await
}

async fn migrate(url: &str) -> anyhow::Result<()> {
    let (status, stderr) =
        run_relay_program(relay_program(), &["migrate", "--database-url", url]).await?;
    anyhow::ensure!(status.success(), "migrate failed: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_logical_decoding_is_refused_naming_wal_level() -> anyhow::Result<()> {
    init_logs();
    // A fresh cluster runs with wal_level = replica.
    let server = PrivatePostgres::start().await?;
    let url = server.url();
    migrate(&url).await?;
    let (status, _, stderr) = run_relay_program_output(
        relay_program(),
        &["wal", "create-slot", "--database-url", &url],
    )
    .await?;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("wal_level = logical"), "{stderr}");
    assert!(
        stderr.contains("wal_level = replica"),
        "names what it runs with: {stderr}"
    );
    let (status, stderr) = run_wal(&url, "outbox").await?;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("wal_level = logical"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_free_replication_slot_is_named_with_the_setting_to_raise() -> anyhow::Result<()> {
    init_logs();
    let server = outbox_tests::wal::logical_server(&["max_replication_slots = 1"]).await?;
    let url = server.url();
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("SELECT pg_create_logical_replication_slot('taken', 'pgoutput')")
        .execute(&mut conn)
        .await?;
    let (status, _, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "wal",
            "create-slot",
            "--database-url",
            &url,
            "--slot",
            "mine",
        ],
    )
    .await?;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("no replication slot is free"), "{stderr}");
    assert!(stderr.contains("max_replication_slots"), "{stderr}");
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_wal_slots")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(
        registered, 1,
        "the registration stays, so a retry after the fix goes on"
    );
    sqlx::query("SELECT pg_drop_replication_slot('taken')")
        .execute(&mut conn)
        .await?;
    let (status, stdout, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "wal",
            "create-slot",
            "--database-url",
            &url,
            "--slot",
            "mine",
        ],
    )
    .await?;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("created replication slot `mine`"),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_replication_is_refused_naming_the_attribute() -> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let slot = outbox_tests::wal::create_slot(&db).await?;
    let role = format!("outbox_app_{}", Uuid::now_v7().simple());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
    ))
    .execute(&db.pool)
    .await?;
    let url = url::Url::parse(&db.url).map(|mut url| {
        let _ = url.set_username(&role);
        url.to_string()
    })?;
    let (status, stderr) = run_wal(&url, slot.as_str()).await?;
    sqlx::raw_sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .execute(&db.pool)
        .await?;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("REPLICATION"), "{stderr}");
    assert!(
        stderr.contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "the fix: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_slot_or_one_of_another_program_is_refused_and_never_taken_over()
-> anyhow::Result<()> {
    init_logs();
    let db = TestDb::create().await?;
    let (status, stderr) = run_wal(&db.url, "nowhere").await?;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("there is no replication slot `nowhere`"),
        "{stderr}"
    );
    assert!(stderr.contains("wal create-slot"), "the fix: {stderr}");

    // Created by another program: not in the outbox's registry.
    let foreign = format!("{}_foreign", db.name);
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&foreign)
        .execute(&db.pool)
        .await?;
    let (status, stderr) = run_wal(&db.url, &foreign).await?;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("not created by this outbox"), "{stderr}");
    let decoding = format!("{}_decoding", db.name);
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
        .bind(&decoding)
        .execute(&db.pool)
        .await?;
    let (status, stderr) = run_wal(&db.url, &decoding).await?;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("plugin test_decoding"), "{stderr}");

    // The outbox's own slot, but read by another program right now: refused, and its reader is
    // left alone.
    let slot = outbox_tests::wal::create_slot(&db).await?;
    let plain_url = url::Url::parse(&services::database_url()?).map(|mut url| {
        url.set_path(&db.name);
        url.to_string()
    })?;
    let mut reader = Command::new("pg_recvlogical")
        .args([
            "--dbname",
            &plain_url,
            "--slot",
            slot.as_str(),
            "--start",
            "--file",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={slot}"))
        .kill_on_drop(true)
        .spawn()?;
    let reader_pid = wait_for_reader(&db, slot.as_str()).await?;
    let (status, stderr) = run_wal(&db.url, slot.as_str()).await?;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("read by another program"), "{stderr}");
    assert!(
        stderr.contains("pg_recvlogical"),
        "names the program: {stderr}"
    );
    assert_eq!(
        wait_for_reader(&db, slot.as_str()).await?,
        reader_pid,
        "the other program still reads its slot"
    );
    reader.kill().await?;
    Ok(())
}

/// Waits until a walsender reads `slot`; returns its pid.
async fn wait_for_reader(db: &TestDb, slot: &str) -> anyhow::Result<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pid: Option<i32> =
            sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_one(&db.pool)
                .await?;
        if let Some(pid) = pid {
            return Ok(pid);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing reads slot {slot} after 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replication_connection_the_server_refuses_stops_the_relay_before_anything_is_read()
-> anyhow::Result<()> {
    init_logs();
    // A server that decodes logically but takes no replication connection: its sessions, the
    // slot and every check of the relay work; the stream itself cannot start.
    let server = outbox_tests::wal::logical_server(&["max_wal_senders = 0"]).await?;
    let url = server.url();
    let (status, _, stderr) = run_relay_program_output(
        relay_program(),
        &["wal", "create-slot", "--database-url", &url],
    )
    .await?;
    assert!(
        status.success(),
        "create-slot needs no replication connection: {stderr}"
    );
    let (status, stderr) = run_wal(&url, "outbox").await?;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot open a replication connection to postgres@127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("max_wal_senders"),
        "the server's reason: {stderr}"
    );
    assert!(
        !stderr.contains("replication stream started"),
        "nothing was read: {stderr}"
    );
    Ok(())
}
