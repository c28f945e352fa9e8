//! Auto-compaction: the leader compacts history by itself, as etcd 3.4's `v3compactor` does
//! (`--auto-compaction-mode`, `--auto-compaction-retention`).
//!
//! Every member runs the compactor, and every member samples its revision, but only the leader
//! compacts (etcd pauses the compactor on followers and resumes it on the leader), so a member
//! that becomes leader goes on with the samples it took as a follower. A compaction is an
//! ordinary `Command::Compact` through Raft, as a client's Compact is; one that finds the
//! revision already compacted counts as done, as in etcd.
//!
//! - Periodic (etcd's `periodic.go`): with a retention `p`, the compactor samples the revision
//!   every `min(p, 1h) / 10` and keeps the last `p / (min(p, 1h) / 10) + 1` samples. Once `p`
//!   has passed since it started, and then every `min(p, 1h)` after a success, it compacts at
//!   the oldest sample kept, so at least `p` of history stays. A failure is retried at the next
//!   sample.
//! - Revision (etcd's `revision.go`): every 5 minutes, it compacts at the current revision less
//!   the retention, unless that is not positive or was the last compaction made.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rampart_storage::{ApplyError, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::AutoCompaction;
use crate::error::ServerError;
use crate::node::Node;

/// etcd's `retryDivisor`: the periodic compactor samples ten times per compaction interval.
const RETRY_DIVISOR: u32 = 10;

/// The shortest sampling interval, so that a retention of a few nanoseconds (which etcd would
/// divide into zero) does not spin.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(1);

/// Runs the auto-compactor `--auto-compaction-mode` and `--auto-compaction-retention` ask for,
/// until `cancel`; returns at once if they ask for none.
pub(crate) async fn run(node: Arc<Node>, cancel: CancellationToken) {
    match node.config().auto_compaction {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(period) => periodic(&node, period, &cancel).await,
        AutoCompaction::Revision(retention) => {
            let interval = node.config().revision_compaction_interval;
            revision(&node, retention, interval, &cancel).await
        }
    }
}

/// The periodic schedule for a retention of `period` (etcd's `getCompactInterval`,
/// `getRetryInterval` and `getRetentions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedule {
    /// Time between compactions after the first: `period`, at most an hour.
    compact_interval: Duration,
    /// Time between samples of the revision: a tenth of the compaction interval.
    sample_interval: Duration,
    /// How many samples are kept: the oldest is the revision `period` ago.
    samples: usize,
}

impl Schedule {
    fn new(period: Duration) -> Schedule {
        let compact_interval = period.min(Duration::from_secs(3600));
        let sample_interval = (compact_interval / RETRY_DIVISOR).max(MIN_SAMPLE_INTERVAL);
        let samples = (period.as_nanos() / sample_interval.as_nanos()) as usize + 1;
        Schedule {
            compact_interval,
            sample_interval,
            samples,
        }
    }
}

async fn periodic(node: &Node, period: Duration, cancel: &CancellationToken) {
    let schedule = Schedule::new(period);
    tracing::info!(
        retention = ?period,
        compact_interval = ?schedule.compact_interval,
        "periodic auto-compaction on: the leader keeps this much history"
    );
    let mut samples: VecDeque<i64> = VecDeque::with_capacity(schedule.samples + 1);
    let mut last_success = Instant::now();
    // The first compaction waits for a whole period, the next ones for the interval.
    let mut wait = period;
    loop {
        samples.push_back(node.mvcc().revision());
        if samples.len() > schedule.samples {
            samples.pop_front();
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(schedule.sample_interval) => {}
        }
        if !leads(node) || last_success.elapsed() < wait {
            continue;
        }
        wait = schedule.compact_interval;
        let Some(&revision) = samples.front() else {
            continue;
        };
        match compact(node, revision).await {
            Ok(()) => {
                tracing::info!(revision, retention = ?period, "auto periodic compaction done");
                last_success = Instant::now();
            }
            Err(e) => tracing::warn!(
                revision,
                retry_in = ?schedule.sample_interval,
                "auto periodic compaction failed: {e}"
            ),
        }
    }
}

async fn revision(node: &Node, retention: i64, interval: Duration, cancel: &CancellationToken) {
    tracing::info!(
        retention,
        ?interval,
        "revision auto-compaction on: the leader keeps this many revisions"
    );
    let mut previous = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if !leads(node) {
            continue;
        }
        let revision = node.mvcc().revision().saturating_sub(retention);
        if revision <= 0 || revision == previous {
            continue;
        }
        match compact(node, revision).await {
            Ok(()) => {
                tracing::info!(revision, retention, "auto revision compaction done");
                previous = revision;
            }
            Err(e) => tracing::warn!(
                revision,
                retry_in = ?interval,
                "auto revision compaction failed: {e}"
            ),
        }
    }
}

/// Whether this member leads, as etcd resumes its compactor on the leader only.
fn leads(node: &Node) -> bool {
    node.leading_term().is_some()
}

/// Compacts at `revision` through Raft; a revision already compacted counts as done.
async fn compact(node: &Node, revision: i64) -> Result<(), ServerError> {
    let response = node.write(Command::Compact { revision }).await?;
    match response.result {
        Ok(_) | Err(ApplyError::Compacted) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's examples in `periodic.go`: 1 hour, 24 hours, 59 minutes and 5 seconds.
    #[test]
    fn the_periodic_schedule_is_etcds() {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(
            Schedule::new(minutes(60)),
            Schedule {
                compact_interval: minutes(60),
                sample_interval: minutes(6),
                samples: 11,
            }
        );
        assert_eq!(
            Schedule::new(minutes(24 * 60)),
            Schedule {
                compact_interval: minutes(60),
                sample_interval: minutes(6),
                samples: 241,
            }
        );
        assert_eq!(
            Schedule::new(minutes(59)),
            Schedule {
                compact_interval: minutes(59),
                sample_interval: Duration::from_secs(354),
                samples: 11,
            }
        );
        assert_eq!(
            Schedule::new(Duration::from_secs(5)),
            Schedule {
                compact_interval: Duration::from_secs(5),
                sample_interval: Duration::from_millis(500),
                samples: 11,
            }
        );
    }
}
