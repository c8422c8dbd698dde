//! Fencing: a relay paused past its lease (SIGSTOP) loses its lane to another relay and, when it
//! resumes (SIGCONT), claims, deletes and hands the broker nothing more. What its producer had
//! already packed into a request before the pause may still reach the broker when it resumes,
//! after the successor's copies (window R4 of `docs/guarantees.md`): at most the window it held.

use std::time::Duration;

use outbox_core::Message;
use outbox_tests::{Fixture, RelayProcess, read_topic};

use crate::relay_program;

const MESSAGES: usize = 8_000;
/// The relay's batch: the most one claim of its one lane takes.
const BATCH: i64 = 200;
// One lane: at any moment exactly one relay may publish.
const FLAGS: [&str; 8] = [
    "--lanes",
    "1",
    "--lease",
    "5s",
    "--batch-size",
    "200",
    "--poll-interval",
    "100ms",
];

fn signal(relay: &RelayProcess, name: &str) -> anyhow::Result<()> {
    let pid = relay.pid().ok_or_else(|| anyhow::anyhow!("relay exited"))?;
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_paused_past_its_lease_publishes_and_deletes_nothing_after_its_successor_took_over()
-> anyhow::Result<()> {
    let Fixture { db, topic } = Fixture::new(1).await?;
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|n| Message::builder(&topic).key("one-key").json(&n))
        .collect::<Result<_, _>>()?;
    db.enqueue_committed(&messages).await?;

    let first = RelayProcess::spawn(relay_program(), &db, &FLAGS)?;
    db.wait_until_backlog_at_most((MESSAGES - 1_000) as i64, Duration::from_secs(60))
        .await?;
    signal(&first, "STOP")?;
    let at_pause = db.outbox_count().await?;

    // The successor can only publish once the paused relay's lease expired and its lane was freed.
    let second = RelayProcess::spawn(relay_program(), &db, &FLAGS)?;
    let after_takeover = db
        .wait_until_backlog_at_most(at_pause - 1_000, Duration::from_secs(60))
        .await?;
    signal(&first, "CONT")?;
    db.wait_until_drained(Duration::from_secs(120)).await?;
    let first_log = first.log.clone();
    assert!(first.terminate().await?.success());
    assert!(second.terminate().await?.success());

    // One partition, one key: the topic is the publication order. The paused relay held one
    // window (one lane, at most a batch) starting at the first number it had not settled; only
    // that window may appear twice: repeated by the successor, and (R4) by the paused relay's
    // producer when it resumes. Anything else published twice would be a claim acted on after the
    // lease was lost.
    let first_unsettled = (MESSAGES as i64) - at_pause;
    let held = first_unsettled..first_unsettled + BATCH;
    let records = read_topic(&topic, usize::MAX, Duration::from_secs(5)).await?;
    let numbers: Vec<i64> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload))
        .collect::<Result<_, _>>()?;
    let falls: Vec<(i64, i64)> = numbers
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let repeated: std::collections::BTreeSet<i64> = numbers
        .iter()
        .copied()
        .filter(|n| !seen.insert(*n))
        .collect();
    assert_eq!(seen.len(), MESSAGES, "nothing lost");
    let outside: Vec<i64> = repeated
        .iter()
        .copied()
        .filter(|n| !held.contains(n))
        .collect();
    assert!(
        outside.is_empty(),
        "only the paused relay's window {held:?} may be published twice; also repeated: {outside:?} (falls {falls:?})"
    );
    let mut firsts = std::collections::HashSet::new();
    let first_occurrences: Vec<i64> = numbers
        .iter()
        .copied()
        .filter(|n| firsts.insert(*n))
        .collect();
    assert!(
        first_occurrences.windows(2).all(|w| w[0] < w[1]),
        "first occurrences in order"
    );
    let log = std::fs::read_to_string(&first_log)?;
    assert!(
        log.contains("relay session lost") || log.contains("lease expired"),
        "the resumed relay noticed it had lost its lease:\n{log}"
    );
    println!(
        "paused with {at_pause} left; successor brought it to {after_takeover}; {} records for {MESSAGES} messages, order fell back {} time(s) (the takeover, and the paused relay's late request if any): {falls:?}",
        records.len(),
        falls.len()
    );
    Ok(())
}
