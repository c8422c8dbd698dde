//! `outbox-relay dead-letters list|show|replay|purge`. It only needs PostgreSQL.

use std::fmt::Write as _;

use anyhow::Context;
use outbox_postgres::{DeadLetter, DeadLetterFilter, DeadLetterRow, PgDeadLetters, PgOutbox};
use serde_json::{Value, json};

use crate::admin::{open, table};
use crate::cli::{
    DeadLetterChangeArgs, DeadLetterFilterArgs, DeadLetterListArgs, DeadLetterShowArgs,
};

fn filter(args: &DeadLetterFilterArgs) -> DeadLetterFilter {
    DeadLetterFilter {
        ids: (!args.ids.is_empty()).then(|| args.ids.clone()),
        topic: args.topic.clone(),
        key: args.key.clone().map(String::into_bytes),
        error_contains: args.error.clone(),
        since: args.since,
        until: args.until,
        limit: args.limit,
    }
}

/// Bytes as UTF-8 text when valid, else as hex; returns the text and its encoding.
fn bytes_text(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            bytes.iter().fold(String::new(), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            }),
            "hex",
        ),
    }
}

fn key_json(key: Option<&[u8]>) -> (Value, Value) {
    match key.map(bytes_text) {
        Some((text, encoding)) => (json!(text), json!(encoding)),
        None => (Value::Null, Value::Null),
    }
}

fn row_json(row: &DeadLetterRow) -> Value {
    let (key, key_encoding) = key_json(row.key.as_deref());
    json!({
        "seq": row.seq,
        "id": row.id,
        "topic": row.topic,
        "key": key,
        "key_encoding": key_encoding,
        "event_type": row.event_type,
        "payload_bytes": row.payload_bytes,
        "attempts": row.attempts,
        "error": row.error,
        "created_at": row.created_at.to_rfc3339(),
        "dead_lettered_at": row.dead_lettered_at.to_rfc3339(),
    })
}

fn rows_text(rows: &[DeadLetterRow]) -> String {
    let mut table_rows = vec![[
        "SEQ".to_owned(),
        "ID".to_owned(),
        "TOPIC".to_owned(),
        "KEY".to_owned(),
        "ATTEMPTS".to_owned(),
        "DEAD-LETTERED AT".to_owned(),
        "ERROR".to_owned(),
    ]];
    for row in rows {
        let key = row.key.as_deref().map_or_else(
            || "-".to_owned(),
            |key| match bytes_text(key) {
                (text, "utf8") => text,
                (hex, _) => format!("0x{hex}"),
            },
        );
        let error: String = row.error.lines().next().unwrap_or_default().to_owned();
        let error = if error.chars().count() > 80 {
            format!("{}…", error.chars().take(79).collect::<String>())
        } else {
            error
        };
        table_rows.push([
            row.seq.to_string(),
            row.id.to_string(),
            row.topic.clone(),
            key,
            row.attempts.to_string(),
            row.dead_lettered_at.to_rfc3339(),
            error,
        ]);
    }
    table(&table_rows)
}

/// `outbox-relay dead-letters list`.
pub async fn list(args: DeadLetterListArgs) -> anyhow::Result<()> {
    let (pool, tables) = open(&args.database).await?;
    let rows = PgDeadLetters::new(pool.clone(), &tables)
        .list(&filter(&args.filter))
        .await
        .context("listing dead letters")?;
    pool.close().await;
    if args.json {
        println!(
            "{}",
            json!({
                "count": rows.len(),
                "dead_letters": rows.iter().map(row_json).collect::<Vec<_>>(),
            })
        );
    } else if rows.is_empty() {
        println!("no matching dead letters");
    } else {
        print!("{}", rows_text(&rows));
        println!("{} dead letter(s)", rows.len());
    }
    Ok(())
}

/// `outbox-relay dead-letters show`.
pub async fn show(args: DeadLetterShowArgs) -> anyhow::Result<()> {
    let (pool, tables) = open(&args.database).await?;
    let found = PgDeadLetters::new(pool.clone(), &tables)
        .show(args.id)
        .await
        .context("reading the dead letter")?;
    pool.close().await;
    let Some(letter) = found else {
        anyhow::bail!("no dead letter with --id {}", args.id);
    };
    if args.json {
        println!("{}", letter_json(&letter));
    } else {
        print!("{}", letter_text(&letter));
    }
    Ok(())
}

fn letter_json(letter: &DeadLetter) -> Value {
    let (key, key_encoding) = key_json(letter.key.as_deref());
    let (payload, payload_encoding) = bytes_text(&letter.payload);
    json!({
        "seq": letter.seq,
        "id": letter.id,
        "slot": letter.slot,
        "topic": letter.topic,
        "key": key,
        "key_encoding": key_encoding,
        "event_type": letter.event_type,
        "source": letter.source,
        "content_type": letter.content_type,
        "headers": letter.headers,
        "payload": payload,
        "payload_encoding": payload_encoding,
        "payload_bytes": letter.payload.len(),
        "attempts": letter.attempts,
        "error": letter.error,
        "created_at": letter.created_at.to_rfc3339(),
        "dead_lettered_at": letter.dead_lettered_at.to_rfc3339(),
    })
}

fn letter_text(letter: &DeadLetter) -> String {
    let mut out = String::new();
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let key = match letter.key.as_deref().map(bytes_text) {
        None => "-".to_owned(),
        Some((text, "utf8")) => text,
        Some((hex, _)) => format!("{hex} (hex: not UTF-8)"),
    };
    let _ = writeln!(out, "id:               {}", letter.id);
    let _ = writeln!(out, "seq:              {}", letter.seq);
    let _ = writeln!(out, "topic:            {}", letter.topic);
    let _ = writeln!(out, "key:              {key}");
    let _ = writeln!(out, "event type:       {}", optional(&letter.event_type));
    let _ = writeln!(out, "source:           {}", optional(&letter.source));
    let _ = writeln!(out, "content type:     {}", letter.content_type);
    let _ = writeln!(out, "created at:       {}", letter.created_at.to_rfc3339());
    let _ = writeln!(
        out,
        "dead-lettered at: {}",
        letter.dead_lettered_at.to_rfc3339()
    );
    let _ = writeln!(out, "attempts:         {}", letter.attempts);
    let _ = writeln!(out, "error:            {}", letter.error);
    let headers = letter
        .headers
        .as_object()
        .map(|headers| {
            headers
                .iter()
                .map(|(name, value)| match value {
                    Value::String(text) => format!("  {name}: {text}\n"),
                    other => format!("  {name}: {other}\n"),
                })
                .collect::<String>()
        })
        .unwrap_or_else(|| format!("  {}\n", letter.headers));
    let _ = write!(
        out,
        "headers:{}",
        if headers.is_empty() {
            " (none)\n".to_owned()
        } else {
            format!("\n{headers}")
        }
    );
    match bytes_text(&letter.payload) {
        (text, "utf8") => {
            let _ = writeln!(out, "payload ({} bytes):\n{text}", letter.payload.len());
        }
        (hex, _) => {
            let _ = writeln!(
                out,
                "payload ({} bytes, not valid UTF-8, shown as hex):\n{hex}",
                letter.payload.len()
            );
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Change {
    Replay,
    Purge,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Purge => "purge",
        }
    }
}

/// `outbox-relay dead-letters replay`.
pub async fn replay(args: DeadLetterChangeArgs) -> anyhow::Result<()> {
    change(args, Change::Replay).await
}

/// `outbox-relay dead-letters purge`.
pub async fn purge(args: DeadLetterChangeArgs) -> anyhow::Result<()> {
    change(args, Change::Purge).await
}

async fn change(args: DeadLetterChangeArgs, change: Change) -> anyhow::Result<()> {
    let verb = change.verb();
    if args.filter.is_empty() && !args.all {
        anyhow::bail!(
            "refusing to {verb} every dead letter without a filter: give --id, --topic, --key, --error, --since, --until or --limit, or --all"
        );
    }
    let (pool, tables) = open(&args.database).await?;
    let dead_letters = PgDeadLetters::new(pool.clone(), &tables);
    let filter = filter(&args.filter);
    let result = if args.dry_run {
        let rows = dead_letters
            .list(&filter)
            .await
            .context("listing dead letters")?;
        if args.json {
            println!(
                "{}",
                json!({
                    "action": verb,
                    "dry_run": true,
                    "count": rows.len(),
                    "dead_letters": rows.iter().map(row_json).collect::<Vec<_>>(),
                })
            );
        } else {
            println!("dry run: would {verb} {} dead letter(s)", rows.len());
            if !rows.is_empty() {
                print!("{}", rows_text(&rows));
            }
        }
        Ok(())
    } else {
        let done = match (change, &args.wal_prefix) {
            (Change::Replay, None) => dead_letters.replay(&filter).await,
            (Change::Replay, Some(prefix)) => match PgOutbox::wal().wal_prefix(prefix) {
                Ok(outbox) => dead_letters.replay_through(&filter, &outbox).await,
                Err(error) => Err(error),
            },
            (Change::Purge, _) => dead_letters.purge(&filter).await,
        }
        .with_context(|| format!("{verb} of dead letters failed; nothing changed"));
        done.map(|count| {
            if args.json {
                println!(
                    "{}",
                    json!({ "action": verb, "dry_run": false, "count": count })
                );
            } else {
                match change {
                    Change::Replay if args.wal_prefix.is_some() => {
                        println!("replayed {count} dead letter(s) into the WAL")
                    }
                    Change::Replay => {
                        println!("replayed {count} dead letter(s) into the outbox")
                    }
                    Change::Purge => println!("purged {count} dead letter(s)"),
                }
            }
        })
    };
    pool.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_text_when_valid_utf8_else_hex() {
        assert_eq!(bytes_text(b"{\"a\":1}"), ("{\"a\":1}".to_owned(), "utf8"));
        assert_eq!(
            bytes_text(&[0xff, 0x00, 0x1a]),
            ("ff001a".to_owned(), "hex")
        );
    }
}
