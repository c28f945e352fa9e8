//! What a worker measures while it runs, and how the workers' measurements add up.
//!
//! Latencies go into HdrHistograms in microseconds (1 µs to 1 h, 3 significant digits: a
//! percentile is off by at most 0.1%), completions into one-second buckets counted from the
//! run's origin. Each worker owns a [`Recorder`]; the run merges them at the end, so workers
//! never share a lock while measuring.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Status;

use crate::error::error_kind;

const LOWEST_MICROS: u64 = 1;
const HIGHEST_MICROS: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// One measured quantity: a latency histogram and completions per second.
#[derive(Debug, Clone)]
pub struct Series {
    histogram: Histogram<u64>,
    /// `timeline[s]` is the number of completions during second `s` after the origin.
    timeline: Vec<u64>,
    /// When the last completion happened, after the origin.
    last: Duration,
}

impl Default for Series {
    fn default() -> Series {
        Series {
            // The bounds are constants that satisfy the constructor's conditions
            // (1 <= low, 2 * low <= high, digits <= 5), so it cannot fail.
            histogram: Histogram::new_with_bounds(
                LOWEST_MICROS,
                HIGHEST_MICROS,
                SIGNIFICANT_DIGITS,
            )
            .expect("constant histogram bounds are valid"),
            timeline: Vec::new(),
            last: Duration::ZERO,
        }
    }
}

impl Series {
    /// Records one completion that took `latency` and ended `since_origin` after the origin.
    /// Latencies beyond the histogram's range are clamped to it.
    pub fn record(&mut self, latency: Duration, since_origin: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(micros.clamp(LOWEST_MICROS, HIGHEST_MICROS));
        let second = usize::try_from(since_origin.as_secs()).unwrap_or(usize::MAX);
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, 0);
        }
        self.timeline[second] += 1;
        self.last = self.last.max(since_origin);
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &Series) {
        // Every Series is built with the same bounds, and `add` fails only when a value of
        // `other` does not fit this histogram's bounds.
        self.histogram
            .add(&other.histogram)
            .expect("series share their histogram bounds");
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            *mine += theirs;
        }
        self.last = self.last.max(other.last);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// When the last completion happened, after the origin.
    pub fn last_completion(&self) -> Duration {
        self.last
    }

    pub fn timeline(&self) -> &[u64] {
        &self.timeline
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.histogram)
    }

    /// Points of the latency-by-percentile curve, from the median out to the maximum, for plots.
    pub fn percentile_curve(&self) -> Vec<PercentilePoint> {
        let total = self.histogram.len();
        if total == 0 {
            return Vec::new();
        }
        // Five points per halving of the distance to 100%: 50%, 75%, 87.5%, ... as HdrHistogram's
        // own percentile distribution output does.
        self.histogram
            .iter_quantiles(5)
            .map(|step| PercentilePoint {
                percentile: step.quantile_iterated_to() * 100.0,
                micros: self.histogram.highest_equivalent(step.value_iterated_to()),
            })
            .collect()
    }
}

/// Latency percentiles of one series, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                count: 0,
                mean_us: 0.0,
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
            };
        }
        LatencySummary {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// One point of a latency-by-percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub micros: u64,
}

/// Everything one worker (or the merge of several) measured during a run.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// The instant from which completion seconds are counted; shared by every recorder of a run
    /// so that their timelines line up.
    origin: Instant,
    /// The requests of the workload, from intended (open loop) or actual (closed loop) start to
    /// answer.
    ops: Series,
    /// Parts of a request (a txn's read and its write) or things that are not requests (watch
    /// events), by name.
    parts: BTreeMap<&'static str, Series>,
    /// Failed requests by [`error_kind`].
    errors: BTreeMap<String, u64>,
    /// Workload-specific counts (keys found, txn conflicts, events delivered).
    counters: BTreeMap<&'static str, u64>,
    /// When the last request or part completed, after the origin.
    last_completion: Duration,
}

impl Recorder {
    pub fn new(origin: Instant) -> Recorder {
        Recorder {
            origin,
            ops: Series::default(),
            parts: BTreeMap::new(),
            errors: BTreeMap::new(),
            counters: BTreeMap::new(),
            last_completion: Duration::ZERO,
        }
    }

    fn completed_now(&mut self) -> Duration {
        let since_origin = self.origin.elapsed();
        self.last_completion = self.last_completion.max(since_origin);
        since_origin
    }

    /// Records a request that started at `began` and has just been answered.
    pub fn record_op(&mut self, began: Instant) {
        let latency = began.elapsed();
        let at = self.completed_now();
        self.ops.record(latency, at);
    }

    /// Records a part named `name` that started at `began` and has just completed.
    pub fn record_part(&mut self, name: &'static str, began: Instant) {
        self.record_part_latency(name, began.elapsed());
    }

    /// Records a part named `name` that has just completed after `latency`.
    pub fn record_part_latency(&mut self, name: &'static str, latency: Duration) {
        let at = self.completed_now();
        self.parts.entry(name).or_default().record(latency, at);
    }

    /// Records a request that has just failed with `status`.
    pub fn record_error(&mut self, status: &Status) {
        self.completed_now();
        self.record_error_kind(error_kind(status), 1);
    }

    /// Counts `count` failures of a kind that is not a gRPC status (a lost watch event). Unlike
    /// [`Recorder::record_error`] this does not mark a completion: it may be counted long after
    /// the fact.
    pub fn record_error_kind(&mut self, kind: String, count: u64) {
        *self.errors.entry(kind).or_default() += count;
    }

    pub fn add(&mut self, counter: &'static str, n: u64) {
        *self.counters.entry(counter).or_default() += n;
    }

    /// Adds `other`'s measurements to these. Both must share an origin.
    pub fn merge(&mut self, other: &Recorder) {
        self.ops.merge(&other.ops);
        for (name, series) in &other.parts {
            self.parts.entry(name).or_default().merge(series);
        }
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        for (name, count) in &other.counters {
            *self.counters.entry(name).or_default() += count;
        }
        self.last_completion = self.last_completion.max(other.last_completion);
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    pub fn ops(&self) -> &Series {
        &self.ops
    }

    pub fn parts(&self) -> &BTreeMap<&'static str, Series> {
        &self.parts
    }

    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn counters(&self) -> &BTreeMap<&'static str, u64> {
        &self.counters
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn last_completion(&self) -> Duration {
        self.last_completion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut series = Series::default();
        // 1..=1000 ms, one each.
        for i in 1..=1000 {
            series.record(ms(i), Duration::ZERO);
        }
        let s = series.summary();
        assert_eq!(s.count, 1000);
        // Three significant digits: each value is within 0.1% of the exact one.
        let near = |got: u64, want_ms: u64| {
            let want = (want_ms * 1000) as f64;
            assert!(
                (got as f64 - want).abs() <= want * 0.001,
                "got {got} µs, want {want} µs"
            );
        };
        near(s.p50_us, 500);
        near(s.p90_us, 900);
        near(s.p99_us, 990);
        near(s.p999_us, 999);
        near(s.max_us, 1000);
        assert!((s.mean_us - 500_500.0).abs() < 500.0, "mean {}", s.mean_us);
    }

    #[test]
    fn merged_series_equal_one_series_of_everything() {
        let mut all = Series::default();
        let mut fast = Series::default();
        let mut slow = Series::default();
        for i in 0..900 {
            let latency = Duration::from_micros(100 + i);
            fast.record(latency, Duration::from_millis(300));
            all.record(latency, Duration::from_millis(300));
        }
        for i in 0..100 {
            let latency = ms(50 + i);
            slow.record(latency, Duration::from_secs(2));
            all.record(latency, Duration::from_secs(2));
        }
        let mut merged = fast.clone();
        merged.merge(&slow);
        assert_eq!(merged.summary(), all.summary());
        assert_eq!(merged.timeline(), &[900, 0, 100]);
        // The slow tenth dominates p90 and above, the fast part the median.
        let s = merged.summary();
        assert!(s.p50_us < 1_000, "p50 {} µs", s.p50_us);
        assert!(s.p99_us >= 50_000, "p99 {} µs", s.p99_us);
        // Merging in the other order gives the same result.
        let mut reverse = slow.clone();
        reverse.merge(&fast);
        assert_eq!(reverse.summary(), s);
        assert_eq!(reverse.timeline(), merged.timeline());
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut series = Series::default();
        series.record(Duration::ZERO, Duration::ZERO);
        series.record(Duration::from_secs(10 * 3600), Duration::ZERO);
        let s = series.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= HIGHEST_MICROS);
    }

    #[test]
    fn empty_series_summarise_to_zero() {
        let s = Series::default().summary();
        assert_eq!(s.count, 0);
        assert_eq!(s.max_us, 0);
        assert!(Series::default().percentile_curve().is_empty());
    }

    #[test]
    fn percentile_curve_rises_to_the_maximum() {
        let mut series = Series::default();
        for i in 1..=10_000 {
            series.record(Duration::from_micros(i), Duration::ZERO);
        }
        let curve = series.percentile_curve();
        assert!(curve.len() > 10);
        assert!(curve
            .windows(2)
            .all(|w| w[0].percentile <= w[1].percentile && w[0].micros <= w[1].micros));
        let last = curve.last().expect("not empty");
        assert_eq!(last.percentile, 100.0);
        assert_eq!(last.micros, series.summary().max_us);
    }

    #[test]
    fn recorders_merge_errors_counters_and_parts() {
        let origin = Instant::now();
        let mut a = Recorder::new(origin);
        let mut b = Recorder::new(origin);
        a.record_op(origin);
        a.record_part("txn", origin);
        a.record_error(&Status::unavailable("etcdserver: leader changed"));
        a.add("conflicts", 2);
        b.record_op(origin);
        b.record_op(origin);
        b.record_error(&Status::unavailable("etcdserver: leader changed"));
        b.record_error(&Status::deadline_exceeded("timeout"));
        b.record_error_kind("events not delivered".into(), 5);
        b.add("conflicts", 1);
        a.merge(&b);
        assert_eq!(a.ops().count(), 3);
        assert_eq!(a.parts()["txn"].count(), 1);
        assert_eq!(a.counter("conflicts"), 3);
        assert_eq!(a.counter("missing"), 0);
        assert_eq!(a.errors()["Unavailable: etcdserver: leader changed"], 2);
        assert_eq!(a.errors()["DeadlineExceeded: timeout"], 1);
        assert_eq!(a.errors()["events not delivered"], 5);
        assert_eq!(a.error_count(), 8);
        assert!(a.last_completion() >= b.last_completion());
    }
}
