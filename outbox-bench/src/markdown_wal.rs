//! The WAL part's results as Markdown: write cost, drain and latency next to table mode.

use crate::markdown;
use crate::wal::{TABLE_MODE, WAL_MODE, WalReport};

/// Appends the WAL part's three tables: write cost, drain and latency, each with its target.
pub fn section(md: &mut String, w: &WalReport) {
    let c = &w.write_cost;
    let rows = c
        .kinds
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                format!("{:.3}", k.latency.p50_ms),
                format!("{:.3}", k.latency.p99_ms),
                format!("{:.3}", k.latency.mean_ms),
                format!("{:+.3}", k.added_ms),
                format!("{:+.1} %", k.added_percent),
            ]
        })
        .collect();
    markdown::section(
        md,
        &format!(
            "WAL capture next to table mode: write cost ({} transactions each; ms, BEGIN to end of COMMIT)",
            c.iterations
        ),
        &[
            "transaction",
            "p50",
            "p99",
            "mean",
            "added (p50, ms)",
            "added (p50)",
        ],
        rows,
        &format!(
            "Time a WAL-mode enqueue adds ÷ time a table-mode enqueue adds (one message, p50): **{:.2}** (target ≤ 0.5). One more round trip that writes nothing (`SELECT 1`) ÷ table-mode enqueue: {:.2}.",
            c.wal_vs_table_added, c.round_trip_vs_table_added
        ),
    );
    let d = &w.drain;
    let table = (d.table_before.per_second + d.table_after.per_second) / 2.0;
    let rows = [
        ("table mode (PgRelayStore), before", d.table_before),
        ("WAL mode (PgWalStore)", d.wal),
        ("table mode (PgRelayStore), after", d.table_after),
    ]
    .into_iter()
    .map(|(name, t)| {
        let mut row = vec![
            name.into(),
            format!("{:.2}", t.seconds),
            format!("{:.0}", t.per_second),
            format!("{:.2}", t.per_second / table.max(1e-9)),
        ];
        row.extend(match t.cpu {
            Some(u) => [
                format!("{:.0} %", u.process_seconds / t.seconds.max(1e-9) * 100.0),
                format!("{:.1}", crate::cpu::micros_per_message(u, t.messages)),
                format!("{:.0} %", u.machine_idle * 100.0),
            ],
            None => [String::new(), String::new(), String::new()],
        });
        row
    })
    .collect();
    markdown::section(
        md,
        &format!(
            "WAL capture next to table mode: drain ({} messages, commit → last message settled)",
            d.backlog
        ),
        &[
            "relay",
            "seconds",
            "msg/s",
            "÷ mean of the table drains",
            "relay process on CPU (100 % = one core)",
            "relay CPU µs per message",
            "machine idle",
        ],
        rows,
        &format!(
            "WAL drain ÷ table drain: **{:.2}** (target ≥ 1.5). The WAL relay reads up to {} messages ahead of what it settled.",
            d.wal_vs_table, d.wal_buffer_messages
        ),
    );
    let l = &w.latency;
    let ms = |v: f64| format!("{v:.1}");
    let mut rows: Vec<Vec<String>> = l
        .points
        .iter()
        .map(|p| {
            let capture = if p.mode == WAL_MODE {
                "WAL mode".to_owned()
            } else {
                format!("table mode ({})", p.mode)
            };
            let mut row = markdown::latency_cells(capture, p);
            row.extend([
                ms(p.handed.p99_ms),
                ms(p.publish.p99_ms),
                ms(p.wake_delay.p99_ms),
            ]);
            row
        })
        .collect();
    rows.extend(l.broker_floor.iter().map(|f| {
        let mut row = markdown::broker_floor_cells(f);
        row.extend([String::new(), ms(f.ack.p99_ms), String::new()]);
        row
    }));
    let ratios: Vec<String> = l
        .points
        .iter()
        .filter(|p| p.mode == WAL_MODE)
        .filter_map(|wal| {
            let table = l.point(TABLE_MODE, wal.offered)?;
            Some(format!(
                "{}/s: p50 {:.2}, p99 {:.2}",
                wal.offered,
                wal.ack.p50_ms / table.ack.p50_ms.max(1e-9),
                wal.ack.p99_ms / table.ack.p99_ms.max(1e-9)
            ))
        })
        .collect();
    let at_1000 = l
        .point(WAL_MODE, 1000)
        .map_or("not measured".to_owned(), |p| {
            format!("**{:.1} ms**", p.ack.p99_ms)
        });
    markdown::section(
        md,
        &format!(
            "WAL capture next to table mode: latency ({} s per load; ms)",
            l.seconds
        ),
        &[
            "capture",
            "offered msg/s",
            "achieved",
            "commit→ack p50",
            "p99",
            "max",
            "commit→receipt p50",
            "p99",
            "max",
            "commit→hand-over p99",
            "hand-over→ack p99",
            "1 ms sleep woke late, p99",
        ],
        rows,
        &format!(
            "WAL commit → ack p99 at 1,000 msg/s: {at_1000} (target ≤ 20 ms). WAL ÷ table, commit → ack: {}. Hand-over: the relay handed the message to its publisher (claimed and sent); the two legs are the capture side's and the publishing side's share of commit → ack (the broker alone's send → ack sits in that column). The last column is how late a thread that sleeps 1 ms woke up during the load, at p99: what any process of the machine waited for a core then. Table mode: NOTIFY on commit; WAL mode: woken by the replication stream; both relays poll every {} ms.",
            ratios.join("; "),
            l.poll_interval_ms
        ),
    );
}
