//! Part 4, write path: what enqueuing adds to a business transaction that inserts one row.
//!
//! The kinds of transaction take turns on one connection (so that drift and noise hit them alike);
//! each is timed from `BEGIN` to the end of `COMMIT`.

use std::time::Duration;

use outbox_postgres::PgOutbox;
use sqlx::{Connection, PgConnection};

use crate::Options;
use crate::env::Bench;
use crate::stats::Summary;
use crate::workload::{Extra, business_tx, message};

/// Rounds run first and not counted.
const WARM_UP_ROUNDS: u32 = 50;

/// What a kind of transaction does besides its business row.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    /// Nothing: the baseline.
    Alone,
    /// `SELECT 1`: one more round trip.
    RoundTrip,
    /// Enqueues this many messages through this outbox (table or WAL mode).
    Enqueue(usize, &'a PgOutbox),
    /// Inserts one row into Debezium's outbox table.
    Debezium,
}

impl Kind<'_> {
    fn messages(self) -> usize {
        match self {
            Self::Enqueue(count, _) => count,
            Self::Debezium => 1,
            Self::Alone | Self::RoundTrip => 0,
        }
    }
}

/// One kind of transaction, measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WriteKind {
    /// What it does.
    pub name: String,
    /// Messages enqueued.
    pub messages: usize,
    /// Its duration, BEGIN to COMMIT.
    pub latency: Summary,
    /// Median over the business-row-only median, minus one, in percent.
    pub added_percent: f64,
    /// Median minus the business-row-only median, in ms.
    #[serde(default)]
    pub added_ms: f64,
}

/// Results of the write-path part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WritePathReport {
    /// Transactions of each kind.
    pub iterations: u32,
    /// The kinds, the business row alone first.
    pub kinds: Vec<WriteKind>,
}

impl WritePathReport {
    /// The added latency of the kind enqueuing one message with wake-ups (the default).
    pub fn one_message_added_percent(&self) -> Option<f64> {
        self.kinds.get(1).map(|kind| kind.added_percent)
    }
}

/// Runs the write-path part.
///
/// # Errors
/// When the database fails.
pub async fn run(bench: &Bench, options: &Options) -> anyhow::Result<WritePathReport> {
    let iterations = options.write_path_iterations();
    crate::progress(format!(
        "write path: {iterations} transactions of each kind"
    ));
    let (notify, quiet) = (PgOutbox::new(), PgOutbox::new().notify(false));
    let kinds = measure(
        bench,
        iterations,
        &[
            ("business row only", Kind::Alone),
            ("+ 1 message", Kind::Enqueue(1, &notify)),
            ("+ 1 message, no NOTIFY", Kind::Enqueue(1, &quiet)),
            ("+ 10 messages", Kind::Enqueue(10, &notify)),
            (
                "+ SELECT 1 (one more round trip, no message)",
                Kind::RoundTrip,
            ),
        ],
    )
    .await?;
    Ok(WritePathReport { iterations, kinds })
}

/// Runs `iterations` transactions of each of `kinds` (the first is the baseline the others are
/// compared with) taking turns on one connection, after a warm-up, on an emptied outbox.
///
/// # Errors
/// When the database fails.
pub async fn measure(
    bench: &Bench,
    iterations: u32,
    kinds: &[(&str, Kind<'_>)],
) -> anyhow::Result<Vec<WriteKind>> {
    bench.reset().await?;
    let mut conn = PgConnection::connect_with(&bench.connect).await?;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut n = 0_u64;
    for round in 0..WARM_UP_ROUNDS + iterations {
        for offset in 0..kinds.len() {
            // Rotate the order every round so that no kind always follows the same one.
            let index = (round as usize + offset) % kinds.len();
            let count = kinds[index].1.messages() as u64;
            let messages = (n..n + count)
                .map(|i| message("bench-write-path", i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            n += count;
            let extra = match kinds[index].1 {
                Kind::Alone => Extra::Nothing,
                Kind::RoundTrip => Extra::RoundTrip,
                Kind::Enqueue(_, outbox) => Extra::Enqueue(outbox, &messages),
                Kind::Debezium => Extra::Debezium(&messages),
            };
            let took = business_tx(&mut conn, (n % 1000) as i32, extra).await?;
            if round >= WARM_UP_ROUNDS {
                samples[index].push(took);
            }
        }
    }
    conn.close().await?;
    bench.reset().await?;
    let summaries: Vec<Summary> = samples.into_iter().map(Summary::of).collect();
    let base = summaries.first().map_or(0.0, |s| s.p50_ms);
    Ok(kinds
        .iter()
        .zip(summaries)
        .map(|((name, kind), latency)| WriteKind {
            name: (*name).into(),
            messages: kind.messages(),
            added_percent: (latency.p50_ms / base.max(1e-9) - 1.0) * 100.0,
            added_ms: latency.p50_ms - base,
            latency,
        })
        .collect())
}
