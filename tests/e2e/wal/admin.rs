//! Operating WAL capture: creating, inspecting and dropping the slot, and the readiness of a
//! reader and of a standby.

use std::time::Duration;

use outbox_core::Message;
use outbox_tests::{ANY_PORT, Fixture, RelayProcess, run_relay_program_output, wal};

use crate::relay_program;

async fn relay_cli(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let (status, stdout, stderr) = run_relay_program_output(relay_program(), args).await?;
    Ok((status.success(), stdout, stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_is_created_once_shown_with_its_reader_and_lag_and_dropped_only_when_unread()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(1).await?;
    let slot = db.name.clone();
    let url = db.url.clone();
    let slot_args = ["--database-url", url.as_str(), "--slot", slot.as_str()];
    let create: Vec<&str> = ["wal", "create-slot"]
        .into_iter()
        .chain(slot_args)
        .collect();
    let (ok, stdout, stderr) = relay_cli(&create).await?;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("created replication slot `{slot}`")),
        "{stdout}"
    );
    let (ok, stdout, stderr) = relay_cli(&create).await?;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("exists already"), "idempotent: {stdout}");

    let messages: Vec<Message> = (0..10)
        .map(|n| Message::builder(&topic).key("k").json(&n))
        .collect::<Result<_, _>>()?;
    let slot_name = outbox_postgres::SlotName::new(&slot)?;
    wal::enqueue_committed(&db, &messages).await?;
    // A lease long enough that a busy machine does not expire it between two heartbeats (which
    // would rightly hand the slot to the standby), short enough for a heartbeat within seconds.
    let mut flags = wal::relay_flags(&slot_name);
    flags.extend(["--lease", "12s", "--metrics-address", ANY_PORT].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let readiness = Duration::from_secs(60);
    let reader = RelayProcess::spawn(relay_program(), &db, &flags)?;
    let reader_address = reader.metrics_address().await?;
    wal::wait_until_confirmed(&db, &slot_name, Duration::from_secs(60)).await?;
    let body = reader
        .wait_for_readiness(&reader_address, 200, readiness)
        .await?;
    assert!(
        body.contains(&format!("slot: ok (reading `{slot}`)")),
        "{body}"
    );

    // A second relay stands by, and says so.
    let standby = RelayProcess::spawn(relay_program(), &db, &flags)?;
    let standby_address = standby.metrics_address().await?;
    let body = standby
        .wait_for_readiness(&standby_address, 503, readiness)
        .await?;
    assert!(body.contains("standing by"), "{body}");

    // The heartbeat (a quarter lease) reports the reader's progress.
    let status: Vec<&str> = ["wal", "status", "--json"]
        .into_iter()
        .chain(slot_args)
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let (ok, stdout, stderr) = relay_cli(&status).await?;
        assert!(ok, "{stderr}");
        let shown: serde_json::Value = serde_json::from_str(&stdout)?;
        if !shown["heartbeat_at"].is_null() {
            break shown;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["exists"], true, "{shown}");
    assert_eq!(shown["active"], true, "{shown}");
    assert!(shown["active_pid"].as_i64().is_some(), "{shown}");
    assert!(
        shown["confirmed_lsn"]
            .as_str()
            .is_some_and(|lsn| lsn.contains('/')),
        "{shown}"
    );
    assert!(
        shown["lag_bytes"].as_i64().is_some_and(|lag| lag >= 0),
        "{shown}"
    );
    assert_eq!(shown["lag_seconds"], 0.0, "nothing unsettled: {shown}");
    let text: Vec<&str> = ["wal", "status"].into_iter().chain(slot_args).collect();
    let (ok, stdout, _) = relay_cli(&text).await?;
    assert!(
        ok && stdout.contains("read by walsender pid") && stdout.contains("lag:"),
        "{stdout}"
    );

    let drop_slot: Vec<&str> = ["wal", "drop-slot"].into_iter().chain(slot_args).collect();
    let (ok, _, stderr) = relay_cli(&drop_slot).await?;
    assert!(!ok, "refused while read");
    assert!(stderr.contains("is being read"), "{stderr}");
    assert!(standby.terminate().await?.success());
    assert!(reader.terminate().await?.success());
    let (ok, stdout, stderr) = relay_cli(&drop_slot).await?;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dropped replication slot"), "{stdout}");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(left, 0);
    let (ok, _, stderr) = relay_cli(&status).await?;
    assert!(!ok && stderr.contains("not this outbox's"), "{stderr}");
    Ok(())
}
