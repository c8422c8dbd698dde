//! The administration subcommands of the relay program: `status` and `dead-letters`, against
//! PostgreSQL only.

use outbox_core::Message;
use outbox_tests::{TestDb, run_relay_program_output};
use serde_json::Value;
use uuid::Uuid;

use crate::relay_program;

/// Runs the relay program with `args` followed by `--database-url` of `db`; expects success and
/// returns stdout.
async fn admin(db: &TestDb, args: &[&str]) -> anyhow::Result<String> {
    let mut all = args.to_vec();
    all.extend(["--database-url", &db.url]);
    let (status, stdout, stderr) = run_relay_program_output(relay_program(), &all).await?;
    assert!(status.success(), "{args:?} exited {status}: {stderr}");
    Ok(stdout)
}

async fn admin_json(db: &TestDb, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let stdout = admin(db, &all).await?;
    Ok(serde_json::from_str(&stdout)?)
}

/// Enqueues `count` messages on `topic` and moves them into the dead letters with `error`; returns
/// their ids in order.
async fn dead_letters(
    db: &TestDb,
    topic: &str,
    count: usize,
    error: &str,
) -> anyhow::Result<Vec<Uuid>> {
    let messages: Vec<Message> = (0..count)
        .map(|n| {
            Message::builder(topic)
                .key(format!("key-{n}"))
                .header("trace", format!("t-{n}"))
                .json(&serde_json::json!({ "topic": topic, "n": n }))
        })
        .collect::<Result<_, _>>()?;
    db.enqueue_committed(&messages).await?;
    sqlx::query(
        "WITH moved AS (DELETE FROM outbox WHERE topic = $1 RETURNING *)
         INSERT INTO outbox_dead_letters (seq, id, slot, topic, key, event_type, source, content_type,
                                          payload, headers, created_at, attempts, error)
         SELECT seq, id, slot, topic, key, event_type, source, content_type, payload, headers,
                created_at, 3, $2
         FROM moved",
    )
    .bind(topic)
    .bind(error)
    .execute(&db.pool)
    .await?;
    Ok(messages.iter().map(|m| m.id).collect())
}

async fn backlog(db: &TestDb, topic: &str, count: usize) -> anyhow::Result<()> {
    let messages: Vec<Message> = (0..count)
        .map(|n| Message::builder(topic).key("k").json(&n))
        .collect::<Result<_, _>>()?;
    db.enqueue_committed(&messages).await
}

fn ids(listing: &Value) -> Vec<Uuid> {
    listing["dead_letters"]
        .as_array()
        .expect("a dead_letters array")
        .iter()
        .map(|row| {
            row["id"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .expect("a UUID id")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_the_backlog_per_topic_and_the_dead_letters() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    backlog(&db, "orders", 3).await?;
    backlog(&db, "payments", 2).await?;
    dead_letters(&db, "parked", 4, "MessageTooLarge").await?;
    // A published row kept for retention is not backlog.
    backlog(&db, "done", 1).await?;
    sqlx::query("UPDATE outbox SET published_at = now() WHERE topic = 'done'")
        .execute(&db.pool)
        .await?;

    let status = admin_json(&db, &["status"]).await?;
    let topics: Vec<(String, i64)> = status["backlog"]["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().expect("topic").to_owned(),
                t["messages"].as_i64().expect("messages"),
            )
        })
        .collect();
    assert_eq!(
        topics,
        vec![("orders".to_owned(), 3), ("payments".to_owned(), 2)],
        "{status}"
    );
    assert_eq!(status["backlog"]["total"], 5, "{status}");
    assert!(status["backlog"]["oldest_age_seconds"].as_f64().is_some());
    assert_eq!(status["dead_letters"], 4, "{status}");
    assert_eq!(status["relays"], serde_json::json!([]), "no relay runs");

    let text = admin(&db, &["status"]).await?;
    assert!(
        text.contains("orders") && text.contains("Dead letters: 4"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_shown_replayed_and_purged_by_filter() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let a = dead_letters(&db, "topic-a", 3, "broker said MessageTooLarge").await?;
    let b = dead_letters(&db, "topic-b", 2, "Request Timeout").await?;
    let c = dead_letters(&db, "topic-c", 1, "unknown topic").await?;
    assert_eq!(db.dead_letter_count().await?, 6);

    // list: exactly the topic's dead letters, in order.
    let listing = admin_json(&db, &["dead-letters", "list", "--topic", "topic-a"]).await?;
    assert_eq!(ids(&listing), a);
    assert_eq!(listing["count"], 3);
    let listing = admin_json(
        &db,
        &[
            "dead-letters",
            "list",
            "--id",
            &c[0].to_string(),
            "--id",
            &b[1].to_string(),
        ],
    )
    .await?;
    assert_eq!(ids(&listing), vec![b[1], c[0]], "oldest first");
    let listing = admin_json(&db, &["dead-letters", "list", "--limit", "2"]).await?;
    assert_eq!(ids(&listing), a[..2]);
    let listing = admin_json(
        &db,
        &["dead-letters", "list", "--since", "2999-01-01T00:00:00Z"],
    )
    .await?;
    assert_eq!(listing["count"], 0);

    // show: payload and headers in full.
    let shown = admin(&db, &["dead-letters", "show", "--id", &a[1].to_string()]).await?;
    assert!(
        shown.contains(r#""topic":"topic-a""#) && shown.contains(r#""n":1"#),
        "{shown}"
    );
    assert!(shown.contains("trace: t-1"), "{shown}");
    let shown = admin_json(&db, &["dead-letters", "show", "--id", &a[1].to_string()]).await?;
    assert_eq!(shown["payload_encoding"], "utf8");
    assert_eq!(shown["headers"]["trace"], "t-1");
    let payload: Value = serde_json::from_str(shown["payload"].as_str().expect("payload"))?;
    assert_eq!(payload, serde_json::json!({ "topic": "topic-a", "n": 1 }));

    // replay --dry-run: reports, changes nothing.
    let dry = admin_json(
        &db,
        &["dead-letters", "replay", "--topic", "topic-a", "--dry-run"],
    )
    .await?;
    assert_eq!(ids(&dry), a);
    assert_eq!(db.dead_letter_count().await?, 6);
    assert_eq!(db.outbox_count().await?, 0);

    // replay: back into the outbox, in the original order.
    let done = admin_json(&db, &["dead-letters", "replay", "--topic", "topic-a"]).await?;
    assert_eq!(done["count"], 3);
    assert_eq!(db.dead_letter_count().await?, 3);
    let back: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY seq")
        .fetch_all(&db.pool)
        .await?;
    assert_eq!(back, a);

    // purge --error: only the matching ones (case-insensitive).
    let dry = admin_json(
        &db,
        &["dead-letters", "purge", "--error", "timeout", "--dry-run"],
    )
    .await?;
    assert_eq!(ids(&dry), b);
    assert_eq!(db.dead_letter_count().await?, 3);
    let done = admin_json(&db, &["dead-letters", "purge", "--error", "timeout"]).await?;
    assert_eq!(done["count"], 2);
    let left = admin_json(&db, &["dead-letters", "list"]).await?;
    assert_eq!(ids(&left), c);

    // Without a filter, replay and purge want --all.
    let (status, _, stderr) = run_relay_program_output(
        relay_program(),
        &["dead-letters", "purge", "--database-url", &db.url],
    )
    .await?;
    assert!(!status.success());
    assert!(stderr.contains("--all"), "{stderr}");
    assert_eq!(db.dead_letter_count().await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_admin_input_gets_a_clear_error_naming_the_flag() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let cases: [(&[&str], &str); 5] = [
        (&["dead-letters", "list", "--since", "yesterday"], "--since"),
        (
            &[
                "dead-letters",
                "replay",
                "--until",
                "2024-13-01",
                "--dry-run",
            ],
            "--until",
        ),
        (&["dead-letters", "show", "--id", "not-a-uuid"], "--id"),
        (&["dead-letters", "list", "--limit", "0"], "--limit"),
        (&["dead-letters", "frobnicate"], "frobnicate"),
    ];
    for (args, expected) in cases {
        let mut all = args.to_vec();
        all.extend(["--database-url", &db.url]);
        let (status, _, stderr) = run_relay_program_output(relay_program(), &all).await?;
        assert!(!status.success(), "{args:?} exited {status}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in: {stderr}"
        );
    }
    let (status, _, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "dead-letters",
            "list",
            "--since",
            "yesterday",
            "--database-url",
            &db.url,
        ],
    )
    .await?;
    assert!(!status.success());
    assert!(stderr.contains("RFC 3339"), "{stderr}");

    let missing = Uuid::now_v7().to_string();
    let (status, _, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "dead-letters",
            "show",
            "--id",
            &missing,
            "--database-url",
            &db.url,
        ],
    )
    .await?;
    assert!(!status.success());
    assert!(stderr.contains(&missing), "{stderr}");

    let (status, _, stderr) = run_relay_program_output(
        relay_program(),
        &[
            "status",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/nowhere",
            "--connect-timeout",
            "1s",
        ],
    )
    .await?;
    assert!(!status.success());
    assert!(stderr.contains("could not reach PostgreSQL"), "{stderr}");
    Ok(())
}
