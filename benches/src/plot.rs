//! PNG plots of a report: latency by percentile, and completions per second.
//!
//! Text is drawn with ab_glyph from DejaVu Sans embedded in the binary (the `dejavu` crate),
//! so plotting needs no system font and no fontconfig.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::BenchError;
use crate::report::{Report, SeriesReport};

const SIZE: (u32, u32) = (1000, 600);
/// The family name the embedded font is registered under.
pub(crate) const FONT: &str = "sans-serif";

/// Registers the embedded font once per process. Answers whether text can be drawn; it always
/// can unless the embedded font is corrupt.
pub(crate) fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok())
}

/// Writes `<workload>-latency.png` and `<workload>-throughput.png` into `dir` (created if
/// missing) and answers their paths.
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    if !font_registered() {
        return Err(BenchError::Plot {
            path: dir.to_path_buf(),
            message: "the embedded font cannot be loaded".into(),
        });
    }
    let name = report.workload.name();
    let latency = dir.join(format!("{name}-latency.png"));
    let throughput = dir.join(format!("{name}-throughput.png"));
    let plot_error = |path: &Path| {
        let path = path.to_path_buf();
        move |e: Box<dyn std::error::Error>| BenchError::Plot {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    draw_latency(report, &latency).map_err(plot_error(&latency))?;
    draw_throughput(report, &throughput).map_err(plot_error(&throughput))?;
    Ok(vec![latency, throughput])
}

/// The start of a caption: the run's `--label`, if any, and the workload.
fn caption_head(report: &Report) -> String {
    match &report.options.label {
        Some(label) => format!("{label}: {} ", report.workload.name()),
        None => format!("{} ", report.workload.name()),
    }
}

/// The series drawn: the requests first, then each part.
fn series(report: &Report) -> Vec<(&str, &SeriesReport)> {
    std::iter::once(("requests", &report.ops))
        .chain(report.parts.iter().map(|(n, s)| (n.as_str(), s)))
        .filter(|(_, s)| s.latency.count > 0)
        .collect()
}

/// The x coordinate of `percentile` on a "nines" axis: 1 at 0%, 10 at 90%, 100 at 99%, ...
/// 100% itself is drawn where one sample in `count` would be, as the curve's last point.
fn nines(percentile: f64, count: u64) -> f64 {
    let fraction = (percentile / 100.0).min(1.0 - 1.0 / count.max(1) as f64);
    1.0 / (1.0 - fraction)
}

/// The label of a "nines" axis position: 10 → "90%", 1000 → "99.9%".
fn nines_label(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{percentile:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws the legend of `chart`'s labelled series at `position`, in the style of every plot.
pub(crate) fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> DrawResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    Ok(())
}

fn draw_latency(report: &Report, path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let drawn = series(report);
    let curves: Vec<(&str, Vec<(f64, f64)>)> = drawn
        .iter()
        .map(|(name, s)| {
            let points = s
                .percentiles
                .iter()
                .map(|p| {
                    (
                        nines(p.percentile, s.latency.count),
                        p.micros as f64 / 1000.0,
                    )
                })
                .collect();
            (*name, points)
        })
        .collect();
    let x_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .fold(10.0, f64::max);
    let y_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.001, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}latency by percentile", caption_head(report)),
            (FONT, 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| nines_label(*x))
        .label_style((FONT, 14))
        .draw()?;
    for (i, (name, points)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

fn draw_throughput(report: &Report, path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    // Parts that are requests' steps complete at the requests' rate and would only repeat its
    // line; watch events come at their own rate.
    let lines: Vec<(&str, &SeriesReport)> = std::iter::once(("requests", &report.ops))
        .chain(report.parts.get("event").map(|s| ("events", s)))
        .collect();
    let seconds = lines
        .iter()
        .map(|(_, s)| s.per_second.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let y_max = lines
        .iter()
        .flat_map(|(_, s)| rate_points(&s.per_second, s.span_s))
        .map(|(_, rate)| rate)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}completions per second", caption_head(report)),
            (FONT, 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..seconds as f64, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("per second")
        .label_style((FONT, 14))
        .draw()?;
    for (i, (name, s)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = rate_points(&s.per_second, s.span_s);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// The points of a per-second timeline: each bucket's rate at the bucket's middle. The last
/// bucket usually covers only part of a second (the run ended inside it), so its count is
/// divided by the part covered; a sliver of under a tenth of a second is left out, as its rate
/// would be noise.
fn rate_points(per_second: &[u64], span_s: f64) -> Vec<(f64, f64)> {
    per_second
        .iter()
        .enumerate()
        .filter_map(|(second, &count)| {
            let covered = (span_s - second as f64).clamp(0.0, 1.0);
            (covered >= 0.1).then(|| (second as f64 + covered / 2.0, count as f64 / covered))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_last_seconds_are_scaled_or_left_out() {
        // 2.5 s at 100/s: the last bucket holds half a second's worth.
        assert_eq!(
            rate_points(&[100, 100, 50], 2.5),
            [(0.5, 100.0), (1.5, 100.0), (2.25, 100.0)]
        );
        // A run that ended 10 ms into its third second.
        assert_eq!(
            rate_points(&[100, 100, 1], 2.01),
            [(0.5, 100.0), (1.5, 100.0)]
        );
        assert!(rate_points(&[], 0.0).is_empty());
    }

    #[test]
    fn nines_axis_positions_and_labels() {
        assert_eq!(nines(0.0, 1000), 1.0);
        assert!((nines(90.0, 1000) - 10.0).abs() < 1e-9);
        assert!((nines(99.0, 1000) - 100.0).abs() < 1e-6);
        // 100% sits where the last of 1000 samples is.
        assert!((nines(100.0, 1000) - 1000.0).abs() < 1e-6);
        assert_eq!(nines_label(1.0), "0%");
        assert_eq!(nines_label(10.0), "90%");
        assert_eq!(nines_label(1000.0), "99.9%");
    }

    #[test]
    fn the_embedded_font_loads() {
        assert!(font_registered());
    }
}
