//! Admission control: a bound, in requests and in bytes, on the writes one queue holds.
//!
//! Every queue between a client and the Raft log (a member's writes in progress, the leader's
//! proposal queue) takes a request only with an [`Admitted`] ticket from its [`Admission`]. A
//! request that finds the queue full waits for room in a line of its own, for at most
//! [`ADMISSION_WAIT`], and is refused when the line is full too or the wait runs out: before
//! anything is proposed, so the client hears a definite "too many requests" (nothing happened)
//! instead of waiting in a queue that grows until its request times out (the outcome unknown).
//! The short wait keeps clients that send again at once (as closed-loop load does) from turning
//! a full queue into a storm of refusals, each of which costs a whole request's transfer.
//!
//! The ticket travels with the request and gives its room back when dropped: when the request
//! is answered, or when it is dropped unanswered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The longest a request waits for room before it is refused.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(1);

/// How much one queue may hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Requests at once; as many more may wait for room.
    pub requests: u64,
    /// Bytes of their commands at once (counted in whole KiB). One request larger than this
    /// takes the whole queue, alone, so that no request the size checks let through is refused
    /// forever.
    pub bytes: u64,
}

/// The bound of one queue; cloning gives another handle on the same counts.
#[derive(Clone, Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    /// One permit per request the queue may hold.
    requests: Arc<Semaphore>,
    /// One permit per KiB the queue may hold.
    kib: Arc<Semaphore>,
    /// Requests waiting for room now: at most `limits.requests`.
    waiting: Arc<AtomicU64>,
    /// Requests refused since the start.
    refused: Arc<AtomicU64>,
}

/// Room in a queue for one request, given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    _kib: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            requests: Arc::new(Semaphore::new(permits(limits.requests))),
            kib: Arc::new(Semaphore::new(permits(limits.bytes.div_ceil(1024)))),
            waiting: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Takes room for a request of `bytes` bytes, waiting for it for at most `wait`; `None`
    /// (refused) if it is still full then, or if as many requests as it holds already wait.
    pub async fn admit(&self, bytes: u64, wait: Duration) -> Option<Admitted> {
        if let Some(admitted) = self.try_take(bytes) {
            return Some(admitted);
        }
        let waiting = WaitingSlot::take(&self.waiting, self.limits.requests);
        let admitted = match waiting {
            Some(_slot) => tokio::time::timeout(wait, self.take(bytes))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        if admitted.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Takes room for a request of `bytes` bytes if there is some now; `None` (refused) if not.
    /// The tests fill a queue with it.
    #[cfg(test)]
    fn try_admit(&self, bytes: u64) -> Option<Admitted> {
        let admitted = self.try_take(bytes);
        if admitted.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    fn try_take(&self, bytes: u64) -> Option<Admitted> {
        let request = self.requests.clone().try_acquire_owned().ok()?;
        let kib = self
            .kib
            .clone()
            .try_acquire_many_owned(self.kib_of(bytes))
            .ok()?;
        Some(Admitted {
            _request: request,
            _kib: kib,
        })
    }

    /// Waits for room, in the order the requests came (tokio's semaphores are fair).
    async fn take(&self, bytes: u64) -> Option<Admitted> {
        let request = self.requests.clone().acquire_owned().await.ok()?;
        let kib = self
            .kib
            .clone()
            .acquire_many_owned(self.kib_of(bytes))
            .await
            .ok()?;
        Some(Admitted {
            _request: request,
            _kib: kib,
        })
    }

    /// The KiB permits a request of `bytes` bytes takes: at most all of them.
    fn kib_of(&self, bytes: u64) -> u32 {
        let all = permits(self.limits.bytes.div_ceil(1024));
        u32::try_from(bytes.div_ceil(1024).min(all as u64)).unwrap_or(u32::MAX)
    }

    /// Requests held now.
    #[cfg(test)]
    fn requests(&self) -> u64 {
        permits(self.limits.requests).saturating_sub(self.requests.available_permits()) as u64
    }

    /// Requests refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A semaphore's permit count for a limit: at least 1, at most what both tokio's semaphores
/// (`usize::MAX >> 3`) and one `acquire_many` (`u32`) allow.
fn permits(limit: u64) -> usize {
    limit.clamp(1, u64::from(u32::MAX)) as usize
}

/// A place in the line of requests waiting for room, given back when dropped.
struct WaitingSlot<'a>(&'a AtomicU64);

impl<'a> WaitingSlot<'a> {
    fn take(waiting: &'a AtomicU64, most: u64) -> Option<WaitingSlot<'a>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < most).then_some(now + 1)
            })
            .ok()
            .map(|_| WaitingSlot(waiting))
    }
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AdmissionLimits = AdmissionLimits {
        requests: 3,
        bytes: 100 * 1024,
    };

    const KIB: u64 = 1024;

    #[test]
    fn refuses_past_either_limit_and_takes_again_once_room_is_given_back() {
        let admission = Admission::new(LIMITS);
        let a = admission.try_admit(40 * KIB).expect("room");
        let b = admission.try_admit(40 * KIB).expect("room");
        assert!(
            admission.try_admit(40 * KIB).is_none(),
            "past the byte limit"
        );
        let c = admission
            .try_admit(20 * KIB)
            .expect("exactly at the byte limit");
        assert!(admission.try_admit(0).is_none(), "past the request limit");
        assert_eq!(admission.requests(), 3);
        assert_eq!(admission.refused(), 2);
        drop(b);
        assert_eq!(admission.requests(), 2);
        let d = admission.try_admit(40 * KIB).expect("room again");
        drop((a, c, d));
        assert_eq!(admission.requests(), 0);
    }

    #[test]
    fn a_request_larger_than_the_byte_limit_goes_alone() {
        let admission = Admission::new(LIMITS);
        let big = admission
            .try_admit(1000 * KIB)
            .expect("an empty queue takes it");
        assert!(admission.try_admit(1).is_none(), "nothing joins it");
        drop(big);
        assert!(admission.try_admit(1).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_gets_the_room_given_back_within_its_wait() {
        let admission = Admission::new(LIMITS);
        let held: Vec<_> = (0..3).map(|_| admission.try_admit(KIB).unwrap()).collect();
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(KIB, ADMISSION_WAIT).await.is_some() })
        };
        tokio::time::sleep(ADMISSION_WAIT / 2).await;
        drop(held);
        assert!(waiter.await.unwrap(), "admitted once room was given back");
        assert_eq!(admission.refused(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_refused_when_its_wait_runs_out_or_the_line_is_full() {
        let admission = Admission::new(LIMITS);
        let _held: Vec<_> = (0..3).map(|_| admission.try_admit(KIB).unwrap()).collect();
        // Three wait (as many as the queue holds); the fourth is refused at once.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.admit(KIB, ADMISSION_WAIT).await.is_some() })
            })
            .collect();
        while admission.waiting.load(Ordering::Acquire) < 3 {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        assert!(admission.admit(KIB, ADMISSION_WAIT).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
        for waiter in waiters {
            assert!(!waiter.await.unwrap(), "refused when the wait ran out");
        }
        assert_eq!(admission.refused(), 4);
        assert_eq!(admission.requests(), 3);
    }
}
