//! The live watch feed: each new revision's events, broadcast to every subscribed watcher, with
//! the memory it holds for lagging watchers bounded in bytes.
//!
//! The feed is a broadcast ring of [`WATCH_FEED_CAPACITY`] messages. A message stays in the ring
//! until every subscriber has read it (or the ring overwrites it), so one watcher that does not
//! read would keep the last 4,096 revisions alive; with large values, gigabytes. So the events
//! of a revision are held apart from its message ([`FedRevision`]) and counted: when what the
//! feed holds would pass its budget ([`WATCH_FEED_BUDGET`] by default), the oldest revisions
//! still held give up their events and stay in the ring as mere notices, "revision R: read it
//! from history". A watcher that reads such a notice catches up from history as one that lagged
//! does (etcd's unsynced watchers), so it still gets every event, in order, once. A revision
//! larger than the whole budget goes out as a notice at once.
//!
//! Previous values: reading a changed key's previous version costs a history read under the
//! write lock, and most watchers never want it. The applier reads it only for the keys of the
//! watchers that asked for `prev_kv` ([`PrevKvInterest`], registered by
//! [`crate::Mvcc::subscribe_with_prev_kv`]); for every other key an event's `prev_kv` is `None`
//! on the feed (history replays still find it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::key_range::KeyRange;
use crate::types::{Event, RevisionEvents};

/// How many feed messages (one per revision, or a reset) a subscriber may fall behind before it
/// gets `RecvError::Lagged` and must catch up from history with [`crate::Mvcc::events`]. A
/// power of two, since tokio's broadcast channel rounds its capacity up to one.
pub const WATCH_FEED_CAPACITY: usize = 4096;

/// How many bytes of events the feed holds at most for subscribers that have not read them
/// yet, by default (see [`crate::Mvcc::set_watch_feed_budget`]). Past it, the oldest revisions
/// are dropped to notices and lagging watchers read them from history instead. 64 MiB is
/// thousands of revisions of ordinary values, and 64 of 1 MiB ones.
pub const WATCH_FEED_BUDGET: usize = 64 * 1024 * 1024;

/// What the live feed of [`crate::Mvcc::subscribe`] carries.
#[derive(Clone, Debug)]
pub enum WatchFeed {
    /// One new revision, sent in revision order while the revision becomes visible to
    /// readers; its events, unless the feed dropped them (see [`FedRevision::events`]).
    Revision(Arc<FedRevision>),
    /// A snapshot replaced the whole state, which is now at `revision`. Revisions in between were
    /// never sent; watchers catch up from history (which may be compacted past them).
    Reset { revision: i64 },
}

/// One revision on the feed. Its events are counted against the feed's budget for as long as
/// the feed holds them.
#[derive(Debug)]
pub struct FedRevision {
    revision: i64,
    /// The approximate size of `events`, counted in the feed's `held` total while they are here.
    bytes: usize,
    /// `None` once the feed dropped them to stay in its budget (or if they never fitted).
    events: Mutex<Option<Arc<RevisionEvents>>>,
    /// The feed's total of bytes held, which this revision leaves when its events go.
    held: Arc<AtomicUsize>,
}

impl FedRevision {
    /// The revision this message is about.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// About how many bytes its events take (whether or not the feed still holds them).
    pub fn size(&self) -> usize {
        self.bytes
    }

    /// The revision's events, each with its `prev_kv` if a [`PrevKvInterest`] covering its key
    /// was registered when the revision was applied (and the key existed before). `None` if the
    /// feed dropped them to stay within its budget: read the revision from history then.
    pub fn events(&self) -> Option<Arc<RevisionEvents>> {
        self.events.lock().clone()
    }

    /// Drops the events, if still here, and takes them off the feed's total; whether they were.
    fn drop_events(&self) -> bool {
        let dropped = self.events.lock().take().is_some();
        if dropped {
            self.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
        dropped
    }
}

impl Drop for FedRevision {
    fn drop(&mut self) {
        // Read by every subscriber, overwritten in the ring, or never sent: no longer held.
        if self.events.get_mut().take().is_some() {
            self.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// The feed's counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchFeedStats {
    /// Bytes of events (approximately) that the feed holds for subscribers now.
    pub held_bytes: usize,
    /// How many previous versions the applier has read from history for the feed's `prev_kv`.
    pub prev_values_read: u64,
    /// How many revisions went out as notices, their events dropped (or never held) to stay
    /// within the budget.
    pub revisions_dropped: u64,
}

/// The sending side of the feed, owned by the MVCC core; sent to only under its write lock.
pub(crate) struct Feed {
    sender: broadcast::Sender<WatchFeed>,
    /// Bytes of events held by the revisions alive in the ring (or in subscribers' hands).
    held: Arc<AtomicUsize>,
    /// The most `held` may reach before the oldest revisions drop their events.
    budget: AtomicUsize,
    /// The revisions sent that may still hold events, oldest first. Those read by everyone
    /// are dead here and are pruned from the front; since the ring drops its oldest messages
    /// first, at most about [`WATCH_FEED_CAPACITY`] entries stay.
    sent: Mutex<VecDeque<Weak<FedRevision>>>,
    /// The key ranges whose previous values the feed's events must carry.
    interests: Arc<Mutex<Interests>>,
    prev_values_read: AtomicU64,
    revisions_dropped: AtomicU64,
}

impl Feed {
    pub(crate) fn new() -> Self {
        Feed {
            sender: broadcast::channel(WATCH_FEED_CAPACITY).0,
            held: Arc::default(),
            budget: AtomicUsize::new(WATCH_FEED_BUDGET),
            sent: Mutex::default(),
            interests: Arc::default(),
            prev_values_read: AtomicU64::new(0),
            revisions_dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<WatchFeed> {
        self.sender.subscribe()
    }

    /// Whether anyone listens. `receiver_count` and `subscribe` synchronize on the channel's
    /// lock, so a subscriber not counted here subscribes after this point.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Registers `range` as one whose previous values the feed must carry, until the returned
    /// interest is dropped. The caller holds the state's read lock (see
    /// [`crate::Mvcc::subscribe_with_prev_kv`]).
    pub(crate) fn want_prev_kv(&self, range: KeyRange) -> PrevKvInterest {
        let mut interests = self.interests.lock();
        let id = interests.next_id;
        interests.next_id += 1;
        let mut ranges = Vec::clone(&interests.ranges);
        ranges.push((id, range));
        interests.ranges = Arc::new(ranges);
        PrevKvInterest {
            id,
            interests: self.interests.clone(),
        }
    }

    /// The ranges whose previous values are wanted now; the applier asks once per revision.
    pub(crate) fn prev_kv_ranges(&self) -> PrevKvRanges {
        PrevKvRanges(self.interests.lock().ranges.clone())
    }

    /// Counts previous versions read from history for the feed.
    pub(crate) fn count_prev_reads(&self, reads: u64) {
        if reads > 0 {
            self.prev_values_read.fetch_add(reads, Ordering::Relaxed);
        }
    }

    /// Sends one revision's events, first making room for them in the budget by dropping the
    /// events of the oldest revisions still held; the caller holds the write lock.
    pub(crate) fn send_revision(&self, events: RevisionEvents) {
        let bytes = approximate_size(&events);
        let budget = self.budget.load(Ordering::Relaxed);
        let mut sent = self.sent.lock();
        let fits = bytes <= budget;
        let adding = if fits { bytes } else { 0 };
        let mut dropped = u64::from(!fits);
        while self.held.load(Ordering::Acquire) + adding > budget {
            let Some(oldest) = sent.pop_front() else {
                break; // the rest is leaving: its last holders are dropping it
            };
            if oldest.upgrade().is_some_and(|oldest| oldest.drop_events()) {
                dropped += 1;
            }
        }
        self.held.fetch_add(adding, Ordering::AcqRel);
        if dropped > 0 {
            self.revisions_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        let revision = Arc::new(FedRevision {
            revision: events.revision,
            bytes,
            events: Mutex::new(fits.then(|| Arc::new(events))),
            held: self.held.clone(),
        });
        // Those read by every subscriber have gone; the front is the oldest that may be held.
        while sent.front().is_some_and(|r| r.strong_count() == 0) {
            sent.pop_front();
        }
        if fits {
            sent.push_back(Arc::downgrade(&revision));
        }
        drop(sent);
        // An error only means every receiver has gone since the caller checked; the revision
        // then drops, and takes its bytes off the total.
        let _ = self.sender.send(WatchFeed::Revision(revision));
    }

    /// Tells every subscriber that a snapshot replaced the state; the caller holds the write
    /// lock.
    pub(crate) fn send_reset(&self, revision: i64) {
        // No receiver is not an error.
        let _ = self.sender.send(WatchFeed::Reset { revision });
    }

    pub(crate) fn set_budget(&self, bytes: usize) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> WatchFeedStats {
        WatchFeedStats {
            held_bytes: self.held.load(Ordering::Acquire),
            prev_values_read: self.prev_values_read.load(Ordering::Relaxed),
            revisions_dropped: self.revisions_dropped.load(Ordering::Relaxed),
        }
    }
}

/// The memory one revision's events take, roughly: their keys and values and a fixed cost per
/// event.
fn approximate_size(events: &RevisionEvents) -> usize {
    let kv_bytes = |kv: &crate::types::KeyValue| kv.key.len() + kv.value.len();
    std::mem::size_of::<RevisionEvents>()
        + events
            .events
            .iter()
            .map(|e| {
                std::mem::size_of::<Event>()
                    + kv_bytes(&e.kv)
                    + e.prev_kv.as_ref().map_or(0, kv_bytes)
            })
            .sum::<usize>()
}

/// The registered interests in previous values. The ranges are replaced, never changed in
/// place, so that the applier takes them with one clone of an `Arc`.
#[derive(Default)]
struct Interests {
    next_id: u64,
    ranges: Arc<Vec<(u64, KeyRange)>>,
}

/// The key ranges whose previous values one revision's events carry.
pub(crate) struct PrevKvRanges(Arc<Vec<(u64, KeyRange)>>);

impl PrevKvRanges {
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.0.iter().any(|(_, range)| range.contains(key))
    }
}

/// A watcher's interest in previous values: while it is held, the feed's events on its keys
/// carry their `prev_kv`. Dropping it withdraws the interest.
pub struct PrevKvInterest {
    id: u64,
    interests: Arc<Mutex<Interests>>,
}

impl std::fmt::Debug for PrevKvInterest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrevKvInterest")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for PrevKvInterest {
    fn drop(&mut self) {
        // Withdrawing needs no lock on the state: at worst the applier reads previous values
        // for one more revision that no one wants.
        let mut interests = self.interests.lock();
        let ranges = interests
            .ranges
            .iter()
            .filter(|(id, _)| *id != self.id)
            .cloned()
            .collect();
        interests.ranges = Arc::new(ranges);
    }
}
