//! Waiting until the state machine has applied a log index.
//!
//! A write forwarded to the leader, or a linearizable read, waits here for this node to apply
//! an index. Each waiter sleeps until the applier passes its own index: the applier wakes just
//! the waiters it has satisfied, at a cost of one map split per applied entry, however many
//! requests wait.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The requests waiting for an applied index, by the index each waits for.
#[derive(Default)]
pub(crate) struct AppliedWaiters {
    waiting: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
}

impl AppliedWaiters {
    /// Registers a wait for `index`, unless `applied()` (read with the registry locked) already
    /// reaches it: then `None`. The receiver completes once [`AppliedWaiters::advance`] passes
    /// `index`, and fails if the registry is dropped (the store closed) first.
    ///
    /// Lock order: the registry, then whatever `applied` locks; the applier updates its applied
    /// index first and calls `advance` after, so a wait registered against the old index is
    /// still in the map when `advance` looks.
    pub(crate) fn register(
        &self,
        index: u64,
        applied: impl FnOnce() -> u64,
    ) -> Option<oneshot::Receiver<()>> {
        let mut waiting = self.waiting.lock();
        if applied() >= index {
            return None;
        }
        let (wake, woken) = oneshot::channel();
        waiting.entry(index).or_default().push(wake);
        Some(woken)
    }

    /// Wakes every wait for an index up to `applied`. Called by the applier once `applied` is
    /// visible to readers, without holding the state lock.
    pub(crate) fn advance(&self, applied: u64) {
        let ready = {
            let mut waiting = self.waiting.lock();
            match waiting.first_key_value() {
                Some((&first, _)) if first <= applied => {}
                _ => return,
            }
            let later = match applied.checked_add(1) {
                Some(next) => waiting.split_off(&next),
                None => BTreeMap::new(),
            };
            std::mem::replace(&mut *waiting, later)
        };
        for wake in ready.into_values().flatten() {
            // An error only means the request stopped waiting (it timed out).
            let _ = wake.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_applied_needs_no_wait() {
        let waiters = AppliedWaiters::default();
        assert!(waiters.register(5, || 5).is_none());
        assert!(waiters.register(4, || 5).is_none());
    }

    #[test]
    fn advance_wakes_exactly_the_waits_it_reaches() {
        let waiters = AppliedWaiters::default();
        let mut at_3 = waiters.register(3, || 1).unwrap();
        let mut at_5 = waiters.register(5, || 1).unwrap();
        let mut also_5 = waiters.register(5, || 1).unwrap();
        waiters.advance(2);
        assert!(at_3.try_recv().is_err(), "index 3 is not applied yet");
        waiters.advance(4);
        assert_eq!(at_3.try_recv(), Ok(()));
        assert!(at_5.try_recv().is_err());
        waiters.advance(u64::MAX);
        assert_eq!(at_5.try_recv(), Ok(()));
        assert_eq!(also_5.try_recv(), Ok(()));
    }

    #[test]
    fn dropping_the_registry_fails_the_waits() {
        let waiters = AppliedWaiters::default();
        let mut woken = waiters.register(1, || 0).unwrap();
        drop(waiters);
        assert_eq!(woken.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }
}
