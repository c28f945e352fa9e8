//! The results of a run: printed for a person, written as JSON for scripts, drawn as plots.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::driver::Run;
use crate::error::BenchError;
use crate::options::{Options, Workload};
use crate::schedule::Pace;
use crate::stats::{LatencySummary, PercentilePoint, Series};

/// What a run measured, with the settings it ran with.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub seed: u64,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub pace: Pace,
    /// From the first request's (intended) start to the last answer, in seconds.
    pub elapsed_s: f64,
    /// Requests answered without error.
    pub ok: u64,
    /// Requests failed, plus failures that are not requests (watch events not delivered).
    pub errors_total: u64,
    /// Failures by kind (gRPC code and message).
    pub errors: BTreeMap<String, u64>,
    /// Answered requests per second over `elapsed_s`.
    pub throughput: f64,
    /// The requests.
    pub ops: SeriesReport,
    /// Parts of requests (a txn-put's `range` and `txn`) or other measured things (watch
    /// `event`s), by name.
    pub parts: BTreeMap<String, SeriesReport>,
    /// Workload-specific counts.
    pub counters: BTreeMap<String, u64>,
    pub options: Options,
}

/// Latency and rate of one measured series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Seconds from the run's start to this series' last completion.
    pub span_s: f64,
    /// Completions per second over `span_s`.
    pub rate_per_s: f64,
    /// Completions in each second after the start.
    pub per_second: Vec<u64>,
    /// Latency by percentile, for plots.
    pub percentiles: Vec<PercentilePoint>,
}

impl Report {
    pub fn new(config: &Config, run: &Run) -> Report {
        let recorder = &run.recorder;
        let origin = recorder.origin();
        // Timelines count from the origin; the report's seconds count from the start.
        let skip =
            usize::try_from(run.started.saturating_duration_since(origin).as_secs()).unwrap_or(0);
        let series = |series: &Series| {
            let span = (origin + series.last_completion()).saturating_duration_since(run.started);
            SeriesReport {
                latency: series.summary(),
                span_s: span.as_secs_f64(),
                rate_per_s: per_second(series.count(), span.as_secs_f64()),
                per_second: series.timeline().iter().skip(skip).copied().collect(),
                percentiles: series.percentile_curve(),
            }
        };
        let elapsed_s = run.elapsed.as_secs_f64();
        Report {
            workload: config.workload,
            seed: config.seed,
            endpoints: config.endpoints.clone(),
            conns: config.conns,
            clients: config.clients,
            pace: config.pace,
            elapsed_s,
            ok: recorder.ops().count(),
            errors_total: recorder.error_count(),
            errors: recorder.errors().clone(),
            throughput: per_second(recorder.ops().count(), elapsed_s),
            ops: series(recorder.ops()),
            parts: recorder
                .parts()
                .iter()
                .map(|(name, s)| (name.to_string(), series(s)))
                .collect(),
            counters: recorder
                .counters()
                .iter()
                .map(|(name, count)| (name.to_string(), *count))
                .collect(),
            options: config.options.clone(),
        }
    }

    /// Writes the report as pretty-printed JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, json).map_err(|source| BenchError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

fn latency_line(f: &mut fmt::Formatter<'_>, label: &str, s: &SeriesReport) -> fmt::Result {
    let l = &s.latency;
    writeln!(
        f,
        "  {label:<12} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  ({} at {:.1}/s)",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us),
        ms(l.mean_us.round() as u64),
        l.count,
        s.rate_per_s,
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pace = match self.pace {
            Pace::Closed => "closed loop".to_string(),
            Pace::Open { rate } => format!("open loop at {rate}/s"),
        };
        writeln!(
            f,
            "{}: {} conns, {} clients, {pace}, seed {}, against {}",
            self.workload.name(),
            self.conns,
            self.clients,
            self.seed,
            self.endpoints.join(",")
        )?;
        writeln!(
            f,
            "  {:<12} {} ok, {} errors in {:.3} s: {:.1} ops/s",
            "requests", self.ok, self.errors_total, self.elapsed_s, self.throughput
        )?;
        latency_line(f, "latency", &self.ops)?;
        for (name, part) in &self.parts {
            latency_line(f, name, part)?;
        }
        for (name, count) in &self.counters {
            writeln!(f, "  {:<12} {count}", name)?;
        }
        for (kind, count) in &self.errors {
            writeln!(f, "  {:<12} {count} × {kind}", "error")?;
        }
        Ok(())
    }
}
