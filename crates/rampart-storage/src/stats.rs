//! What the storage layer measures of itself, for the server's metrics: how long the log's
//! fdatasyncs and the database's durable flushes take, and how many entries were slow to apply.
//! The server registers these under etcd's names (`etcd_disk_wal_fsync_duration_seconds`,
//! `etcd_disk_backend_commit_duration_seconds`, `etcd_server_slow_apply_total`).
//!
//! It also keeps the storage operations in progress ([`InFlight`]), which the server's stall
//! watchdog looks at: an operation that never ends means the member is frozen.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// An apply that takes longer than this counts as slow (etcd's `warnApplyDuration`).
pub const SLOW_APPLY: Duration = Duration::from_millis(100);

/// One store's measurements. Cloning a metric gives another handle on the same values.
#[derive(Debug)]
pub struct StorageStats {
    /// One observation per fdatasync of a log segment, in seconds.
    pub wal_fsync: Histogram,
    /// One observation per durable flush of the database (`Disk::flush`), in seconds.
    pub backend_commit: Histogram,
    /// Log entries whose apply took longer than [`SLOW_APPLY`].
    pub slow_applies: Counter,
    /// The operations that a frozen disk, or a storage engine stuck inside, would never finish.
    pub in_flight: InFlight,
}

impl Default for StorageStats {
    fn default() -> Self {
        // etcd's buckets for both: 1 ms doubling to about 8 s.
        StorageStats {
            wal_fsync: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            backend_commit: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            slow_applies: Counter::default(),
            in_flight: InFlight::default(),
        }
    }
}

/// Records in `histogram` the seconds since `began`.
pub(crate) fn observe_since(histogram: &Histogram, began: Instant) {
    histogram.observe(began.elapsed().as_secs_f64());
}

/// The storage operations in progress, each with when it began: the database's flushes, the
/// log's appends and fdatasyncs, applies (with their wait for the state's lock) and compaction
/// chunks. None of them takes more than seconds on a working disk.
#[derive(Debug, Default)]
pub struct InFlight {
    operations: Mutex<Operations>,
}

#[derive(Debug, Default)]
struct Operations {
    /// The number the next operation gets: numbers grow in the order operations begin.
    next: u64,
    /// Operations in progress by number, so the first is the one in progress for longest.
    running: BTreeMap<u64, (Instant, &'static str)>,
}

impl InFlight {
    /// Notes that `what` begins now; it ends when the returned guard drops.
    pub fn begin(&self, what: &'static str) -> InFlightGuard<'_> {
        let mut operations = self.operations.lock();
        let id = operations.next;
        operations.next += 1;
        operations.running.insert(id, (Instant::now(), what));
        InFlightGuard {
            in_flight: self,
            id,
        }
    }

    /// The operation in progress for longest, and for how long, if one is.
    pub fn oldest(&self) -> Option<(&'static str, Duration)> {
        let operations = self.operations.lock();
        let (began, what) = operations.running.values().next()?;
        Some((what, began.elapsed()))
    }
}

/// An operation of [`InFlight`] in progress; dropping it ends it.
#[must_use = "the operation ends when the guard drops"]
pub struct InFlightGuard<'a> {
    in_flight: &'a InFlight,
    id: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.in_flight.operations.lock().running.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_operation_in_flight_is_the_first_begun_of_those_not_ended() {
        let in_flight = InFlight::default();
        assert!(in_flight.oldest().is_none());
        let flush = in_flight.begin("database flush");
        let apply = in_flight.begin("apply");
        assert_eq!(
            in_flight.oldest().map(|(what, _)| what),
            Some("database flush")
        );
        drop(flush);
        assert_eq!(in_flight.oldest().map(|(what, _)| what), Some("apply"));
        let fsync = in_flight.begin("log fsync");
        drop(apply);
        let (what, age) = in_flight.oldest().expect("one is in flight");
        assert_eq!(what, "log fsync");
        assert!(age < Duration::from_secs(60));
        drop(fsync);
        assert!(in_flight.oldest().is_none());
    }
}
