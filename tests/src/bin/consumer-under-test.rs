//! An inbox consumer as a real child process, so that end-to-end tests can SIGKILL it mid-stream
//! (nothing committed, nothing cleaned up) and start others in the same group.
//!
//! Usage: `consumer-under-test DATABASE_URL BROKERS TOPIC GROUP LABEL`. It applies `Step` events
//! into the `effects` table (signed with LABEL) under the inbox name `effects`, until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use outbox_core::{CancellationToken, RetryPolicy};
use outbox_kafka::{InboxConsumer, Received};
use outbox_postgres::PgInbox;
use outbox_tests::consumers::{STEP, Step, consumer_config_for, record_step};
use sqlx::{Postgres, Transaction};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consumer-under-test: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [database_url, brokers, topic, group, label] = args.as_slice() else {
        anyhow::bail!("usage: consumer-under-test DATABASE_URL BROKERS TOPIC GROUP LABEL");
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let label: &'static str = Box::leak(label.clone().into_boxed_str());
    let consumer = InboxConsumer::builder(
        &consumer_config_for(brokers, group)?,
        PgInbox::new(pool),
        "effects",
    )
    .topics([topic.as_str()])
    .on(
        STEP,
        move |tx: &mut Transaction<'static, Postgres>, step: Step, received: &Received| {
            record_step(tx, step, received, label)
        },
    )
    .retry(RetryPolicy::default().backoff(
        std::time::Duration::from_millis(20),
        std::time::Duration::from_millis(200),
    )?)
    .build()?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            on_signal.cancel();
        }
    });
    let stats = consumer.run(shutdown).await?;
    eprintln!("consumer-under-test {label}: {stats:?}");
    Ok(())
}
