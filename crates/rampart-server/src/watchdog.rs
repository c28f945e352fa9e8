//! The storage stall watchdog: a member whose storage stops (a disk that no longer answers, or
//! the storage engine stuck inside itself) exits instead of staying frozen.
//!
//! A frozen member is worse than a dead one. Its clients' requests hang instead of failing, so
//! they never move to another member; it keeps its connections, so its peers and load
//! balancers keep counting on it; and nothing about it heals. A member that exits is restarted
//! by its supervisor (systemd, Docker, Kubernetes) and recovers as from any crash: sled
//! recovers its log up to the last write that reached the disk, the store replays the Raft log
//! from the applied index it finds there, and the leader sends whatever else it lacks.
//!
//! The watchdog looks every [`CHECK_EVERY`] (or more often, for short limits) at the storage
//! operation in progress for longest ([`rampart_storage::InFlight`]). Past the limit
//! (`--storage-stall-timeout`) it logs which operation is stuck and for how long, and calls
//! its `on_stall`, which for a member is [`exit_frozen`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use rampart_storage::StorageStats;

/// How often the watchdog looks, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the watchdog found stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The operation in progress for longest: "database flush", "log append", "log fsync",
    /// "apply" or "compaction".
    pub operation: &'static str,
    /// How long it had been in progress.
    pub stuck_for: Duration,
}

/// Starts a thread that watches the storage operations of `stats` and calls `on_stall` once
/// if one is in progress for longer than `limit`. The thread ends after that call, or once
/// the store that `stats` belongs to is gone. A zero `limit` starts nothing.
pub fn start(
    stats: &Arc<StorageStats>,
    limit: Duration,
    on_stall: impl FnOnce(Stall) + Send + 'static,
) -> std::io::Result<()> {
    if limit.is_zero() {
        return Ok(());
    }
    let stats = Arc::downgrade(stats);
    std::thread::Builder::new()
        .name("storage-watchdog".into())
        .spawn(move || {
            if let Some(stall) = watch(&stats, limit) {
                on_stall(stall);
            }
        })?;
    Ok(())
}

/// Looks until an operation of `stats` is past `limit` (returning it) or the store is gone.
fn watch(stats: &Weak<StorageStats>, limit: Duration) -> Option<Stall> {
    let every = CHECK_EVERY.min(limit / 4);
    loop {
        std::thread::sleep(every);
        let oldest = stats.upgrade()?.in_flight.oldest();
        if let Some((operation, stuck_for)) = oldest {
            if stuck_for > limit {
                return Some(Stall {
                    operation,
                    stuck_for,
                });
            }
        }
    }
}

/// A member's answer to a stall: log it, then abort the process. Abort, not exit: exiting runs
/// the process's exit handlers, which could wait on what is stuck; and SIGABRT leaves a core
/// dump where the system keeps them, which shows where the storage was stuck.
pub fn exit_frozen(stall: Stall) {
    tracing::error!(
        operation = stall.operation,
        stuck_for_ms = stall.stuck_for.as_millis() as u64,
        "storage stalled: this member is frozen and exits now (--storage-stall-timeout); \
         restarted, it recovers from its data directory and catches up from its peers"
    );
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// A store's stats, watched with `limit`, and where the stalls the watchdog finds arrive.
    fn watched(limit: Duration) -> (Arc<StorageStats>, mpsc::Receiver<Stall>) {
        let stats = Arc::new(StorageStats::default());
        let (sender, stalls) = mpsc::channel();
        start(&stats, limit, move |stall| sender.send(stall).unwrap()).unwrap();
        (stats, stalls)
    }

    /// Whether the watchdog has ended (the sender it held is gone) within a few seconds.
    fn ended(stalls: &mpsc::Receiver<Stall>) -> bool {
        matches!(
            stalls.recv_timeout(Duration::from_secs(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    }

    #[test]
    fn an_operation_past_the_limit_is_reported_once_and_short_ones_never() {
        let limit = Duration::from_secs(1);
        let (stats, stalls) = watched(limit);

        // Operations far shorter than the limit, back to back, for several limits' time.
        let began = Instant::now();
        while began.elapsed() < limit * 3 {
            let _flush = stats.in_flight.begin("database flush");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            stalls.try_recv().is_err(),
            "no operation was past the limit"
        );

        let stuck = stats.in_flight.begin("log fsync");
        let stall = stalls
            .recv_timeout(Duration::from_secs(10))
            .expect("the stuck fsync is reported");
        assert_eq!(stall.operation, "log fsync");
        assert!(stall.stuck_for > limit, "{stall:?}");
        drop(stuck);
        assert!(ended(&stalls), "the watchdog reports once, then ends");
    }

    #[test]
    fn the_watchdog_ends_with_its_store() {
        let (stats, stalls) = watched(Duration::from_millis(100));
        drop(stats);
        assert!(ended(&stalls));
    }

    #[test]
    fn a_zero_limit_watches_nothing() {
        let (stats, stalls) = watched(Duration::ZERO);
        let _stuck = stats.in_flight.begin("apply");
        assert!(ended(&stalls));
    }
}
