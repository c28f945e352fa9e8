//! openraft's log storage: the Raft log, the vote, the committed and last purged log ids.
//!
//! The entries live in [`crate::wal`]'s segment files (`dir/wal`), the rest in one sled tree
//! (`raft_log`) of the same database as the state machine:
//!
//! | key           | value                    |
//! |---------------|--------------------------|
//! | `m/vote`      | bincode(`Vote`)          |
//! | `m/committed` | bincode(`LogId`)         |
//! | `m/purged`    | bincode(`LogId`)         |
//!
//! Every call that openraft needs durable returns (or reports through its callback) only after
//! an fsync: of the segment file for entries, of the database ([`Disk::flush`]) for the rest.
//!
//! `append` writes its entries into the segment and hands openraft's callback to the log's
//! flusher thread, which fdatasyncs the segment and then reports to the callback: the sync
//! blocks that thread, not a runtime worker. It does not let openraft go on meanwhile: in
//! openraft 0.9.25 `RaftCore::append_to_log` awaits each append's callback before RaftCore
//! runs its next command, so every sync covers exactly one append. One append may hold many
//! entries (a follower appends all the entries of an AppendEntries request at once); what
//! spreads one sync over many client writes is the `Proposer` of `rampart-network`, which
//! batches them into one `Command::Batch` entry.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, OptionalSend, StorageError, StorageIOError, Vote};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::codec;
use crate::database::Database;
use crate::durability::Disk;
use crate::error::StoreError;
use crate::stats::{observe_since, StorageStats};
use crate::types::{NodeId, TypeConfig};
use crate::wal::{Entry, Recorded, Wal};

const VOTE: &[u8] = b"m/vote";
const COMMITTED: &[u8] = b"m/committed";
const PURGED: &[u8] = b"m/purged";
/// The most bytes of log records one AppendEntries call carries (as etcd's Raft limits a
/// message to 1 MiB), unless its first entry alone is larger.
pub(crate) const MAX_APPEND_BYTES: usize = 1024 * 1024;
/// Entries of the layout before the segment files: `e` + index (8 bytes, big-endian). Moved
/// into the segment files when such a database is opened.
const OLD_ENTRY_PREFIX: u8 = b'e';

/// An append waiting for its sync: the segment its entries went to and openraft's callback.
type Unflushed = (Arc<File>, LogFlushed<TypeConfig>);

/// The Raft log. Cloning gives another handle on the same log (that is the log reader).
#[derive(Clone)]
pub struct LogStore {
    /// The current database, whose `raft_log` tree holds the marks; written only while holding
    /// [`Database::for_write`], so that a defragment copies every mark written before its swap.
    database: Arc<Database>,
    wal: Arc<RwLock<Wal>>,
    /// Appends whose entries are written but not yet synced, for the flusher.
    unflushed: mpsc::Sender<Unflushed>,
    /// Counts this handle as in use for [`crate::Store::released`].
    _in_use: Arc<()>,
    /// The index of the last committed entry openraft told this log of
    /// ([`LogStore::committed_index`]), read without a call into Raft.
    committed: Arc<AtomicU64>,
    /// The state machine's durable applied index ([`crate::mvcc`]'s `durable_applied`), which a
    /// purge waits for; `None` only for a log tested alone (see [`crate::Store::log_store`]).
    purge_guard: Option<watch::Receiver<u64>>,
    /// Where appends and syncs are measured, and noted while in progress.
    stats: Arc<StorageStats>,
}

impl LogStore {
    /// Opens the log: the segment files in `wal_dir`, the rest in the database's `raft_log`.
    pub(crate) fn open(
        database: Arc<Database>,
        wal_dir: &Path,
        in_use: Arc<()>,
        stats: Arc<StorageStats>,
    ) -> Result<Self, StoreError> {
        let handles = database.get();
        let (disk, tree) = (&handles.disk, &handles.log);
        let purged: Option<LogId<NodeId>> = get(tree, PURGED, "last purged log id")?;
        let committed: Option<LogId<NodeId>> = get(tree, COMMITTED, "committed log id")?;
        let committed_index = committed.map_or(0, |id| id.index);
        let recorded = Recorded {
            purged: purged.map(|id| id.index),
            committed: committed.map(|id| id.index),
        };
        let mut wal = Wal::open(wal_dir, recorded)?;
        move_old_entries(disk, tree, &mut wal)?;
        let unflushed = spawn_flusher(stats.clone())?;
        drop(handles);
        Ok(LogStore {
            database,
            wal: Arc::new(RwLock::new(wal)),
            unflushed,
            _in_use: in_use,
            committed: Arc::new(AtomicU64::new(committed_index)),
            purge_guard: None,
            stats,
        })
    }

    /// The index of the last entry known committed, as openraft last saved it: what the
    /// server's admission control compares with the applied index (etcd refuses new requests
    /// while the state machine is more than 5,000 entries behind the commit).
    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Makes every purge wait until the state machine holds the purged entries on disk.
    pub(crate) fn guard_purges(mut self, durable_applied: watch::Receiver<u64>) -> Self {
        self.purge_guard = Some(durable_applied);
        self
    }

    /// The same log with purges that wait for nothing, for a conformance suite that purges logs
    /// no state machine has applied.
    pub(crate) fn unguarded(&self) -> Self {
        LogStore {
            purge_guard: None,
            ..self.clone()
        }
    }

    /// The index of the log's last entry (0 if it holds none).
    pub(crate) fn last_index(&self) -> u64 {
        self.wal.read().last().map_or(0, |id| id.index)
    }

    /// The last purged log id on disk.
    pub(crate) fn purged(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        get(&self.database.get().log, PURGED, "last purged log id")
    }

    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StoreError> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_sub(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        self.wal.read().read(from, to)
    }

    /// Flushes the database to disk (see [`Disk::flush`]).
    async fn flush(&self) -> Result<(), StoreError> {
        let disk = self.database.get().disk.clone();
        disk.flush_async().await
    }

    /// Writes `value` (or removes the key, for `None`) in the marks' tree, holding the database
    /// for writing (see `database`).
    fn write_mark(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let handles = self.database.for_write();
        match value {
            Some(value) => handles.log.insert(key, value)?,
            None => handles.log.remove(key)?,
        };
        Ok(())
    }
}

fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        Some(v) => Ok(Some(codec::decode(what, &v)?)),
        None => Ok(None),
    }
}

/// Moves the entries a database of the earlier layout kept in sled into the segment files:
/// written and synced there first, removed from sled after, so a crash in between only repeats
/// the move.
fn move_old_entries(disk: &Disk, tree: &sled::Tree, wal: &mut Wal) -> Result<(), StoreError> {
    let mut entries = Vec::new();
    let mut keys = Vec::new();
    for item in tree.scan_prefix([OLD_ENTRY_PREFIX]) {
        let (k, v) = item?;
        entries.push(codec::decode::<Entry>("log entry", &v)?);
        keys.push(k);
    }
    if entries.is_empty() {
        return Ok(());
    }
    let purged = wal.purged();
    entries.retain(|e| purged.is_none_or(|p| e.log_id.index > p));
    let moved = entries.len();
    if let Some(file) = wal.append(entries)? {
        file.sync_data()
            .map_err(|e| StoreError::io("fdatasync", "raft log segment", e))?;
    }
    let mut batch = sled::Batch::default();
    for k in keys {
        batch.remove(k);
    }
    tree.apply_batch(batch)?;
    disk.flush()?;
    tracing::info!(
        entries = moved,
        "moved the raft log out of the database into segment files"
    );
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(self
            .read_entries(range)
            .map_err(|e| StorageIOError::read_logs(&e))?)
    }

    /// The entries a leader sends a follower in one AppendEntries call: from `start`, at most
    /// [`MAX_APPEND_BYTES`] of records (at least one entry), below `end`. openraft gives each
    /// call one heartbeat interval; a call that carries every entry a lagging follower misses
    /// could never finish in it, and would be sent again whole, for ever.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let wal = self.wal.read();
        let last = wal.end_within(start, end - 1, MAX_APPEND_BYTES);
        Ok(wal
            .read(start, last)
            .map_err(|e| StorageIOError::read_logs(&e))?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id = self.purged().map_err(|e| StorageIOError::read_logs(&e))?;
        let last = self.wal.read().last();
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = async {
            self.write_mark(VOTE, Some(codec::encode("vote", vote)?))?;
            self.flush().await
        };
        write.await.map_err(|e| StorageIOError::write_vote(&e))?;
        // On disk: the vote, fsynced. Raft's safety needs it to survive a crash before this node
        // acts on it (grants it, or campaigns with it).
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(get(&self.database.get().log, VOTE, "vote")
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let write = || -> Result<(), StoreError> {
            let value = match committed {
                Some(id) => Some(codec::encode("committed log id", &id)?),
                None => None,
            };
            self.write_mark(COMMITTED, value)
        };
        write().map_err(|e| StorageIOError::write(&e))?;
        self.committed
            .store(committed.map_or(0, |id| id.index), Ordering::Release);
        // Not flushed on purpose: the committed id only lets a restart re-apply committed entries
        // early; if a crash loses it, the restarted node learns the commit index from the leader
        // again. It never reaches disk ahead of the entries it covers: openraft 0.9.25 runs its
        // commands one at a time, and the `Commit` that calls this runs after the append of
        // those entries has reported its sync (`RaftCore::append_to_log` awaits it). So opening
        // the log may refuse a torn-tail cut that would go below it (see `crate::wal`).
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed: Option<LogId<NodeId>> =
            get(&self.database.get().log, COMMITTED, "committed log id")
                .map_err(|e| StorageIOError::read(&e))?;
        let last = self.wal.read().last();
        // Entries up to the committed index matched the leader's log when it was recorded, so
        // the log's last entry, if it is below that index, is committed too.
        Ok(match (committed, last) {
            (Some(c), Some(l)) if l.index < c.index => Some(l),
            (c, _) => c,
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let appending = self.stats.in_flight.begin("log append");
        let written = self
            .wal
            .write()
            .append(entries)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        drop(appending);
        // The entries are readable from here on (openraft requires that when append returns).
        // They become durable with the flusher's next sync of their segment, which starts after
        // this send; only its callback lets openraft count them toward a quorum.
        let Some(segment) = written else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        if let Err(mpsc::SendError((_, callback))) = self.unflushed.send((segment, callback)) {
            let e = StoreError::Stopped("the log flusher");
            callback.log_io_completed(Err(io::Error::other(e.to_string())));
            return Err(StorageIOError::write_logs(&e).into());
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.wal
            .write()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // On disk: no entry at or after `log_id.index` (they conflicted with the leader's log).
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // openraft 0.9 purges up to an installed snapshot as soon as it has queued the install,
        // while the state machine may still be decoding it. Had the purge mark been made durable
        // then, a crash would leave the log purged past a state machine that has not caught up:
        // the member could neither start nor apply again. So the mark waits until the state
        // machine holds the purged entries on disk (after a local snapshot build, which flushes
        // first, it already does). RaftCore waits here meanwhile, as it waits for the install.
        if let Some(durable) = &self.purge_guard {
            let mut durable = durable.clone();
            durable
                .wait_for(|&applied| applied >= log_id.index)
                .await
                .map_err(|_| {
                    StorageIOError::write_logs(&StoreError::Stopped("the state machine"))
                })?;
        }
        let record = async {
            self.write_mark(PURGED, Some(codec::encode("last purged log id", &log_id)?))?;
            self.flush().await
        };
        record.await.map_err(|e| StorageIOError::write_logs(&e))?;
        // On disk: the last purged id. Only now may the entries up to it go, so the log never
        // has a hole that its bookkeeping does not explain.
        self.wal
            .write()
            .purge(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// Starts the log's flusher thread: it waits for an append, takes every other one already
/// queued behind it, fdatasyncs each segment they wrote to once and reports the outcome to all
/// of them in the order the appends were made. Every entry of those appends was written before
/// its callback was queued, so the sync covers it. With openraft 0.9.25 nothing is ever queued
/// behind: it waits for each append's callback before making the next append, so each sync
/// serves one append. The thread ends when the last [`LogStore`] handle is dropped.
fn spawn_flusher(stats: Arc<StorageStats>) -> Result<mpsc::Sender<Unflushed>, StoreError> {
    let (sender, queue) = mpsc::channel::<Unflushed>();
    std::thread::Builder::new()
        .name("rampart-log-flush".into())
        .spawn(move || {
            while let Ok(first) = queue.recv() {
                let group: Vec<Unflushed> =
                    std::iter::once(first).chain(queue.try_iter()).collect();
                let mut synced: Vec<&Arc<File>> = Vec::new();
                let mut outcome = Ok(());
                for (segment, _) in &group {
                    if synced.iter().any(|s| Arc::ptr_eq(s, segment)) {
                        continue;
                    }
                    let began = Instant::now();
                    let _syncing = stats.in_flight.begin("log fsync");
                    if let Err(e) = segment.sync_data() {
                        outcome = Err(e);
                        break;
                    }
                    observe_since(&stats.wal_fsync, began);
                    synced.push(segment);
                }
                // On disk, when `outcome` is Ok: every entry of every append in `group`.
                for (_, callback) in group {
                    callback.log_io_completed(
                        outcome
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                    );
                }
            }
        })
        .map_err(|source| StoreError::Thread {
            name: "rampart-log-flush",
            source,
        })?;
    Ok(sender)
}
