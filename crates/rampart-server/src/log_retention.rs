//! The Raft log's retention in requests, etcd's unit: a snapshot once `--snapshot-count`
//! requests were applied since the last one, and a purge that keeps the last
//! `--snapshot-catchup-entries` requests behind it.
//!
//! openraft counts log entries, and a Rampart entry may batch many requests (puts proposed
//! together, a forwarded batch), so a log of 100,000 entries can be a hundred times etcd's. Its
//! entry-count policy stays on, with the same numbers (an entry holds at least one request, so
//! it never asks for more of the log than this does); this task asks openraft for the snapshots
//! and purges that the request counts call for earlier. A snapshot is the state machine's durable
//! point, one flush (see `rampart_storage`'s `snapshot` module), so asking often costs little.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// How often the counts are looked at.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long a snapshot asked for may take to show in the metrics before it is asked for again
/// (a build is one flush, which a large store under writes can make last several looks).
const BUILD_PATIENCE: Duration = Duration::from_secs(30);

/// What the counts call for at one look.
#[derive(Debug, PartialEq, Eq)]
struct Steps {
    /// Build a snapshot now.
    snapshot: bool,
    /// Purge the log up to this index.
    purge_upto: Option<u64>,
}

/// Decides, from the applied index, the current snapshot's last index and the last purged
/// index, what to ask openraft for.
fn steps(
    requests: &rampart_storage::AppliedRequests,
    applied: u64,
    snapshot: Option<u64>,
    purged: Option<u64>,
    snapshot_count: u64,
    catchup: u64,
) -> Steps {
    let since = snapshot.unwrap_or(0);
    let snapshot_now = requests.between(since, applied) >= snapshot_count;
    let purge_upto = snapshot
        .and_then(|last| requests.keep_from(last, catchup))
        .filter(|&upto| upto > 0 && purged.is_none_or(|p| upto > p));
    Steps {
        snapshot: snapshot_now,
        purge_upto,
    }
}

/// Runs until `cancel`.
pub(crate) async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let requests = node.applied_requests();
    let (snapshot_count, catchup) = (
        node.config().snapshot_count,
        node.config().snapshot_catchup_entries,
    );
    // The applied index a snapshot was last asked at, and when: not asked again until one at
    // least that recent shows, or `BUILD_PATIENCE` has passed.
    let mut asked: Option<(u64, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let metrics = node.metrics();
        let purged = metrics.purged.map(|id| id.index);
        if let Some(purged) = purged {
            requests.forget_through(purged);
        }
        let applied = metrics.last_applied.map_or(0, |id| id.index);
        let snapshot = metrics.snapshot.map(|id| id.index);
        let todo = steps(
            &requests,
            applied,
            snapshot,
            purged,
            snapshot_count,
            catchup,
        );
        let waiting = asked.is_some_and(|(at, when)| {
            snapshot.unwrap_or(0) < at && when.elapsed() < BUILD_PATIENCE
        });
        // Both only fail once Raft has stopped, which ends this task through `cancel` too.
        if todo.snapshot && !waiting {
            tracing::debug!(
                applied,
                "snapshot-count requests applied since the last snapshot"
            );
            asked = Some((applied, tokio::time::Instant::now()));
            let _ = node.raft().trigger().snapshot().await;
        }
        if let Some(upto) = todo.purge_upto {
            let _ = node.raft().trigger().purge_log(upto).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use rampart_storage::AppliedRequests;

    use super::*;

    /// Entries 1..=`n`, each a batch of `per_entry` requests.
    fn applied(n: u64, per_entry: u64) -> AppliedRequests {
        let requests = AppliedRequests::default();
        for index in 1..=n {
            requests.note_requests(index, per_entry);
        }
        requests
    }

    #[test]
    fn a_snapshot_comes_after_snapshot_count_requests_not_entries() {
        // 10 entries of 100 requests: 1,000 requests.
        let requests = applied(10, 100);
        let at = |count| steps(&requests, 10, None, None, count, 0).snapshot;
        assert!(at(1_000));
        assert!(!at(1_001));
        // Since a snapshot at entry 5: 500 requests.
        assert!(steps(&requests, 10, Some(5), None, 500, 0).snapshot);
        assert!(!steps(&requests, 10, Some(5), None, 501, 0).snapshot);
    }

    #[test]
    fn the_purge_keeps_catchup_requests_behind_the_snapshot() {
        let requests = applied(10, 100);
        // 250 requests behind a snapshot at 10 are the last three entries: purge up to 7.
        let purge = |purged| steps(&requests, 10, Some(10), purged, u64::MAX, 250).purge_upto;
        assert_eq!(purge(None), Some(7));
        assert_eq!(purge(Some(6)), Some(7));
        assert_eq!(purge(Some(7)), None, "already purged");
        // Nothing to purge without a snapshot, or when the log holds fewer requests.
        assert_eq!(
            steps(&requests, 10, None, None, u64::MAX, 0).purge_upto,
            None
        );
        assert_eq!(
            steps(&requests, 10, Some(10), None, u64::MAX, 5_000).purge_upto,
            None
        );
    }
}
