//! The results: one table on stdout, `report.json`, and an SVG chart of req/s
//! and p50/p99 per scenario and concurrency.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::loadgen::Outcome;

/// One line of the table.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub connections: Option<usize>,
    pub rps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Answers other than the expected ones, and transport errors.
    pub unexpected: Option<u64>,
    /// CPU cores busy with other work meanwhile.
    pub background_cores: Option<f64>,
    /// The figure beside its bound, e.g. `0.62 × baseline`.
    pub figure: String,
    /// What it should be, e.g. `≥ 0.50`.
    pub target: String,
    pub pass: Option<bool>,
}

impl Row {
    /// A throughput row from a load run.
    pub fn load(scenario: impl Into<String>, outcome: &Outcome, expected: &[&str]) -> Self {
        Self {
            scenario: scenario.into(),
            connections: Some(outcome.connections),
            rps: Some(outcome.rps()),
            p50_ms: Some(outcome.ms(0.5)),
            p99_ms: Some(outcome.ms(0.99)),
            unexpected: Some(outcome.unexpected(expected)),
            background_cores: outcome.background_cores,
            ..Self::default()
        }
    }

    /// A row with a figure only (memory, timings).
    pub fn figure(scenario: impl Into<String>, figure: impl Into<String>) -> Self {
        Self {
            scenario: scenario.into(),
            figure: figure.into(),
            ..Self::default()
        }
    }

    pub fn with(mut self, figure: impl Into<String>) -> Self {
        self.figure = figure.into();
        self
    }

    pub fn target(mut self, target: impl Into<String>, pass: bool) -> Self {
        self.target = target.into();
        self.pass = Some(pass);
        self
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    pub details: serde_json::Map<String, Value>,
}

impl Report {
    pub fn new() -> Self {
        Self {
            rows: Vec::new(),
            details: serde_json::Map::new(),
        }
    }

    pub fn row(&mut self, row: Row) {
        println!("  {}", one_line(&row));
        self.rows.push(row);
    }

    pub fn detail(&mut self, key: &str, value: Value) {
        self.details.insert(key.to_owned(), value);
    }

    /// The table, as Markdown.
    pub fn table(&self) -> String {
        let header = [
            "scenario",
            "conns",
            "req/s",
            "p50 ms",
            "p99 ms",
            "unexpected",
            "other CPU",
            "figure (vs bound)",
            "target",
            "result",
        ];
        let cells: Vec<[String; 10]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.scenario.clone(),
                    r.connections.map_or("-".into(), |c| c.to_string()),
                    r.rps.map_or("-".into(), fmt_rps),
                    r.p50_ms.map_or("-".into(), fmt_ms),
                    r.p99_ms.map_or("-".into(), fmt_ms),
                    r.unexpected.map_or("-".into(), |u| u.to_string()),
                    r.background_cores.map_or("-".into(), |c| format!("{c:.2}")),
                    if r.figure.is_empty() {
                        "-".into()
                    } else {
                        r.figure.clone()
                    },
                    if r.target.is_empty() {
                        "-".into()
                    } else {
                        r.target.clone()
                    },
                    match r.pass {
                        Some(true) => "pass".into(),
                        Some(false) => "MISS".into(),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let numeric = [
            false, true, true, true, true, true, true, false, false, false,
        ];
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for ((cell, w), right) in cells.iter().zip(widths).zip(numeric) {
                let pad = w - cell.chars().count();
                if right {
                    let _ = write!(out, " {}{cell} |", " ".repeat(pad));
                } else {
                    let _ = write!(out, " {cell}{} |", " ".repeat(pad));
                }
            }
            out
        };
        let mut out = line(&header.map(String::from));
        out.push('\n');
        out.push('|');
        for (w, right) in widths.iter().zip(numeric) {
            if right {
                let _ = write!(out, " {}: |", "-".repeat(w.saturating_sub(1)));
            } else {
                let _ = write!(out, " {} |", "-".repeat(*w));
            }
        }
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    pub fn json(&self, meta: Value) -> Value {
        json!({
            "meta": meta,
            "rows": self.rows,
            "scenarios": self.details,
        })
    }
}

fn one_line(r: &Row) -> String {
    let mut s = r.scenario.clone();
    if let Some(c) = r.connections {
        let _ = write!(s, " | {c} conns");
    }
    if let Some(rps) = r.rps {
        let _ = write!(s, " | {} req/s", fmt_rps(rps));
    }
    if let (Some(p50), Some(p99)) = (r.p50_ms, r.p99_ms) {
        let _ = write!(s, " | p50 {} ms p99 {} ms", fmt_ms(p50), fmt_ms(p99));
    }
    if !r.figure.is_empty() {
        let _ = write!(s, " | {}", r.figure);
    }
    if let Some(pass) = r.pass {
        let _ = write!(
            s,
            " | target {} {}",
            r.target,
            if pass { "pass" } else { "MISS" }
        );
    }
    s
}

pub fn fmt_rps(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub fn fmt_ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Where reports go: `<target dir>/bench/`.
pub fn report_dir() -> PathBuf {
    target_dir().join("bench")
}

/// `$CARGO_TARGET_DIR` when that is set (relative to the workspace root),
/// else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    let root = crate::procs::workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Two panels, one bar per (scenario, concurrency) row that has a load
/// figure: req/s on the left, p99 (light) and p50 (dark) on the right, both
/// on log scales.
pub fn chart(rows: &[Row], path: &Path, title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bars: Vec<(String, f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let (rps, p50, p99) = (r.rps?, r.p50_ms?, r.p99_ms?);
            let label = match r.connections {
                Some(c) => format!("{} ×{c}", r.scenario),
                None => r.scenario.clone(),
            };
            Some((label.trim().to_owned(), rps, p50, p99))
        })
        .filter(|(_, rps, p50, p99)| rps.is_finite() && p50.is_finite() && p99.is_finite())
        .collect();
    if bars.is_empty() {
        return Ok(());
    }
    let n = bars.len();
    let height = 110 + 26 * n as u32;
    let root = SVGBackend::new(path, (1300, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(760);
    // Row 0 at the top.
    let at = |i: usize| n - 1 - i;
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(k) if *k < n => bars[n - 1 - k].0.clone(),
        _ => String::new(),
    };
    let bounds = |values: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| {
            (lo.min(v.max(1e-3)), hi.max(v))
        });
        // Room to the right of the longest bar for its label.
        let hi = hi * 4.0;
        // And below the shortest, so that it shows.
        let lo = lo * 0.9;
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
        )
    };

    let (lo, hi) = bounds(&mut bars.iter().map(|b| b.1));
    let mut chart = ChartBuilder::on(&left)
        .margin(10)
        .margin_right(30)
        .caption("throughput, req/s (log)", ("sans-serif", 15))
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .y_labels(n)
        .y_label_formatter(&label_of)
        .x_label_formatter(&|v| fmt_rps(*v))
        .disable_y_mesh()
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let y = at(i);
        let mut bar = Rectangle::new(
            [
                (lo, SegmentValue::Exact(y)),
                (b.1, SegmentValue::Exact(y + 1)),
            ],
            if b.0.starts_with("baseline") {
                BLACK.mix(0.45).filled()
            } else {
                BLUE.mix(0.7).filled()
            },
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        Text::new(
            fmt_rps(b.1),
            (b.1, SegmentValue::CenterOf(at(i))),
            ("sans-serif", 11),
        )
    }))?;

    let (lo, hi) = bounds(&mut bars.iter().flat_map(|b| [b.2, b.3]));
    let mut chart = ChartBuilder::on(&right)
        .margin(10)
        .margin_right(30)
        .caption("latency, ms (log): p99 light, p50 dark", ("sans-serif", 15))
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .y_labels(n)
        .y_label_formatter(&|_| String::new())
        .x_label_formatter(&|v| fmt_ms(*v))
        .disable_y_mesh()
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let y = at(i);
        let mut bar = Rectangle::new(
            [
                (lo, SegmentValue::Exact(y)),
                (b.3, SegmentValue::Exact(y + 1)),
            ],
            RED.mix(0.35).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let y = at(i);
        let mut bar = Rectangle::new(
            [
                (lo, SegmentValue::Exact(y)),
                (b.2, SegmentValue::Exact(y + 1)),
            ],
            RED.mix(0.85).filled(),
        );
        bar.set_margin(8, 8, 0, 0);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        Text::new(
            format!("{} / {}", fmt_ms(b.2), fmt_ms(b.3)),
            (b.3, SegmentValue::CenterOf(at(i))),
            ("sans-serif", 11),
        )
    }))?;
    root.present()?;
    Ok(())
}
