//! The charts, as standalone SVG documents: latency against offered load (both on log scales) and
//! rates as bars.

use std::fmt::Write as _;

use crate::latency::{BrokerFloor, LatencyPoint};

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 270.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// A logarithmic axis mapping values in `[low, high]` onto pixels `[from, to]`.
struct LogAxis {
    low: f64,
    high: f64,
    from: f64,
    to: f64,
}

impl LogAxis {
    /// An axis spanning whole decades around `values` (at least one decade).
    fn around(values: impl Iterator<Item = f64>, from: f64, to: f64) -> Self {
        let (mut low, mut high) = (f64::MAX, f64::MIN);
        for v in values.filter(|v| *v > 0.0) {
            low = low.min(v);
            high = high.max(v);
        }
        if low > high {
            (low, high) = (1.0, 10.0);
        }
        let low = 10f64.powf(low.log10().floor());
        let high = 10f64.powf(high.log10().ceil()).max(low * 10.0);
        Self {
            low,
            high,
            from,
            to,
        }
    }

    fn map(&self, value: f64) -> f64 {
        let share = (value.max(self.low).log10() - self.low.log10())
            / (self.high.log10() - self.low.log10());
        self.from + share * (self.to - self.from)
    }

    /// Tick values: 1, 2 and 5 times each power of ten in range.
    fn ticks(&self) -> Vec<f64> {
        let mut ticks = Vec::new();
        let mut decade = self.low;
        while decade <= self.high * 1.0001 {
            for factor in [1.0, 2.0, 5.0] {
                let tick = decade * factor;
                if tick <= self.high * 1.0001 {
                    ticks.push(tick);
                }
            }
            decade *= 10.0;
        }
        ticks
    }
}

/// One line of a latency chart: (offered msg/s, ms) points.
pub struct Series {
    /// The legend's text.
    pub label: String,
    /// Its stroke colour.
    pub color: &'static str,
    /// Its `stroke-dasharray` ("" for a solid line).
    pub dash: &'static str,
    /// Its points.
    pub points: Vec<(f64, f64)>,
}

/// A latency of a point, in ms.
type Metric = fn(&LatencyPoint) -> f64;

/// The color of a mode's lines.
fn color(mode: &str) -> &'static str {
    match mode {
        "wake-ups" => "#1f77b4",
        "polling" => "#d62728",
        "wal" => "#2ca02c",
        _ => "#9467bd",
    }
}

fn series(points: &[LatencyPoint], floor: &[BrokerFloor]) -> Vec<Series> {
    let metrics: [(&str, &str, Metric); 3] = [
        ("commit→ack p50", "", |p| p.ack.p50_ms),
        ("commit→ack p99", "6 4", |p| p.ack.p99_ms),
        ("commit→receipt p99", "2 3", |p| p.receipt.p99_ms),
    ];
    let mut modes: Vec<&str> = Vec::new();
    for point in points {
        if !modes.contains(&point.mode.as_str()) {
            modes.push(&point.mode);
        }
    }
    let mut all = Vec::new();
    for mode in modes {
        for (metric, dash, value) in metrics {
            all.push(Series {
                label: format!("{mode}: {metric}"),
                color: color(mode),
                dash,
                points: points
                    .iter()
                    .filter(|p| p.mode == mode)
                    .map(|p| (f64::from(p.offered), value(p)))
                    .collect(),
            });
        }
    }
    if !floor.is_empty() {
        all.push(Series {
            label: "broker alone: send→ack p99".into(),
            color: "#7f7f7f",
            dash: "1 0",
            points: floor
                .iter()
                .map(|f| (f64::from(f.offered), f.ack.p99_ms))
                .collect(),
        });
    }
    all
}

fn label(value: f64) -> String {
    if value >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// Renders `points` (one line per mode and metric) and the broker's own latency `floor` as an SVG
/// document, with `note` (how each mode ran) under it.
pub fn latency_svg(points: &[LatencyPoint], floor: &[BrokerFloor], note: &str) -> String {
    lines_svg(
        "Outbox latency against offered load",
        &series(points, floor),
        note,
    )
}

/// Renders `lines` of latency against offered load, titled `title`, with `note` under them.
pub fn lines_svg(title: &str, lines: &[Series], note: &str) -> String {
    let x = LogAxis::around(
        lines.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        LEFT,
        WIDTH - RIGHT,
    );
    let y = LogAxis::around(
        lines.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
        HEIGHT - BOTTOM,
        TOP,
    );
    let mut svg = open(title, (LEFT + WIDTH - RIGHT) / 2.0);
    for tick in x.ticks() {
        let px = x.map(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            label(tick)
        );
    }
    for tick in y.ticks() {
        let py = y.map(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            label(tick)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        WIDTH - RIGHT - LEFT,
        HEIGHT - BOTTOM - TOP
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">offered load (messages/s, log scale)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>"#,
        (TOP + HEIGHT - BOTTOM) / 2.0
    );
    for (index, line) in lines.iter().enumerate() {
        let path: Vec<String> = line
            .points
            .iter()
            .map(|&(vx, vy)| format!("{:.1},{:.1}", x.map(vx), y.map(vy)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{}"/>"#,
            path.join(" "),
            line.color,
            line.dash
        );
        for &(vx, vy) in &line.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                x.map(vx),
                y.map(vy),
                line.color
            );
        }
        let ly = TOP + 10.0 + 20.0 * index as f64;
        let lx = WIDTH - RIGHT + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2" stroke-dasharray="{}"/><text x="{}" y="{}">{}</text>"#,
            lx + 28.0,
            line.color,
            line.dash,
            lx + 34.0,
            ly + 4.0,
            line.label
        );
    }
    close(svg, note)
}

/// A chart's start: the document, its white background and `title` centred on `centre`.
fn open(title: &str, centre: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{centre}" y="22" text-anchor="middle" font-size="15">{title}</text>"#
    );
    svg
}

/// A chart's end: `note` under the plot, and the document closed.
fn close(mut svg: String, note: &str) -> String {
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{}" font-size="11" fill="#555">{note}</text>"##,
        HEIGHT - 4.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// One bar: its label, its value and its colour.
pub struct Bar {
    /// Under the bar.
    pub label: String,
    /// Its height, in `unit`.
    pub value: f64,
    /// Its fill.
    pub color: &'static str,
}

/// Renders `bars` on a linear axis from zero, titled `title`, each with its value above it in
/// `unit`, and `note` under them.
pub fn bars_svg(title: &str, bars: &[Bar], unit: &str, note: &str) -> String {
    let high = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9) * 1.15;
    let (left, right, top, bottom) = (LEFT, 30.0, TOP, BOTTOM + 20.0);
    let plot_width = WIDTH - left - right;
    let plot_height = HEIGHT - top - bottom;
    let slot = plot_width / bars.len().max(1) as f64;
    let map = |value: f64| HEIGHT - bottom - value / high * plot_height;
    let mut svg = open(title, left + plot_width / 2.0);
    let step = nice_step(high / 5.0);
    let mut tick = 0.0;
    while tick <= high {
        let py = map(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{tick:.0}</text>"##,
            WIDTH - right,
            left - 6.0,
            py + 4.0
        );
        tick += step;
    }
    for (index, bar) in bars.iter().enumerate() {
        let x = left + slot * index as f64 + slot * 0.2;
        let width = slot * 0.6;
        let y = map(bar.value);
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{:.1}" fill="{}"/>"#,
            HEIGHT - bottom - y,
            bar.color
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0} {unit}</text>"#,
            x + width / 2.0,
            y - 6.0,
            bar.value
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + width / 2.0,
            HEIGHT - bottom + 18.0,
            bar.label
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="black"/>"#,
        HEIGHT - bottom,
        WIDTH - right,
        HEIGHT - bottom
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{unit}</text>"#,
        top + plot_height / 2.0
    );
    close(svg, note)
}

/// 1, 2 or 5 times a power of ten, at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let decade = 10f64.powf(rough.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * decade)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * decade)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_span_whole_decades_and_map_their_ends() {
        let axis = LogAxis::around([100.0, 5000.0].into_iter(), 0.0, 300.0);
        assert!((axis.low - 100.0).abs() < 1e-9 && (axis.high - 10_000.0).abs() < 1e-6);
        assert!((axis.map(100.0) - 0.0).abs() < 1e-9);
        assert!((axis.map(1000.0) - 150.0).abs() < 1e-9);
        assert_eq!(axis.ticks().len(), 7, "100 200 500 1000 2000 5000 10000");
    }

    #[test]
    fn bar_ticks_are_round_numbers() {
        assert!((nice_step(1_300.0) - 2_000.0).abs() < 1e-9);
        assert!((nice_step(4_000.0) - 5_000.0).abs() < 1e-9);
        assert!((nice_step(9_000.0) - 10_000.0).abs() < 1e-9);
        let svg = bars_svg(
            "drain",
            &[Bar {
                label: "relay".into(),
                value: 12_000.0,
                color: "#1f77b4",
            }],
            "msg/s",
            "",
        );
        assert!(svg.contains("12000 msg/s") && svg.contains(">relay</text>"));
    }
}
