//! The peers part's results as Markdown: Debezium next to the relay and the broker alone (the
//! relay ÷ Debezium ratios are among the report's targets).

use crate::markdown;
use crate::peers::{PeerPoint, PeersReport};

fn delivery(p: &PeerPoint) -> String {
    let d = &p.delivery;
    if d.ok() {
        format!("all {} in per-key order", d.committed)
    } else {
        format!(
            "**{} missing, {} keys reordered** of {}",
            d.missing, d.reordered_keys, d.committed
        )
    }
}

/// Appends the peers part's table and ratios.
pub fn section(md: &mut String, r: &PeersReport) {
    let mut rows: Vec<Vec<String>> = r
        .drain
        .iter()
        .map(|p| {
            vec![
                p.peer.clone(),
                format!("drain of {}", p.delivery.committed),
                format!("{:.0} msg/s", p.throughput.per_second),
                delivery(p),
            ]
        })
        .collect();
    rows.extend(r.latency.iter().map(|p| {
        vec![
            p.peer.clone(),
            format!("latency at {}/s", p.offered),
            format!(
                "p50 {:.1} / p99 {:.1} / max {:.1} ms",
                p.receipt.p50_ms, p.receipt.p99_ms, p.receipt.max_ms
            ),
            delivery(p),
        ]
    }));
    rows.extend(r.write_cost.iter().map(|k| {
        vec![
            k.name.clone(),
            "write cost".into(),
            format!("p50 {:.3} ms ({:+.3} ms)", k.latency.p50_ms, k.added_ms),
            String::new(),
        ]
    }));
    rows.extend(r.broker_floor.iter().map(|f| {
        vec![
            "the broker alone".into(),
            format!("send → ack at {}/s", f.offered),
            format!(
                "p50 {:.1} / p99 {:.1} / max {:.1} ms",
                f.ack.p50_ms, f.ack.p99_ms, f.ack.max_ms
            ),
            String::new(),
        ]
    }));
    let note = match &r.debezium_error {
        Some(error) => format!(
            "Debezium: **{error}** (instance {}). The relay ÷ Debezium ratios are with the targets.",
            r.debezium_dir
        ),
        None => "The relay ÷ Debezium ratios are with the targets.".into(),
    };
    markdown::section(
        md,
        "Debezium next to the relay (commit → read by a consumer of the topic)",
        &["publisher", "measurement", "result", "order and loss"],
        rows,
        &note,
    );
}
