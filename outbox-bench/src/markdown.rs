//! A report as Markdown: a line on the machine, then one table per part and the targets.

use std::fmt::Write as _;

use crate::drain::DrainReport;
use crate::latency::{BrokerFloor, LatencyPoint, LatencyReport};
use crate::report::Report;
use crate::scaling::ScalingReport;
use crate::sustained::SustainedReport;
use crate::write_path::WritePathReport;

/// Appends a section: a heading, a table whose first column is left-aligned and the others
/// right-aligned, and an optional note under it.
pub fn section(
    md: &mut String,
    heading: &str,
    columns: &[&str],
    rows: Vec<Vec<String>>,
    note: &str,
) {
    let _ = writeln!(md, "### {heading}\n\n| {} |", columns.join(" | "));
    let align: Vec<&str> = (0..columns.len())
        .map(|i| if i == 0 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(md, "| {} |", align.join(" | "));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    if !note.is_empty() {
        let _ = writeln!(md, "\n{note}");
    }
    md.push('\n');
}

/// Renders `report`.
pub fn render(report: &Report) -> String {
    let mut md = String::new();
    let (m, s) = (&report.machine, &report.settings);
    let quick = if s.quick { " (--quick)" } else { "" };
    let _ = writeln!(
        md,
        "Run of {}{quick}: {} cores ({}), {} GiB, kernel {}, load average {} at start and {} at the end; {}; broker {}; {}; code at {}.\n",
        m.started_at,
        m.cores,
        m.cpu,
        m.memory_gib,
        m.kernel,
        m.load_average,
        report.load_average_at_end,
        m.postgres,
        m.broker,
        m.rustc,
        m.revision
    );
    let properties = if s.producer_properties.is_empty() {
        "the relay's producer defaults".to_owned()
    } else {
        format!("producer properties {}", s.producer_properties.join(", "))
    };
    let _ = writeln!(
        md,
        "Messages of {} bytes over {} keys, batch size {}, {} partitions per topic with {} replica(s), {} writer connections, {properties}.\n",
        s.payload_bytes, s.keys, s.batch_size, s.partitions, s.replication_factor, s.writers
    );
    if let Some(drain) = &report.drain {
        drain_section(&mut md, drain);
    }
    if let Some(sustained) = &report.sustained {
        sustained_section(&mut md, sustained);
    }
    if let Some(latency) = &report.latency {
        latency_section(&mut md, latency);
    }
    if let Some(write_path) = &report.write_path {
        write_path_section(&mut md, write_path);
    }
    if let Some(scaling) = &report.scaling {
        scaling_section(&mut md, scaling);
    }
    if let Some(wal) = &report.wal {
        crate::markdown_wal::section(&mut md, wal);
    }
    if let Some(peers) = &report.peers {
        crate::markdown_peers::section(&mut md, peers);
    }
    let rows = report
        .targets
        .iter()
        .map(|t| {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            vec![
                t.name.clone(),
                t.goal.clone(),
                t.measured.clone(),
                met.into(),
            ]
        })
        .collect();
    section(
        &mut md,
        "Targets",
        &["target", "goal", "measured", "met"],
        rows,
        "",
    );
    md
}

fn drain_section(md: &mut String, d: &DrainReport) {
    let rows = [
        ("relay (engine, PgRelayStore, KafkaPublisher)", d.relay),
        ("(a) raw claim+delete, no publishing", d.raw_claim_delete),
        (
            "(b) raw produce, no database, before the relay",
            d.raw_produce,
        ),
        (
            "(b) raw produce, no database, after the relay",
            d.raw_produce_after,
        ),
        (
            "(d) a and b at once, uncoupled: the machine's ceiling",
            d.both_at_once,
        ),
        (
            "(c) naive relay, one message per transaction (sample)",
            d.naive,
        ),
    ]
    .into_iter()
    .map(|(name, t)| {
        vec![
            name.into(),
            t.messages.to_string(),
            format!("{:.2}", t.seconds),
            format!("{:.0}", t.per_second),
            format!("{:.2}", d.relay.per_second / t.per_second.max(1e-9)),
        ]
    })
    .collect();
    section(
        md,
        &format!("Drain ({} messages)", d.backlog),
        &["what", "messages", "seconds", "msg/s", "relay ÷ this"],
        rows,
        &format!(
            "Relay ÷ d = {:.2}; relay ÷ min(a, mean of the two b) = {:.2}. Naive relay sample: {}.",
            d.relay_vs_both, d.relay_vs_baselines, d.naive_sample
        ),
    );
}

fn sustained_section(md: &mut String, s: &SustainedReport) {
    let rows = [
        ("relay to Kafka", &s.relay),
        ("raw claim+delete, no Kafka (ceiling)", &s.ceiling),
    ]
    .into_iter()
    .map(|(name, search)| {
        let steps: Vec<String> = search
            .steps
            .iter()
            .map(|st| {
                let kept = if st.kept_up { "✓" } else { "✗" };
                let saturated = if st.saturated { "ˢ" } else { "" };
                format!("{:.0}→{:.0}{kept}{saturated}", st.offered, st.achieved)
            })
            .collect();
        vec![
            name.into(),
            format!("{:.0}", search.highest),
            steps.join(", "),
        ]
    })
    .collect();
    section(
        md,
        &format!("Sustained ({} s per rate)", s.step_seconds),
        &[
            "drain",
            "highest rate kept up with (msg/s)",
            "rates tried (offered → achieved; ✓ kept up, ✗ not, ˢ writers saturated)",
        ],
        rows,
        &format!("Kept up: {}.", s.criterion),
    );
}

/// A latency point's first nine cells: its label, offered and achieved rates, and commit → ack
/// and commit → receipt p50, p99 and max (ms).
pub fn latency_cells(label: String, p: &LatencyPoint) -> Vec<String> {
    let ms = |v: f64| format!("{v:.1}");
    vec![
        label,
        p.offered.to_string(),
        format!("{:.0}", p.achieved),
        ms(p.ack.p50_ms),
        ms(p.ack.p99_ms),
        ms(p.ack.max_ms),
        ms(p.receipt.p50_ms),
        ms(p.receipt.p99_ms),
        ms(p.receipt.max_ms),
    ]
}

/// The broker alone's row in the same columns: its send → ack in the commit → ack cells, the three
/// receipt cells empty.
pub fn broker_floor_cells(f: &BrokerFloor) -> Vec<String> {
    let ms = |v: f64| format!("{v:.1}");
    let mut row = vec![
        "broker alone (send→ack, no database)".into(),
        f.offered.to_string(),
        f.offered.to_string(),
        ms(f.ack.p50_ms),
        ms(f.ack.p99_ms),
        ms(f.ack.max_ms),
    ];
    row.extend([String::new(), String::new(), String::new()]);
    row
}

fn latency_section(md: &mut String, l: &LatencyReport) {
    let mut rows: Vec<Vec<String>> = l
        .points
        .iter()
        .map(|p| latency_cells(p.mode.clone(), p))
        .collect();
    rows.extend(l.broker_floor.iter().map(broker_floor_cells));
    section(
        md,
        &format!("Latency ({} s per load; ms)", l.seconds),
        &[
            "mode",
            "offered msg/s",
            "achieved",
            "commit→ack p50",
            "p99",
            "max",
            "commit→receipt p50",
            "p99",
            "max",
        ],
        rows,
        &format!(
            "Wake-ups: NOTIFY on commit, relay poll interval {} ms. Polling: no NOTIFY, relay poll interval {} ms.",
            l.wake_up_poll_interval_ms, l.polling_interval_ms
        ),
    );
}

fn write_path_section(md: &mut String, w: &WritePathReport) {
    let rows = w
        .kinds
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                format!("{:.3}", k.latency.p50_ms),
                format!("{:.3}", k.latency.p99_ms),
                format!("{:.3}", k.latency.mean_ms),
                format!("{:+.1} %", k.added_percent),
            ]
        })
        .collect();
    section(
        md,
        &format!(
            "Write path ({} transactions each; ms, BEGIN to end of COMMIT)",
            w.iterations
        ),
        &["transaction", "p50", "p99", "mean", "added (p50)"],
        rows,
        "",
    );
}

fn scaling_section(md: &mut String, sc: &ScalingReport) {
    let rows = sc
        .points
        .iter()
        .map(|p| {
            vec![
                p.relays.to_string(),
                format!("{:.2}", p.drain.seconds),
                format!("{:.0}", p.drain.per_second),
                format!("{:.2}", p.speedup),
            ]
        })
        .collect();
    section(
        md,
        &format!(
            "Scaling ({} messages per run, lanes balanced before the clock starts)",
            sc.backlog
        ),
        &["relays", "seconds", "msg/s", "÷ one relay"],
        rows,
        "",
    );
}
