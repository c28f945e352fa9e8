//! The plot of a concurrency sweep (`benches/overload.sh`): put throughput and p99 latency
//! against the number of clients, one line per system, drawn from the sweep's summary.
//!
//! The summary has one JSON object a line, one per run; a line is read for its `system`,
//! `clients`, `throughput` and `p99_us` (null when no request was answered) and every other
//! field is left to the report. Runs of one system at one client count (several rounds) are
//! drawn as their median.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use serde::Deserialize;

use crate::error::BenchError;
use crate::plot::{draw_legend, font_registered, DrawResult, FONT};

/// Each panel's size; the PNG holds two side by side.
const PANEL: (u32, u32) = (800, 600);

/// One line of the summary, as far as the plot needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct SweepRun {
    /// The system measured, as the plot's legend names it (`etcd`, `Rampart`).
    pub system: String,
    /// Concurrent clients of the run: the x axis.
    pub clients: u64,
    /// Answered puts per second; null when none was answered.
    pub throughput: Option<f64>,
    /// The puts' p99 latency in microseconds; null when none was answered.
    pub p99_us: Option<u64>,
}

/// One system's points, in increasing client counts.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepLine {
    /// The system, as the legend names it.
    pub system: String,
    /// (clients, median puts per second) for each client count with an answered put.
    pub throughput: Vec<(f64, f64)>,
    /// (clients, median p99 in milliseconds) for each client count with an answered put.
    pub p99_ms: Vec<(f64, f64)>,
}

/// Reads a summary file: one [`SweepRun`] a line, blank lines skipped.
pub fn read_summary(path: &Path) -> Result<Vec<SweepRun>, BenchError> {
    let summary_error = |message: String| BenchError::Summary {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| summary_error(e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| summary_error(format!("line {}: {e}", n + 1)))
        })
        .collect()
}

/// The lines drawn: one per system, in the order the systems first appear in `runs`, each
/// point the median over the runs of that system at that client count.
pub fn sweep_lines(runs: &[SweepRun]) -> Vec<SweepLine> {
    let mut systems: Vec<&str> = Vec::new();
    for run in runs {
        if !systems.contains(&run.system.as_str()) {
            systems.push(&run.system);
        }
    }
    systems
        .into_iter()
        .map(|system| {
            // Each client count's samples: puts per second, and p99 in milliseconds.
            let mut throughputs: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            let mut p99s: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            for run in runs.iter().filter(|r| r.system == system) {
                let throughput = throughputs.entry(run.clients).or_default();
                throughput.extend(run.throughput);
                let p99 = p99s.entry(run.clients).or_default();
                p99.extend(run.p99_us.map(|us| us as f64 / 1000.0));
            }
            let points = |samples: BTreeMap<u64, Vec<f64>>| {
                samples
                    .into_iter()
                    .filter_map(|(clients, values)| median(&values).map(|m| (clients as f64, m)))
                    .collect()
            };
            SweepLine {
                system: system.to_string(),
                throughput: points(throughputs),
                p99_ms: points(p99s),
            }
        })
        .collect()
}

/// The median of `values` (the mean of the middle two of an even number); none of none.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Draws `overload.png` into `dir` (created if missing) from the summary at `summary`: puts per
/// second against clients on the left, p99 latency against clients on the right, both with a
/// logarithmic client axis. Answers the PNG's path.
pub fn write_sweep_plot(summary: &Path, dir: &Path) -> Result<PathBuf, BenchError> {
    let lines = sweep_lines(&read_summary(summary)?);
    if lines.iter().all(|l| l.throughput.is_empty()) {
        return Err(BenchError::Summary {
            path: summary.to_path_buf(),
            message: "no run answered a put: nothing to draw".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("overload.png");
    if !font_registered() {
        return Err(BenchError::Plot {
            path,
            message: "the embedded font cannot be loaded".into(),
        });
    }
    draw(&lines, &path).map_err(|e| BenchError::Plot {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(path)
}

fn draw(lines: &[SweepLine], path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, (2 * PANEL.0, PANEL.1)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(PANEL.0);
    let clients = lines
        .iter()
        .flat_map(|l| l.throughput.iter().chain(&l.p99_ms).map(|p| p.0));
    let mut client_counts: Vec<f64> = clients.collect();
    client_counts.sort_by(f64::total_cmp);
    client_counts.dedup();
    let (x_min, x_max) = bounds(client_counts.iter().copied());
    // Ticks at the client counts measured, which a log axis's own ticks may all miss.
    let x_axis = || {
        ((x_min / 1.5)..(x_max * 1.5))
            .log_scale()
            .with_key_points(client_counts.clone())
    };

    let throughputs: Vec<_> = lines
        .iter()
        .map(|l| (l.system.as_str(), l.throughput.clone()))
        .collect();
    let (_, y_max) = bounds(throughputs.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)));
    let chart = ChartBuilder::on(&left)
        .caption("puts per second against clients", (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x_axis(), 0.0..y_max * 1.1)?;
    draw_panel(chart, "puts per second", &throughputs)?;

    let p99s: Vec<_> = lines
        .iter()
        .map(|l| (l.system.as_str(), l.p99_ms.clone()))
        .collect();
    let (y_min, y_max) = bounds(p99s.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)));
    let chart = ChartBuilder::on(&right)
        .caption("put p99 latency against clients", (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            x_axis(),
            ((y_min / 1.5).max(0.001)..y_max * 1.5).log_scale(),
        )?;
    draw_panel(chart, "p99 latency (ms, log scale)", &p99s)?;
    root.present()?;
    Ok(())
}

/// The smallest and largest of `values`, (1, 1) of none (an empty panel still has axes).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .fold(None, |acc: Option<(f64, f64)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
        .unwrap_or((1.0, 1.0))
}

/// Draws one panel's mesh, a line with marked points per system, and the legend.
fn draw_panel<'a, X, Y>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    y_desc: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
) -> DrawResult
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("concurrent clients (log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|y| match y.abs() {
            y if y >= 10.0 || y == 0.0 => format!("{y:.0}"),
            y if y >= 1.0 => format!("{y:.1}"),
            _ => format!("{y:.3}"),
        })
        .label_style((FONT, 14))
        .draw()?;
    for (i, (system, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*system)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|&point| Circle::new(point, 4, color.filled())),
        )?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: &str, clients: u64, throughput: Option<f64>, p99_us: Option<u64>) -> SweepRun {
        SweepRun {
            system: system.into(),
            clients,
            throughput,
            p99_us,
        }
    }

    #[test]
    fn lines_take_the_median_of_rounds_and_skip_unanswered_runs() {
        let runs = [
            run("etcd", 128, Some(900.0), Some(40_000)),
            run("Rampart", 16, Some(500.0), Some(5_000)),
            run("etcd", 16, Some(1000.0), Some(4_000)),
            run("etcd", 16, Some(3000.0), Some(8_000)),
            run("Rampart", 128, None, None),
        ];
        let lines = sweep_lines(&runs);
        assert_eq!(
            lines,
            [
                SweepLine {
                    system: "etcd".into(),
                    throughput: vec![(16.0, 2000.0), (128.0, 900.0)],
                    p99_ms: vec![(16.0, 6.0), (128.0, 40.0)],
                },
                SweepLine {
                    system: "Rampart".into(),
                    throughput: vec![(16.0, 500.0)],
                    p99_ms: vec![(16.0, 5.0)],
                },
            ]
        );
    }

    #[test]
    fn a_small_summary_draws_a_png() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let summary = dir.path().join("summary.jsonl");
        let mut text = String::new();
        for (system, factor) in [("etcd", 1.0), ("Rampart", 0.8)] {
            for (clients, throughput, p99_us) in [
                (16, 4000.0, 6_000),
                (128, 6000.0, 40_000),
                (1000, 5000.0, 900_000),
            ] {
                text += &format!(
                    "{{\"system\":\"{system}\",\"clients\":{clients},\"throughput\":{},\
                     \"p99_us\":{},\"errors\":{{}}}}\n",
                    throughput * factor,
                    p99_us
                );
            }
        }
        std::fs::write(&summary, text).expect("summary written");
        let png = write_sweep_plot(&summary, &dir.path().join("plots")).expect("drawn");
        let bytes = std::fs::read(&png).expect("PNG read");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        assert!(bytes.len() > 5_000, "with content: {} bytes", bytes.len());
    }

    #[test]
    fn a_summary_without_answers_or_unreadable_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let summary = dir.path().join("summary.jsonl");
        std::fs::write(
            &summary,
            "{\"system\":\"etcd\",\"clients\":16,\"throughput\":null,\"p99_us\":null}\n",
        )
        .expect("summary written");
        let err = write_sweep_plot(&summary, dir.path()).expect_err("nothing to draw");
        assert!(err.to_string().contains("nothing to draw"), "{err}");
        std::fs::write(&summary, "{\"system\":\"etcd\"}\nnot json\n").expect("summary written");
        let err = write_sweep_plot(&summary, dir.path()).expect_err("bad line");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(!dir.path().join("overload.png").exists());
    }
}
