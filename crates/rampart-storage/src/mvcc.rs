//! The MVCC store shared by the state machine (the only writer) and the readers.
//!
//! [`MvccCore`] owns the sled tree and, behind one `RwLock`, the cached bookkeeping and the key
//! index that describe it. The lock is what makes each log entry atomic to readers: the state
//! machine holds the write lock while it executes an entry and applies its batch, and every read
//! (a Range, a snapshot export) holds the read lock, so no reader ever sees half an entry.
//! [`Mvcc`] is the cheap read handle handed to the server.
//!
//! The core also owns the live watch feed ([`crate::watch_feed`]). Every message is sent while
//! the write lock is still held, right after the state it describes became visible: so messages
//! go out in revision order, and a subscriber that subscribes, then reads [`Mvcc::revision`],
//! then replays history up to that revision with [`Mvcc::events`] sees every revision exactly
//! once (those up to the revision it read from history, the later ones from the feed, or from
//! history again when the feed dropped them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::{LogId, StoredMembership};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::{broadcast, watch};

use crate::applied::AppliedWaiters;
use crate::auth::AuthState;
use crate::codec::{
    self, Pairs, Progress, FORMAT_VERSION, FORMAT_VERSION_3, HISTORY, META, META_ALARM_PREFIX,
    META_COMPACT, META_FORMAT, META_MEMBERSHIP, META_MEMBER_PREFIX, META_PROGRESS, V3_APPLIED,
    V3_APPLIED_PART, V3_REVISION,
};
use crate::compactor::Compactor;
use crate::database::Database;
use crate::durability::Disk;
use crate::error::{MvccError, StoreError};
use crate::index::KeyIndex;
use crate::key_range::KeyRange;
use crate::lease::{self, LeaseFeed, LeaseFeeds};
use crate::range::{self, Writes};
use crate::redo::{Redo, WriteBatch};
use crate::snapshot::SnapshotWriter;
use crate::types::{
    AlarmMember, ApplyError, Lease, MemberAttributes, NodeId, PeerNode, RangeRequest,
    RangeResponse, RevisionEvents,
};
use crate::watch_feed::{Feed, PrevKvInterest, WatchFeed, WatchFeedStats};

/// The bookkeeping of the MVCC tree, cached in memory (always equal to the `m` keys on disk), and
/// the index of its history.
pub(crate) struct MvccState {
    /// Store revision; 1 on an empty store.
    pub revision: i64,
    /// Reads below this revision fail; 0 if never compacted.
    pub compact_revision: i64,
    /// The last log entry whose effects are in the tree.
    pub applied: Option<LogId<NodeId>>,
    /// The batch entry being applied and the position of its last applied command (see
    /// [`Progress::applied_part`]).
    pub applied_part: Option<(LogId<NodeId>, u32)>,
    /// The last membership applied.
    pub membership: StoredMembership<NodeId, PeerNode>,
    /// Latest published attributes per member.
    pub members: BTreeMap<NodeId, MemberAttributes>,
    /// The raised alarms (see `crate::alarms`).
    pub alarms: BTreeSet<AlarmMember>,
    /// Users, roles and whether authentication is on (see `crate::auth`).
    pub auth: Arc<AuthState>,
    /// Which version of each key is visible at each revision.
    pub index: KeyIndex,
}

impl MvccState {
    /// Rebuilds the state from the tree's meta pairs (`m` prefix), wherever they come from: the
    /// tree itself or a snapshot about to be installed. Checks the layout version, and returns
    /// it: [`FORMAT_VERSION`], or [`FORMAT_VERSION_3`], which the caller upgrades with
    /// [`upgrade_v3`]. The index is left empty: see [`KeyIndex::rebuild`].
    pub(crate) fn from_meta<K, V>(
        pairs: impl Iterator<Item = Result<(K, V), StoreError>>,
    ) -> Result<(Self, u32), StoreError>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut state = MvccState {
            revision: 1,
            compact_revision: 0,
            applied: None,
            applied_part: None,
            membership: StoredMembership::default(),
            members: BTreeMap::new(),
            alarms: BTreeSet::new(),
            auth: Arc::new(AuthState::default()),
            index: KeyIndex::default(),
        };
        let mut auth = AuthState::default();
        let mut format = None;
        let mut progress = None;
        let mut v3 = Progress::default();
        let mut v3_seen = false;
        for pair in pairs {
            let (k, v) = pair?;
            let (k, v) = (k.as_ref(), v.as_ref());
            match k {
                META_FORMAT => format = Some(codec::decode::<u32>("mvcc format version", v)?),
                META_PROGRESS => progress = Some(codec::decode("progress", v)?),
                META_COMPACT => state.compact_revision = codec::decode("compact revision", v)?,
                META_MEMBERSHIP => state.membership = codec::decode("membership", v)?,
                k if k.starts_with(META_MEMBER_PREFIX) => {
                    let attrs: MemberAttributes = codec::decode("member attributes", v)?;
                    state.members.insert(attrs.id, attrs);
                }
                k if k.starts_with(META_ALARM_PREFIX) => {
                    state.alarms.insert(crate::alarms::decode_alarm_key(k)?);
                }
                V3_REVISION => (v3.revision, v3_seen) = (codec::decode("store revision", v)?, true),
                V3_APPLIED => (v3.applied, v3_seen) = (codec::decode("applied log id", v)?, true),
                V3_APPLIED_PART => {
                    v3.applied_part = Some(codec::decode("applied batch position", v)?);
                    v3_seen = true;
                }
                other => {
                    if !auth.read_pair(other, v)? {
                        return Err(StoreError::corrupt(
                            "mvcc meta",
                            format!("unknown meta key {:?}", String::from_utf8_lossy(other)),
                        ));
                    }
                }
            }
        }
        let progress = match format {
            Some(FORMAT_VERSION) if !v3_seen => progress.unwrap_or_default(),
            Some(FORMAT_VERSION_3) if progress.is_none() => v3,
            Some(FORMAT_VERSION | FORMAT_VERSION_3) => {
                return Err(StoreError::corrupt(
                    "mvcc meta",
                    "both layout version 3's and version 4's applied position",
                ))
            }
            Some(found) => {
                return Err(StoreError::corrupt(
                    "mvcc tree",
                    format!("layout version {found}, this build reads {FORMAT_VERSION}"),
                ))
            }
            None => return Err(StoreError::corrupt("mvcc tree", "no layout version")),
        };
        state.set_progress(progress);
        state.auth = Arc::new(auth);
        Ok((state, format.unwrap_or(FORMAT_VERSION)))
    }

    /// The revision and applied position, as recorded under [`META_PROGRESS`].
    pub(crate) fn progress(&self) -> Progress {
        Progress {
            revision: self.revision,
            applied: self.applied,
            applied_part: self.applied_part,
        }
    }

    pub(crate) fn set_progress(&mut self, progress: Progress) {
        self.revision = progress.revision;
        self.applied = progress.applied;
        self.applied_part = progress.applied_part;
    }
}

/// Adds to `batch` the writes that turn a layout version 3 tree, whose state is `state`, into
/// the current layout: its three meta values become one progress record.
fn upgrade_v3(batch: &mut sled::Batch, state: &MvccState) -> Result<(), StoreError> {
    for key in [V3_REVISION, V3_APPLIED, V3_APPLIED_PART] {
        batch.remove(key);
    }
    batch.insert(META_PROGRESS, codec::encode("progress", &state.progress())?);
    batch.insert(
        META_FORMAT,
        codec::encode("mvcc format version", &FORMAT_VERSION)?,
    );
    Ok(())
}

/// Removes the history past `revision`, the tree's recorded revision: versions whose write set a
/// crash cut short before its progress record (see [`crate::redo`]), never visible to anyone.
/// Returns how many there were.
fn drop_unrecorded_history(tree: &sled::Tree, revision: i64) -> Result<usize, StoreError> {
    let start = codec::history_key_start(revision.saturating_add(1));
    let mut dropped = 0;
    for key in tree
        .range(start.as_slice()..[HISTORY + 1].as_slice())
        .keys()
    {
        tree.remove(key?)?;
        dropped += 1;
    }
    Ok(dropped)
}

/// The MVCC tree and its cached state. Shared by [`Mvcc`], the state machine and the snapshot
/// builder.
pub(crate) struct MvccCore {
    /// The current database, which holds the state machine's trees (see [`MvccCore::tree`]).
    pub database: Arc<Database>,
    /// The redo record of the last write set that needed one (see [`crate::redo`]).
    pub redo: Redo,
    /// Guards `tree` as a whole (see the module docs) and caches its bookkeeping.
    pub state: RwLock<MvccState>,
    /// The live watch feed; sent to only with `state` locked for writing (see the module docs),
    /// and its interests in previous values registered only with it locked for reading.
    pub feed: Feed,
    /// Requests waiting for an applied index; advanced by the applier after each entry.
    pub applied_waiters: AppliedWaiters,
    /// The feeds of grants and revokes; sent to only with `state` locked for writing, opened
    /// only with it locked (see [`Mvcc::follow_leases`]).
    pub lease_feeds: LeaseFeeds,
    /// Removes compacted versions in the background; started by [`Compactor::start`].
    pub compactor: Compactor,
    /// A log index the tree is known to hold on disk: the applied index found at open, then
    /// raised after the flushes that follow building or installing a snapshot. The log's purge
    /// waits for it (see [`crate::log_store`]), so that the durable purge mark never runs ahead
    /// of what the state machine can rebuild from.
    pub durable_applied: watch::Sender<u64>,
    /// Bytes of keys and values in the state machine's tree: counted at open, then kept up to
    /// date by the applier, the compactor and installs. What Status reports as `dbSizeInUse`.
    live_bytes: AtomicU64,
    /// While a defragment copies the tree, the keys outside history that entries wrote since
    /// it began (see [`crate::defrag`]); `None` otherwise.
    pub changed_in_place: Mutex<Option<BTreeSet<Vec<u8>>>>,
    /// A copy of `state`'s raised alarms, replaced whenever they change (with `state` locked
    /// for writing): the checks every client call makes read it without waiting for an entry
    /// being applied.
    raised_alarms: Mutex<Arc<BTreeSet<AlarmMember>>>,
    /// `state`'s auth store, replaced whenever it changes (with `state` locked for writing):
    /// every client call's checks read it without waiting for an entry being applied.
    published_auth: Mutex<Arc<AuthState>>,
}

impl MvccCore {
    /// Opens the state machine tree, stamping the layout version into a new one.
    pub(crate) fn open(database: Arc<Database>) -> Result<Self, StoreError> {
        let tree = database.get().mvcc.clone();
        if tree.is_empty() {
            // A brand-new tree: only the version stamp, so later opens (and snapshots) can check it.
            tree.insert(
                META_FORMAT,
                codec::encode("mvcc format version", &FORMAT_VERSION)?,
            )?;
        }
        let read_state = || {
            MvccState::from_meta(
                tree.scan_prefix([META])
                    .map(|r| r.map_err(StoreError::from)),
            )
        };
        let redo = Redo::open(database.clone());
        let (mut state, mut format) = read_state()?;
        if let Some(finished) = redo.recover(&tree, state.applied)? {
            tracing::info!(log_id = %finished, "finished applying the entry a crash interrupted");
            (state, format) = read_state()?;
        }
        if format == FORMAT_VERSION_3 {
            let mut batch = sled::Batch::default();
            upgrade_v3(&mut batch, &state)?;
            tree.apply_batch(batch)?;
            tracing::info!(
                "upgraded the state machine's layout from version 3 to {FORMAT_VERSION}"
            );
        }
        let dropped = drop_unrecorded_history(&tree, state.revision)?;
        if dropped > 0 {
            tracing::info!(
                versions = dropped,
                revision = state.revision,
                "removed history past the recorded revision (the writes of an entry a crash \
                 interrupted; it is applied again)"
            );
        }
        // Reads the whole tree, so that sled checks every page of it now (see `verify_readable`).
        let mut live_bytes = 0u64;
        state.index = KeyIndex::rebuild(tree.iter().map(|r| {
            let (k, v) = r?;
            live_bytes += (k.len() + v.len()) as u64;
            Ok((k, v))
        }))?;
        let applied = state.applied.map_or(0, |id| id.index);
        let raised_alarms = Mutex::new(Arc::new(state.alarms.clone()));
        let published_auth = Mutex::new(state.auth.clone());
        Ok(MvccCore {
            compactor: Compactor::open(database.clone())?,
            database,
            redo,
            state: RwLock::new(state),
            feed: Feed::new(),
            applied_waiters: AppliedWaiters::new(applied),
            lease_feeds: LeaseFeeds::default(),
            // What was read back from sled at open is on disk.
            durable_applied: watch::Sender::new(applied),
            live_bytes: AtomicU64::new(live_bytes),
            changed_in_place: Mutex::new(None),
            raised_alarms,
            published_auth,
        })
    }

    /// Publishes `state`'s raised alarms to [`Mvcc::alarms`]; called with `state` locked for
    /// writing, after they changed.
    pub(crate) fn publish_alarms(&self, state: &MvccState) {
        *self.raised_alarms.lock() = Arc::new(state.alarms.clone());
    }

    /// Publishes `state`'s auth store to [`Mvcc::auth`]; called with `state` locked for
    /// writing, after it changed.
    pub(crate) fn publish_auth(&self, state: &MvccState) {
        *self.published_auth.lock() = state.auth.clone();
    }

    /// Notes the keys outside history that `batch` wrote, if a defragment is copying; called
    /// by the applier with the state locked for writing, after the writes.
    pub(crate) fn note_changed_in_place(&self, batch: &WriteBatch) {
        if let Some(keys) = self.changed_in_place.lock().as_mut() {
            keys.extend(batch.keys_outside_history().map(<[u8]>::to_vec));
        }
    }

    /// The state machine's tree in the current database. Take it, and write through it, only
    /// with the state locked (for writing, to write): a defragment swaps the database under the
    /// state's write lock (see [`crate::database`]).
    pub(crate) fn tree(&self) -> sled::Tree {
        self.database.get().mvcc.clone()
    }

    /// The current database's files, for a flush.
    pub(crate) fn disk(&self) -> Arc<Disk> {
        self.database.get().disk.clone()
    }

    /// Bytes of keys and values the state machine's tree holds (see `live_bytes`).
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    /// Adds `grown` (bytes, possibly negative) to the live bytes; called by the tree's writers.
    pub(crate) fn live_bytes_grew(&self, grown: i64) {
        if grown >= 0 {
            self.live_bytes.fetch_add(grown as u64, Ordering::Relaxed);
        } else {
            self.live_bytes_shrank(grown.unsigned_abs() as usize);
        }
    }

    /// Takes `freed` bytes off the live bytes (never below 0: the count is an estimate).
    pub(crate) fn live_bytes_shrank(&self, freed: usize) {
        let _ = self
            .live_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                Some(live.saturating_sub(freed as u64))
            });
    }

    /// Sets the live bytes, counted anew over a whole tree.
    pub(crate) fn set_live_bytes(&self, bytes: u64) {
        self.live_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Whether the compactor has removed everything `state`'s compact revision supersedes: from
    /// then on, until the next entry applies, history holds the same rows however often it is
    /// read.
    pub(crate) fn compaction_settled(&self, state: &MvccState) -> bool {
        *self.compactor.subscribe().borrow() >= state.compact_revision
    }

    /// Records that the tree holds everything applied up to log index `index` on disk; called
    /// only after a flush that followed that entry's apply.
    pub(crate) fn flushed_through(&self, index: u64) {
        self.durable_applied.send_if_modified(|durable| {
            let raised = index > *durable;
            if raised {
                *durable = index;
            }
            raised
        });
    }

    /// The state, locked for reading. The lock is held for writing while an entry is applied,
    /// and new readers also queue behind an applier waiting for a snapshot's export: both may
    /// take long (a delete of many keys), so a reader that cannot have the lock at once waits off
    /// the runtime's worker, which goes on serving other requests and Raft's heartbeats.
    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, MvccState> {
        self.state
            .try_read()
            .unwrap_or_else(|| blocking(|| self.state.read()))
    }

    /// Streams the tree as of one applied entry into the snapshot that `start` begins for that
    /// state, without stopping writes for long: under the state's read lock, the state is
    /// captured and the pairs that change in place (leases, attachments, bookkeeping) are
    /// written; then, without the lock, the history rows up to the captured revision, which
    /// are never rewritten and which nothing removes meanwhile (the compactor and installs wait
    /// for the export; see [`Compactor::hold_removals`]). Later entries only add history rows
    /// past that revision, which are left out. `each_history_row` runs after each row (a test
    /// seam).
    pub(crate) fn export(
        &self,
        start: impl FnOnce(&MvccState) -> Result<SnapshotWriter, StoreError>,
        redact: impl Fn(&[u8], &[u8]) -> Result<Option<Vec<u8>>, StoreError>,
        mut each_history_row: impl FnMut(),
    ) -> Result<SnapshotWriter, StoreError> {
        let _removals = self.compactor.hold_removals();
        let history: &[u8] = &[HISTORY];
        let after_history: &[u8] = &[HISTORY + 1];
        let (mut out, revision, tree) = {
            let state = self.state.read();
            // The tree of this state: history is read from it after the lock is released, even
            // if a defragment swaps in another meanwhile (its rows up to the revision are the
            // same, and the defragment removes the old database only after the export is done).
            let tree = self.tree();
            let mut out = start(&state)?;
            for pair in tree.range(..history).chain(tree.range(after_history..)) {
                let (k, v) = pair?;
                match redact(&k, &v)? {
                    Some(redacted) => out.push(&k, &redacted)?,
                    None => out.push(&k, &v)?,
                }
            }
            (out, state.revision, tree)
        };
        let end = codec::history_key_start(revision.saturating_add(1));
        for pair in tree.range(history..end.as_slice()) {
            let (k, v) = pair?;
            out.push(&k, &v)?;
            each_history_row();
        }
        Ok(out)
    }

    /// What the tree will be once it holds `pairs` (a snapshot's, read without any lock): its
    /// bookkeeping decoded and checked, and its key index. Also returns its layout version.
    pub(crate) fn incoming_state(
        pairs: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
    ) -> Result<(MvccState, u32), StoreError> {
        let mut meta = Vec::new();
        let index = KeyIndex::rebuild(pairs.inspect(|pair| {
            if let Ok((k, v)) = pair {
                if k.first() == Some(&META) {
                    meta.push((k.clone(), v.clone()));
                }
            }
        }))?;
        let (mut state, format) = MvccState::from_meta(meta.into_iter().map(Ok))?;
        state.index = index;
        Ok((state, format))
    }

    /// Replaces the whole tree with `pairs`, a bounded batch at a time: the pairs of the
    /// snapshot [`MvccCore::incoming_state`] made `incoming` of. Not atomic on disk: the caller
    /// made the snapshot durable first, and a restart rewrites the tree from it (see
    /// [`crate::snapshot`]).
    pub(crate) fn replace_from(
        &self,
        (incoming, format): (MvccState, u32),
        pairs: impl FnMut() -> Result<Option<Pairs>, StoreError>,
    ) -> Result<(), StoreError> {
        let _removals = self.compactor.exclude_exports();
        let mut state = self.state.write();
        let tree = self.tree();
        let live_bytes = refill_tree(&tree, pairs)?;
        // A snapshot of a member still on layout version 3 is upgraded as it goes in.
        if format == FORMAT_VERSION_3 {
            let mut batch = sled::Batch::default();
            upgrade_v3(&mut batch, &incoming)?;
            tree.apply_batch(batch)?;
        }
        self.set_live_bytes(live_bytes);
        self.redo.clear()?;
        self.compactor.tree_replaced()?;
        // In the tree now: exactly the snapshot's pairs. Durable at the caller's flush.
        *state = incoming;
        self.publish_alarms(&state);
        self.publish_auth(&state);
        // Sent under the write lock, like every feed message.
        self.feed.send_reset(state.revision);
        self.lease_feeds.end_all();
        Ok(())
    }

    /// Range at the current state; see [`Mvcc::try_range`].
    fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), MvccError> {
        let state = self.read_state();
        let resp = range::read_range(
            &self.tree(),
            &state.index,
            &Writes::new(),
            state.revision,
            state.compact_revision,
            req,
        )?;
        Ok((resp, state.revision))
    }
}

/// Empties `tree` and fills it with the pairs `pairs` yields, one bounded batch (one sled
/// write) at a time: a snapshot's install, or its redo when the store opens. Returns the bytes
/// of keys and values written.
pub(crate) fn refill_tree(
    tree: &sled::Tree,
    mut pairs: impl FnMut() -> Result<Option<Pairs>, StoreError>,
) -> Result<u64, StoreError> {
    tree.clear()?;
    let mut bytes = 0u64;
    while let Some(batch_pairs) = pairs()? {
        let mut batch = sled::Batch::default();
        for (k, v) in batch_pairs {
            bytes += (k.len() + v.len()) as u64;
            batch.insert(k, v);
        }
        tree.apply_batch(batch)?;
    }
    Ok(bytes)
}

/// A read handle on the applied MVCC state; cheap to clone, usable from any task.
///
/// Reads see the state as of the last applied entry, never part of one. They are "serializable"
/// reads in etcd's sense: linearizability is the caller's job (a read index from Raft first).
#[derive(Clone)]
pub struct Mvcc {
    core: Arc<MvccCore>,
}

impl Mvcc {
    pub(crate) fn new(core: Arc<MvccCore>) -> Self {
        Mvcc { core }
    }

    /// The shared core, for a backup's export (`crate::backup`).
    pub(crate) fn core(&self) -> &MvccCore {
        &self.core
    }

    /// Answers a Range from the applied state; returns the response and the store revision it
    /// was read at (the revision for the response header, as etcd's: the current one, even for a
    /// read at an older `req.revision`).
    ///
    /// Errors: [`ApplyError::FutureRevision`] if `req.revision` is past the current revision,
    /// [`ApplyError::Compacted`] if `0 < req.revision <` the compact revision.
    ///
    /// # Panics
    /// If the storage itself fails (sled I/O error, undecodable bytes). Like etcd, which panics on
    /// a backend read error, the node cannot serve anything trustworthy past that point; use
    /// [`Mvcc::try_range`] to handle it instead.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), ApplyError> {
        match self.core.range(req) {
            Ok(r) => Ok(r),
            Err(MvccError::Apply(e)) => Err(e),
            Err(MvccError::Store(e)) => panic!(
                "MVCC store unreadable: {e} ({:?})",
                std::error::Error::source(&e)
            ),
        }
    }

    /// [`Mvcc::range`], with storage failures returned as [`MvccError::Store`].
    pub fn try_range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), MvccError> {
        self.core.range(req)
    }

    /// The current store revision (1 on an empty store).
    /// How many keys the key index holds: the live ones, and the deleted ones whose history a
    /// compaction has not removed yet (etcd's `etcd_debugging_mvcc_keys_total`).
    pub fn key_count(&self) -> usize {
        self.core.read_state().index.len()
    }

    pub fn revision(&self) -> i64 {
        self.core.read_state().revision
    }

    /// The compact revision; 0 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.core.read_state().compact_revision
    }

    /// Completes once this member's history is physically compacted up to `revision` (the
    /// versions a `Compact` at `revision` superseded are gone from disk), or fails with
    /// [`StoreError::Stopped`] if the store is closed first. Applying the `Compact` is not
    /// enough: its removals run in the background.
    pub async fn wait_compacted(&self, revision: i64) -> Result<(), StoreError> {
        let mut done = self.core.compactor.subscribe();
        done.wait_for(|&compacted| compacted >= revision)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Stopped("the compactor"))
    }

    /// The index of the last log entry applied and visible to readers, read without the
    /// state's lock (see `crate::applied`).
    pub fn applied_index(&self) -> u64 {
        self.core.applied_waiters.applied()
    }

    /// The last log entry applied to the store.
    pub fn applied_log_id(&self) -> Option<LogId<NodeId>> {
        self.core.read_state().applied
    }

    /// Completes once the store has applied log index `index` (at once if it has), or fails
    /// with [`StoreError::Stopped`] if the store is closed first.
    pub async fn wait_applied(&self, index: u64) -> Result<(), StoreError> {
        match self.core.applied_waiters.register(index) {
            None => Ok(()),
            Some(woken) => woken
                .await
                .map_err(|_| StoreError::Stopped("the state machine")),
        }
    }

    /// The last membership applied to the store.
    pub fn membership(&self) -> StoredMembership<NodeId, PeerNode> {
        self.core.read_state().membership.clone()
    }

    /// The raised alarms, by member and then kind, as of the last entry applied. Read without
    /// the state's lock: every client call checks them.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.core.raised_alarms.lock().iter().copied().collect()
    }

    /// The auth store (users, roles, whether authentication is on) as of the last entry
    /// applied. Read without the state's lock: every client call checks it.
    pub fn auth(&self) -> Arc<AuthState> {
        self.core.published_auth.lock().clone()
    }

    /// The members' published attributes (from `Command::Publish`, the latest per id), by id.
    pub fn members(&self) -> Vec<MemberAttributes> {
        self.core.read_state().members.values().cloned().collect()
    }

    /// The lease `id` as the state machine records it, if it exists (granted and not revoked).
    pub fn lease(&self, id: i64) -> Result<Option<Lease>, MvccError> {
        let _state = self.core.read_state();
        Ok(lease::get(&self.core.tree(), id)?)
    }

    /// The keys attached to lease `id`, in key order; empty for an unknown lease.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, MvccError> {
        let _state = self.core.read_state();
        Ok(lease::keys(&self.core.tree(), id)?)
    }

    /// Every lease, sorted by id.
    pub fn leases(&self) -> Result<Vec<Lease>, MvccError> {
        let _state = self.core.read_state();
        Ok(lease::all(&self.core.tree())?)
    }

    /// Every lease, sorted by id, and the feed of every grant and revoke applied after that
    /// list, in apply order: both read under one read lock, so the feed starts exactly where the
    /// list ends (no change missed, none seen twice). The feed ends when a snapshot replaces the
    /// state; the follower then calls this again.
    pub fn follow_leases(&self) -> Result<(Vec<Lease>, LeaseFeed), MvccError> {
        let _state = self.core.read_state();
        let leases = lease::all(&self.core.tree())?;
        Ok((leases, self.core.lease_feeds.open()))
    }

    /// The events of revisions `start..=end` on the keys in `[key, range_end)` (etcd's
    /// conventions: an empty `range_end` is the single key, `"\0"` every key `>= key`), replayed
    /// from history, one [`RevisionEvents`] per revision that has matching events, in revision
    /// order, each event with its `prev_kv` (`None` if the key did not exist before or history no
    /// longer has its previous version).
    ///
    /// `end` is clamped to the current revision. Whole revisions only: it stops after the
    /// revision with which the number of events reaches `max_events` (0: no limit), so a
    /// revision with more events than that is still returned whole. Also returns the last
    /// revision fully examined: the clamped `end` if nothing was cut, else the last revision
    /// returned; continue from there + 1.
    ///
    /// Errors: [`ApplyError::Compacted`] if the store was compacted and `start` is below the
    /// compact revision (etcd's rule; a `start` of 0 or less counts as 1 otherwise, "from now" is
    /// the caller's business). A delete at exactly the compact revision is gone from history, and
    /// so from the replay; events at the compact revision have no `prev_kv`.
    pub fn events(
        &self,
        start: i64,
        end: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<(Vec<RevisionEvents>, i64), MvccError> {
        self.core.events(start, end, key, range_end, max_events)
    }

    /// Subscribes to the live feed: every revision applied from now on, in order, and a
    /// [`WatchFeed::Reset`] when a snapshot replaces the state. Its events carry a `prev_kv` only
    /// on keys some [`PrevKvInterest`] covers: see [`Mvcc::subscribe_with_prev_kv`].
    ///
    /// To miss nothing, subscribe first, then read [`Mvcc::revision`], then replay history up to
    /// it with [`Mvcc::events`]; feed messages at or below that revision are duplicates to skip.
    /// A receiver more than [`crate::WATCH_FEED_CAPACITY`] messages behind gets
    /// `RecvError::Lagged`, and one that reads a revision whose events the feed dropped (see
    /// [`crate::FedRevision::events`]) is as far behind: both catch up from history the same way.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchFeed> {
        self.core.feed.subscribe()
    }

    /// [`Mvcc::subscribe`], for a watcher that wants previous values on the keys in etcd's
    /// `(key, range_end)`: every revision it receives carries the `prev_kv` of each of those
    /// keys (that existed before), for as long as it holds the returned interest.
    ///
    /// Registered and subscribed under the read lock, so between two entries: an entry applied
    /// after this call sees the interest, and one applied before sent its revision before the
    /// receiver existed. No revision reaches the receiver without the values it needs.
    pub fn subscribe_with_prev_kv(
        &self,
        key: &[u8],
        range_end: &[u8],
    ) -> (broadcast::Receiver<WatchFeed>, PrevKvInterest) {
        let _between_entries = self.core.read_state();
        let interest = self.core.feed.want_prev_kv(KeyRange::new(key, range_end));
        (self.core.feed.subscribe(), interest)
    }

    /// Sets how many bytes of events the feed may hold for subscribers that have not read them
    /// ([`crate::WATCH_FEED_BUDGET`] until then); tests lower it to make lagging cheap. Takes
    /// effect from the next revision.
    pub fn set_watch_feed_budget(&self, bytes: usize) {
        self.core.feed.set_budget(bytes);
    }

    /// The feed's counters: the bytes it holds now, the previous values read for it.
    pub fn watch_feed_stats(&self) -> WatchFeedStats {
        self.core.feed.stats()
    }
}

/// Runs `f`, which may block for a while, telling a multi-threaded runtime to hand this worker's
/// other tasks to another thread meanwhile (a current-thread runtime, as in unit tests, just runs
/// it).
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::apply::{Effect, Part};
    use crate::test_support::{entry, history, log_id, progress, put_cmd};
    use crate::types::Command;
    use crate::Store;

    /// A long read holds the state's lock and the applier queues for it (so parking_lot lets no
    /// new reader in): a request waiting for an index that is already applied must still be
    /// answered at once, without waiting for either. Before the applied index was an atomic,
    /// the wait took the state's read lock while holding the waiters' mutex, and every later
    /// waiter parked its runtime worker behind it.
    #[test]
    fn waiting_for_an_applied_index_never_waits_for_the_state_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mvcc = store.mvcc();
        let core = mvcc.core.clone();

        let long_read = core.state.read();
        let applier = std::thread::spawn({
            let core = core.clone();
            move || drop(core.state.write())
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while core.state.try_read().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never queued"
            );
            std::thread::yield_now();
        }

        let (done, answered) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let result = runtime.block_on(mvcc.wait_applied(0));
            let _ = done.send(result.is_ok());
        });
        let answered = answered.recv_timeout(Duration::from_secs(10));
        drop(long_read);
        applier.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(
            answered,
            Ok(true),
            "the wait for an applied index waited for the state lock"
        );
    }

    #[test]
    fn history_a_crash_left_past_the_recorded_revision_is_dropped_when_opened() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            // A lease grant needs a redo record; the puts after it need none and remove it.
            let grant = Command::LeaseGrant { id: 7, ttl: 60 };
            core.apply_entry(&entry(1, grant)).unwrap();
            assert!(core.redo.is_held());
            core.apply_entry(&entry(2, put_cmd("a", "1"))).unwrap(); // revision 2
            assert!(!core.redo.is_held());
            let after_a = core.tree().get(META_PROGRESS).unwrap().unwrap();
            core.apply_entry(&entry(3, put_cmd("b", "1"))).unwrap(); // revision 3
            assert!(!core.redo.is_held());
            // As if the crash came just before entry 3's progress record: its version written,
            // the record not.
            core.tree().insert(META_PROGRESS, after_a).unwrap();
            store.flush().unwrap();
        }
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        assert_eq!(progress(&core), (2, Some(2), None));
        assert_eq!(history(&core), ["a@2"]);
        // openraft applies entry 3 again: the same revision, and only its version.
        core.apply_entry(&entry(3, put_cmd("b", "1"))).unwrap();
        assert_eq!(history(&core), ["a@2", "b@3"]);
        assert_eq!(core.state.read().revision, 3);
    }

    /// Turns the tree's meta into layout version 3's: three values instead of the progress
    /// record.
    fn rewrite_as_v3(tree: &sled::Tree) {
        let bytes = tree.remove(META_PROGRESS).unwrap().unwrap();
        let progress: Progress = codec::decode("progress", &bytes).unwrap();
        tree.insert(
            codec::V3_REVISION,
            codec::encode("r", &progress.revision).unwrap(),
        )
        .unwrap();
        tree.insert(
            codec::V3_APPLIED,
            codec::encode("a", &progress.applied).unwrap(),
        )
        .unwrap();
        if let Some(part) = progress.applied_part {
            tree.insert(codec::V3_APPLIED_PART, codec::encode("p", &part).unwrap())
                .unwrap();
        }
        let v3 = codec::encode("f", &codec::FORMAT_VERSION_3).unwrap();
        tree.insert(codec::META_FORMAT, v3).unwrap();
    }

    #[test]
    fn a_layout_version_3_tree_or_snapshot_is_upgraded() {
        let (dir, other) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let v3_pairs: Vec<(Vec<u8>, Vec<u8>)> = {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            core.apply_entry(&entry(1, put_cmd("a", "1"))).unwrap(); // revision 2
                                                                     // A batch entry cut short after its first command: an applied position too.
            let first = Part {
                position: 0,
                last: false,
            };
            let put_b = put_cmd("b", "1");
            let mut state = core.state.write();
            core.apply_part(&mut state, log_id(2), Effect::Command(&put_b), Some(first))
                .unwrap(); // revision 3
            drop(state);
            rewrite_as_v3(&core.tree());
            store.flush().unwrap();
            core.tree()
                .iter()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect()
        };
        let check = |core: &MvccCore| {
            assert_eq!(progress(core), (3, Some(1), Some((2, 0))));
            assert_eq!(history(core), ["a@2", "b@3"]);
            let meta: Vec<Vec<u8>> = core
                .tree()
                .scan_prefix([codec::META])
                .keys()
                .map(|k| k.unwrap().to_vec())
                .collect();
            assert!(meta.contains(&META_PROGRESS.to_vec()), "{meta:?}");
            for old in [
                codec::V3_REVISION,
                codec::V3_APPLIED,
                codec::V3_APPLIED_PART,
            ] {
                assert!(!meta.contains(&old.to_vec()), "{meta:?}");
            }
            let format = core.tree().get(codec::META_FORMAT).unwrap().unwrap();
            assert_eq!(
                codec::decode::<u32>("format", &format).unwrap(),
                codec::FORMAT_VERSION
            );
        };
        // Opened: upgraded in place, and the batch goes on after its first command.
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            check(&core);
            let batch = Command::Batch(vec![put_cmd("b", "1"), put_cmd("c", "1")]);
            core.apply_entry(&entry(2, batch)).unwrap();
            assert_eq!(history(&core), ["a@2", "b@3", "c@4"]);
        }
        // Installed as a snapshot: upgraded as it goes in.
        let store = crate::Store::open(other.path()).unwrap();
        let core = store.core_for_tests();
        let incoming = MvccCore::incoming_state(v3_pairs.clone().into_iter().map(Ok)).unwrap();
        let mut batches = Some(v3_pairs);
        core.replace_from(incoming, || Ok(batches.take())).unwrap();
        check(&core);
    }
}
