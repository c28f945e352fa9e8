//! What the storage layer measures of itself, for the server's metrics: how long the log's
//! fdatasyncs and the database's durable flushes take, and how many entries were slow to apply.
//! The server registers these under etcd's names (`etcd_disk_wal_fsync_duration_seconds`,
//! `etcd_disk_backend_commit_duration_seconds`, `etcd_server_slow_apply_total`).

use std::time::{Duration, Instant};

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
}

impl Default for StorageStats {
    fn default() -> Self {
        // etcd's buckets for both: 1 ms doubling to about 8 s.
        StorageStats {
            wal_fsync: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            backend_commit: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            slow_applies: Counter::default(),
        }
    }
}

/// Records in `histogram` the seconds since `began`.
pub(crate) fn observe_since(histogram: &Histogram, began: Instant) {
    histogram.observe(began.elapsed().as_secs_f64());
}
