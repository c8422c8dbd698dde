//! The administration subcommands' shared parts and `status`; `dead-letters` is in
//! [`crate::dead_letters`]. They only need PostgreSQL.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use outbox_postgres::{OutboxStatus, PgStatus};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::cli::StatusArgs;
use crate::connect;
use crate::settings::{Database, DatabaseScope, SettingArgs, process_env};

/// Resolves the database settings, connects one connection's pool and checks the tables exist.
pub(crate) async fn open(
    args: &SettingArgs<DatabaseScope>,
) -> anyhow::Result<(PgPool, outbox_postgres::Tables)> {
    connect::open(&Database::resolve(args, &process_env)?).await
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
pub(crate) fn table<const N: usize>(rows: &[[String; N]]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = [
            ["A".to_owned(), "B".to_owned()],
            ["long".to_owned(), "x".to_owned()],
        ];
        assert_eq!(table(&rows), "A     B\nlong  x\n");
    }
}
