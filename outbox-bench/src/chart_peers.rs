//! The peers part's charts: commit → receipt against offered load for each publisher next to the
//! broker alone, and the drain rates as bars.

use crate::chart::{Bar, Series, bars_svg, lines_svg};
use crate::peers::PeersReport;

/// A publisher's colour, the same in both charts.
fn color(peer: &str) -> &'static str {
    match peer {
        "relay, table mode" => "#1f77b4",
        "relay, WAL mode" => "#2ca02c",
        "Debezium" => "#d62728",
        _ => "#9467bd",
    }
}

/// The publishers in the order they were measured.
fn peers(r: &PeersReport) -> Vec<&str> {
    let mut peers: Vec<&str> = Vec::new();
    for point in r.drain.iter().chain(&r.latency) {
        if !peers.contains(&point.peer.as_str()) {
            peers.push(&point.peer);
        }
    }
    peers
}

/// Commit → receipt p50 and p99 against offered load, one colour per publisher, and the broker's
/// send → ack p99; `None` when no latency run was measured.
pub fn latency(r: &PeersReport) -> Option<String> {
    if r.latency.is_empty() {
        return None;
    }
    let mut lines = Vec::new();
    for peer in peers(r) {
        let points = |value: fn(&crate::peers::PeerPoint) -> f64| {
            r.latency
                .iter()
                .filter(|p| p.peer == peer)
                .map(|p| (f64::from(p.offered), value(p)))
                .collect::<Vec<_>>()
        };
        lines.push(Series {
            label: format!("{peer}: p50"),
            color: color(peer),
            dash: "",
            points: points(|p| p.receipt.p50_ms),
        });
        lines.push(Series {
            label: format!("{peer}: p99"),
            color: color(peer),
            dash: "6 4",
            points: points(|p| p.receipt.p99_ms),
        });
    }
    if !r.broker_floor.is_empty() {
        lines.push(Series {
            label: "broker alone: send→ack p99".into(),
            color: "#7f7f7f",
            dash: "2 3",
            points: r
                .broker_floor
                .iter()
                .map(|f| (f64::from(f.offered), f.ack.p99_ms))
                .collect(),
        });
    }
    Some(lines_svg(
        "Commit → receipt by a consumer, against offered load",
        &lines,
        "the same 200-byte messages over 1,000 keys, the same PostgreSQL, broker and consumer",
    ))
}

/// The drain rates of the same committed backlog as bars; `None` when no drain was measured.
pub fn drain(r: &PeersReport) -> Option<String> {
    if r.drain.is_empty() {
        return None;
    }
    let bars: Vec<Bar> = r
        .drain
        .iter()
        .map(|p| Bar {
            label: p.peer.clone(),
            value: p.throughput.per_second,
            color: color(&p.peer),
        })
        .collect();
    let backlog = r.drain.first().map_or(0, |p| p.delivery.committed);
    Some(bars_svg(
        &format!("Draining a committed backlog of {backlog} messages"),
        &bars,
        "msg/s",
        "commit of the backlog → the last record read by a consumer of the topic",
    ))
}
