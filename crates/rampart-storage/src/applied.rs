//! Waiting until the state machine has applied a log index.
//!
//! A write forwarded to the leader, or a linearizable read, waits here for this node to apply
//! an index. Each waiter sleeps until the applier passes its own index: the applier wakes just
//! the waiters it has satisfied, at a cost of one map split per applied entry, however many
//! requests wait.
//!
//! The applied index a waiter compares with is an atomic the applier publishes, not the
//! state's: a waiter never takes the state's lock, which a long read (a snapshot export, a
//! whole-keyspace Range) can hold while the applier queues for it, and so never stalls a
//! runtime worker behind one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The requests waiting for an applied index, by the index each waits for.
pub(crate) struct AppliedWaiters {
    waiting: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
    /// The last index [`AppliedWaiters::advance`] published: applied and visible to readers.
    applied: AtomicU64,
}

impl AppliedWaiters {
    /// A registry for a store that has applied up to `applied`.
    pub(crate) fn new(applied: u64) -> Self {
        AppliedWaiters {
            waiting: Mutex::default(),
            applied: AtomicU64::new(applied),
        }
    }

    /// The last applied index published.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Registers a wait for `index`, unless it is applied already: then `None`. The receiver
    /// completes once [`AppliedWaiters::advance`] passes `index`, and fails if the registry is
    /// dropped (the store closed) first.
    ///
    /// The index is read and the wait registered under the registry's lock, which `advance`
    /// takes to publish a new index: a wait registered against the old index is in the map when
    /// `advance` looks. Nothing else is locked meanwhile.
    pub(crate) fn register(&self, index: u64) -> Option<oneshot::Receiver<()>> {
        let mut waiting = self.waiting.lock();
        if self.applied() >= index {
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
            // Never backwards: a snapshot install and the entries after it publish in order.
            self.applied.fetch_max(applied, Ordering::AcqRel);
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
        let waiters = AppliedWaiters::new(5);
        assert!(waiters.register(5).is_none());
        assert!(waiters.register(4).is_none());
    }

    #[test]
    fn advance_wakes_exactly_the_waits_it_reaches() {
        let waiters = AppliedWaiters::new(1);
        let mut at_3 = waiters.register(3).unwrap();
        let mut at_5 = waiters.register(5).unwrap();
        let mut also_5 = waiters.register(5).unwrap();
        waiters.advance(2);
        assert!(at_3.try_recv().is_err(), "index 3 is not applied yet");
        waiters.advance(4);
        assert_eq!(at_3.try_recv(), Ok(()));
        assert!(at_5.try_recv().is_err());
        waiters.advance(u64::MAX);
        assert_eq!(at_5.try_recv(), Ok(()));
        assert_eq!(also_5.try_recv(), Ok(()));
        assert!(waiters.register(7).is_none(), "advance published the index");
    }

    #[test]
    fn dropping_the_registry_fails_the_waits() {
        let waiters = AppliedWaiters::new(0);
        let mut woken = waiters.register(1).unwrap();
        drop(waiters);
        assert_eq!(woken.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }
}
