//! The administration subcommands: `status` and `dead-letters`. They only need PostgreSQL.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use outbox_postgres::{
    DeadLetter, DeadLetterFilter, DeadLetterRow, OutboxStatus, PgDeadLetters, PgOutbox, PgStatus,
};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::cli::{
    DatabaseArgs, DeadLetterChangeArgs, DeadLetterFilterArgs, DeadLetterListArgs,
    DeadLetterShowArgs, StatusArgs,
};
use crate::connect;

/// Connects one connection's pool and checks the tables exist.
pub(crate) async fn open(args: &DatabaseArgs) -> anyhow::Result<(PgPool, outbox_postgres::Tables)> {
    let tables = connect::tables(args)?;
    let pool = connect::database(args, 1).await?;
    connect::require_schema(&pool, &tables).await?;
    Ok((pool, tables))
}

/// `outbox-relay status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (pool, tables) = open(&args.database).await?;
    let status = PgStatus::new(pool.clone(), &tables)
        .status()
        .await
        .context("reading the outbox status")?;
    pool.close().await;
    if args.json {
        println!("{}", status_json(&status));
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

fn status_json(status: &OutboxStatus) -> Value {
    json!({
        "backlog": {
            "total": status.backlog_total(),
            "oldest_created_at": status.oldest_created_at().map(|t| t.to_rfc3339()),
            "oldest_age_seconds": status.oldest_age().map(|age| age.as_secs_f64()),
            "topics": status.backlog.iter().map(|topic| json!({
                "topic": topic.topic,
                "messages": topic.messages,
                "oldest_created_at": topic.oldest_created_at.to_rfc3339(),
                "oldest_age_seconds": topic.oldest_age.as_secs_f64(),
            })).collect::<Vec<_>>(),
        },
        "dead_letters": status.dead_letters,
        "relays": status.relays.iter().map(|relay| json!({
            "pid": relay.pid,
            "client_addr": relay.client_addr,
            "backend_start": relay.backend_start.map(|t| t.to_rfc3339()),
            "lanes": relay.lanes,
        })).collect::<Vec<_>>(),
        "open_writers": status.writers.iter().map(|writer| json!({
            "pid": writer.pid,
            "application_name": writer.application_name,
            "client_addr": writer.client_addr,
            "state": writer.state,
            "open_seconds": writer.open_for.as_secs_f64(),
            "query": writer.query,
        })).collect::<Vec<_>>(),
    })
}

fn age(age: Duration) -> String {
    humantime::format_duration(Duration::from_secs(age.as_secs())).to_string()
}

fn status_text(status: &OutboxStatus) -> String {
    let mut out = String::new();
    let mut rows = vec![[
        "TOPIC".to_owned(),
        "UNPUBLISHED".to_owned(),
        "OLDEST AGE".to_owned(),
    ]];
    for topic in &status.backlog {
        rows.push([
            topic.topic.clone(),
            topic.messages.to_string(),
            age(topic.oldest_age),
        ]);
    }
    rows.push([
        "(total)".to_owned(),
        status.backlog_total().to_string(),
        status.oldest_age().map_or_else(|| "-".to_owned(), age),
    ]);
    out.push_str("Backlog\n");
    out.push_str(&table(&rows));
    let _ = writeln!(out, "\nDead letters: {}\n", status.dead_letters);
    let _ = writeln!(out, "Relays: {}", status.relays.len());
    if !status.relays.is_empty() {
        let mut rows = vec![[
            "PID".to_owned(),
            "CLIENT".to_owned(),
            "STARTED".to_owned(),
            "LANES".to_owned(),
        ]];
        for relay in &status.relays {
            rows.push([
                relay.pid.to_string(),
                relay
                    .client_addr
                    .clone()
                    .unwrap_or_else(|| "local".to_owned()),
                relay
                    .backend_start
                    .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339()),
                relay.lanes.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    let _ = writeln!(
        out,
        "\nOpen enqueuing transactions: {}",
        status.writers.len()
    );
    if !status.writers.is_empty() {
        out.push_str(
            "(nothing numbered after the oldest one's messages is published until it ends)\n",
        );
        let mut rows = vec![[
            "PID".to_owned(),
            "APPLICATION".to_owned(),
            "STATE".to_owned(),
            "OPEN FOR".to_owned(),
            "LAST STATEMENT".to_owned(),
        ]];
        for writer in &status.writers {
            let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
            rows.push([
                writer.pid.to_string(),
                text(&writer.application_name),
                text(&writer.state),
                age(writer.open_for),
                text(&writer.query).replace('\n', " "),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// Left-aligned columns separated by two spaces.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (n, (cell, width)) in row.iter().zip(widths).enumerate() {
            if n + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

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
pub async fn dead_letters_list(args: DeadLetterListArgs) -> anyhow::Result<()> {
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
pub async fn dead_letters_show(args: DeadLetterShowArgs) -> anyhow::Result<()> {
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
pub async fn dead_letters_replay(args: DeadLetterChangeArgs) -> anyhow::Result<()> {
    change(args, Change::Replay).await
}

/// `outbox-relay dead-letters purge`.
pub async fn dead_letters_purge(args: DeadLetterChangeArgs) -> anyhow::Result<()> {
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

    #[test]
    fn tables_align_columns() {
        let rows = [
            ["A".to_owned(), "B".to_owned()],
            ["long".to_owned(), "x".to_owned()],
        ];
        assert_eq!(table(&rows), "A     B\nlong  x\n");
    }
}
