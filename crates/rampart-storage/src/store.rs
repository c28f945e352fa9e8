//! Opening a data directory and handing out its parts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::compactor::Compactor;
use crate::database::{Database, Handles, MVCC_TREE};
use crate::defrag::{DefragReport, DefragStep, Defragmenter};
use crate::durability::SledFiles;
use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::mvcc::{Mvcc, MvccCore};
use crate::requests::AppliedRequests;
use crate::snapshot::SnapshotFiles;
use crate::state_machine::StateMachine;
use crate::stats::StorageStats;

/// Directory of the Raft log's segment files (see [`crate::wal`]).
const WAL_DIR: &str = "wal";
const IDENTITY: &[u8] = b"identity";

/// Which cluster this data directory belongs to and who this member is in it; written once at
/// bootstrap so a restarted node cannot join the wrong cluster or under another id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// One node's data directory: the sled database in `dir/db` (Raft log marks, MVCC state
/// machine, node identity; `dir/db.<n>` once defragmented, see [`crate::defrag`]), the Raft
/// log's segments in `dir/wal` and the current snapshot in `dir/snap`.
pub struct Store {
    database: Arc<Database>,
    defragmenter: Arc<Defragmenter>,
    log: LogStore,
    core: Arc<MvccCore>,
    snapshots: Arc<SnapshotFiles>,
    dir: PathBuf,
    /// Cloned into every handle given to openraft; see [`Store::released`].
    in_use: Arc<()>,
    /// The store's measurements, for the server's metrics.
    stats: Arc<StorageStats>,
    /// The requests of the applied entries, for the log's retention.
    requests: Arc<AppliedRequests>,
}

impl Store {
    /// Opens (creating if needed) the data directory: the sled database the pointer file names
    /// (`dir/db` if there is none; any other database directory, left by a defragment a stop
    /// interrupted or finished, is removed), the log segments in `dir/wal`, snapshot file(s) in
    /// `dir/snap`.
    ///
    /// Fails if the directory is already open (sled locks it), or if anything in it does not
    /// decode ([`StoreError::Corrupt`]/[`StoreError::Decode`] say what).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io("create data directory", dir, e))?;
        let current = crate::defrag::current_database(dir)?;
        let stats = Arc::new(StorageStats::default());
        let handles = Handles::open(&dir.join(current), stats.clone())?;
        verify_readable(&handles.db)?;
        let in_use = Arc::new(());
        let snapshots = Arc::new(SnapshotFiles::open(&dir.join("snap"))?);
        finish_interrupted_install(&snapshots, &handles)?;
        let database = Arc::new(Database::new(handles));
        let core = Arc::new(MvccCore::open(database.clone())?);
        Compactor::start(&core)?;
        let log = LogStore::open(
            database.clone(),
            &dir.join(WAL_DIR),
            in_use.clone(),
            stats.clone(),
        )?
        .guard_purges(core.durable_applied.subscribe());
        drop_stale_snapshot(&log, &core, &snapshots)?;
        check_identity_file(dir, &database.get().node)?;
        {
            let state = core.state.read();
            tracing::info!(
                dir = %dir.display(),
                revision = state.revision,
                compact_revision = state.compact_revision,
                applied = ?state.applied,
                "opened store"
            );
        }
        Ok(Store {
            defragmenter: Arc::new(Defragmenter::new(dir, database.clone(), core.clone())),
            database,
            log,
            core,
            snapshots,
            dir: dir.to_path_buf(),
            in_use,
            stats,
            requests: Arc::default(),
        })
    }

    /// The Raft log storage (and, through `get_log_reader`, its readers). Its purges wait until
    /// the state machine holds the purged entries on disk.
    pub fn log_store(&self) -> LogStore {
        self.log.clone()
    }

    /// The Raft log storage with purges that wait for nothing: only for testing the log alone
    /// (openraft's conformance suite purges entries no state machine has applied, which
    /// [`Store::log_store`]'s purge would wait for forever).
    #[doc(hidden)]
    pub fn log_store_unguarded(&self) -> LogStore {
        self.log.unguarded()
    }

    /// Whether openraft has dropped every log-store and state-machine handle: after
    /// `Raft::shutdown` its workers may hold theirs a little longer, and the database should be
    /// flushed and closed only once they are gone.
    pub fn released(&self) -> bool {
        // The Store's own copy and the one inside its LogStore remain.
        Arc::strong_count(&self.in_use) <= 2
    }

    /// The state machine, for openraft. There must be only one in use: it is the sole writer.
    pub fn state_machine(&self) -> StateMachine {
        StateMachine::new(
            self.core.clone(),
            self.snapshots.clone(),
            self.in_use.clone(),
            self.stats.clone(),
            self.requests.clone(),
        )
    }

    /// How many requests the applied entries held (etcd's unit for `--snapshot-count` and
    /// `--snapshot-catchup-entries`).
    pub fn applied_requests(&self) -> Arc<AppliedRequests> {
        self.requests.clone()
    }

    /// What the store measures of itself (fsync and flush durations, slow applies).
    pub fn stats(&self) -> Arc<StorageStats> {
        self.stats.clone()
    }

    /// The MVCC core, for a restore that fills a new store (`crate::backup`).
    pub(crate) fn core(&self) -> &MvccCore {
        &self.core
    }

    /// The index of the last entry known committed (see [`LogStore::committed_index`]).
    pub fn committed_index(&self) -> u64 {
        self.log.committed_index()
    }

    /// A read handle on the applied MVCC state.
    pub fn mvcc(&self) -> Mvcc {
        Mvcc::new(self.core.clone())
    }

    /// The identity recorded by [`Store::set_identity`], if any.
    pub fn identity(&self) -> Result<Option<ClusterIdentity>, StoreError> {
        match self.database.get().node.get(IDENTITY)? {
            Some(v) => Ok(Some(codec::decode("cluster identity", &v)?)),
            None => Ok(None),
        }
    }

    /// Records this node's identity; durable (flushed) before returning.
    pub fn set_identity(&self, id: &ClusterIdentity) -> Result<(), StoreError> {
        let encoded = codec::encode("cluster identity", id)?;
        // Written holding the database, so a defragment copies it (see `database`).
        self.database.for_write().node.insert(IDENTITY, encoded)?;
        self.database.get().disk.flush()?;
        // On disk: the identity, fsynced; a crash from here on restarts as this member.
        crate::files::write_atomically(&self.dir, IDENTITY_FILE, identity_text(id).as_bytes())?;
        // On disk as well: the same identity outside sled, for `check_identity_file`.
        Ok(())
    }

    /// Bytes the database takes on disk (etcd's `dbSize`): the blocks of sled's file (its free
    /// log segments are holes, `vendor/sled/RAMPART.md`), which writing over keys grows and a
    /// defragment shrinks; 0 if sled cannot tell.
    pub fn size_on_disk(&self) -> u64 {
        self.database.get().db.size_on_disk().unwrap_or_else(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read database size");
            0
        })
    }

    /// Bytes of the database in use (etcd's `dbSizeInUse`), estimated as the bytes of the keys
    /// and values of the state machine's tree (counted at open, kept up to date by every write
    /// and removal; the Raft marks and the identity are a few hundred bytes more), at most
    /// [`Store::size_on_disk`]. sled's per-page overhead is not counted: a freshly
    /// defragmented file is somewhat larger than this.
    pub fn size_in_use(&self) -> u64 {
        self.core.live_bytes().min(self.size_on_disk())
    }

    /// Rewrites the database into a fresh one and swaps it in, while reads and writes go on
    /// but for a short pause (see [`crate::defrag`]); a call while one runs joins it. Blocks
    /// for the whole copy: call it off the async runtime. Cheap to clone and send: see
    /// [`Store::defragmenter`].
    pub fn defragment(&self) -> Result<DefragReport, StoreError> {
        self.defragmenter.run(None)
    }

    /// A handle that runs [`Store::defragment`] from another thread.
    pub fn defragmenter(&self) -> impl Fn() -> Result<DefragReport, StoreError> + Send + 'static {
        let defragmenter = self.defragmenter.clone();
        move || defragmenter.run(None)
    }

    /// [`Store::defragment`], stopped at `step` as a crash there would stop it: for tests of
    /// what a restart then finds.
    #[doc(hidden)]
    pub fn defragment_stopped_at(&self, step: DefragStep) -> Result<DefragReport, StoreError> {
        self.defragmenter.run(Some(step))
    }

    /// The directory of the current database, relative to the data directory.
    pub fn database_dir(&self) -> PathBuf {
        let dir = self.database.get().dir.clone();
        dir.strip_prefix(&self.dir)
            .map_or(dir.clone(), Path::to_path_buf)
    }

    /// Flushes everything written so far to disk; the last step of an ordered shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.database.get().disk.flush()?;
        // On disk: every write made before this call, including applied entries not yet flushed.
        Ok(())
    }

    /// TEST TOOL ONLY: overwrites the value of the newest stored version of `key` with `value`,
    /// behind Raft's back, and flushes: the damage a disk or a bug could do, for the tests of
    /// the corruption checks. The store must not be serving (stop its member first). Returns
    /// whether a live version of `key` was found.
    #[doc(hidden)]
    pub fn corrupt_value_for_tests(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let tree = self.core.tree();
        for pair in tree.scan_prefix([codec::HISTORY]).rev() {
            let (k, v) = pair?;
            let stored = codec::history_value(&v)?;
            if stored.key != key {
                continue;
            }
            let Some(mut record) = stored.decode_record()? else {
                return Ok(false);
            };
            record.value = value.to_vec();
            tree.insert(k, codec::history_put(key, &record)?)?;
            self.flush()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The snapshot files, for white-box tests of snapshots.
    #[cfg(test)]
    pub(crate) fn snapshots_for_tests(&self) -> Arc<SnapshotFiles> {
        self.snapshots.clone()
    }

    /// The defragment, for white-box tests of it.
    #[cfg(test)]
    pub(crate) fn defragmenter_for_tests(&self) -> Arc<Defragmenter> {
        self.defragmenter.clone()
    }

    /// The shared MVCC core, for white-box tests of the layout.
    #[cfg(test)]
    pub(crate) fn core_for_tests(&self) -> Arc<MvccCore> {
        self.core.clone()
    }
}

/// Finishes the snapshot install a stop interrupted, if any: the MVCC tree may hold any part of
/// it, so it is rewritten from `installing.snap` (checked first) before anything reads it, as
/// the install itself would have, and the snapshot becomes the current one. A damaged
/// `installing.snap` stops the store: the tree it was replacing cannot be trusted.
fn finish_interrupted_install(
    snapshots: &SnapshotFiles,
    handles: &Handles,
) -> Result<(), StoreError> {
    let (disk, mvcc, redo, compaction) = (
        &handles.disk,
        &handles.mvcc,
        &handles.redo,
        &handles.compaction,
    );
    let Some(path) = snapshots.interrupted_install() else {
        return Ok(());
    };
    let meta = crate::snapshot::open_file(&path)?.verify()?;
    tracing::warn!(snapshot = %meta, "finishing a snapshot install a stop interrupted");
    let mut pairs = crate::snapshot::open_file(&path)?;
    crate::mvcc::refill_tree(mvcc, || pairs.next_batch())?;
    // As `MvccCore::replace_from`: no redo record of the replaced state, and the incoming
    // pairs not known to be compacted.
    redo.clear()?;
    Compactor::forget_progress(compaction)?;
    disk.flush()?;
    // On disk: the tree is the snapshot's; the file may now stop being a redo record.
    snapshots.finish_install(&meta)
}

/// Reads every page of every tree once, so that sled checks each one's checksum now: a corrupt
/// data directory stops the member at start instead of failing (or worse) on a later read. This
/// costs one sequential pass over the data, like etcd's initial corruption check. The MVCC tree
/// is left to [`MvccCore::open`], whose rebuild of the key index reads all of it anyway.
fn verify_readable(db: &sled::Db) -> Result<(), StoreError> {
    for name in db.tree_names() {
        if name == MVCC_TREE.as_bytes() {
            continue;
        }
        let tree = db.open_tree(&name)?;
        for item in tree.iter() {
            item?;
        }
    }
    Ok(())
}

/// The identity recorded outside sled, so that a database sled silently lost (it treats a damaged
/// log as a torn write and recovers to an earlier state, possibly empty) is noticed.
const IDENTITY_FILE: &str = "member.id";

fn identity_text(id: &ClusterIdentity) -> String {
    format!(
        "cluster_id={:016x}\nmember_id={:016x}\n",
        id.cluster_id, id.member_id
    )
}

/// Refuses a database whose identity disagrees with `member.id`: the directory was initialized
/// once, so sled must still hold that identity, or it lost data.
fn check_identity_file(dir: &Path, node: &sled::Tree) -> Result<(), StoreError> {
    let path = dir.join(IDENTITY_FILE);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("read", &path, e)),
    };
    let in_db = match node.get(IDENTITY)? {
        Some(v) => Some(identity_text(&codec::decode("cluster identity", &v)?)),
        None => None,
    };
    if in_db.as_deref() != Some(recorded.as_str()) {
        return Err(StoreError::Corrupt {
            what: "database",
            detail: format!(
                "{} records this member's identity but the database {}: the database lost data",
                path.display(),
                if in_db.is_some() {
                    "holds another"
                } else {
                    "holds none"
                }
            ),
        });
    }
    Ok(())
}

/// How long [`Store::open`] waits for a database that is still locked by a handle being closed.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Most bytes of pages sled keeps decoded in memory. sled's default is 1 GiB, which a store of
/// a few hundred megabytes fills whole, so memory grew with the data. Pages beyond the cache are
/// read back from the database file (through the OS page cache, as etcd's bbolt reads its
/// file), so a smaller cache bounds memory at a cost only to reads of cold keys. Measured on one
/// store with 100,000 keys written three times in txns of 100 puts of 256 bytes: RSS 255-262 MiB
/// with sled's default, 93 MiB with this; 128 MiB gave 154 MiB. Write time per pass stayed
/// within the noise of the shared 2-core machine (2.3-3.4 s either way).
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// sled's log segment size for a new database: 16 MiB, the largest sled accepts
/// (`config.rs:531-534`). sled 0.34.7 froze when a buffer of that size filled to its last
/// byte; Rampart builds with its copy in `vendor/sled`, which never fills it (see
/// `vendor/sled/RAMPART.md` and `tests::a_log_buffer_filled_to_its_last_byte_is_written`).
/// sled writes a log message longer than a quarter of a segment, less 52 bytes of headers
/// (`pagecache/logger.rs:162-173`, `constants.rs:9-17`), to a blob file of its own; sled never
/// fsyncs blob files, and when one is missing at recovery it skips the
/// message and keeps the later ones (`pagecache/iterator.rs:156-163`), so a power loss could
/// keep an entry's progress record without the history version a blob held: a member silently
/// diverging. With 16 MiB segments every write an entry makes is inline up to 4 MiB: the value
/// of the largest request (`--max-request-bytes`, 1.5 MiB by default) as one history version,
/// all of it as a redo record, or a page of the tree holding the value with others. A leaf page
/// holds up to 17 pairs (sled splits it past 16, `node.rs:599-611`), so several large values of
/// consecutive revisions can still make a page over 4 MiB, which sled writes as a blob when it
/// consolidates the page (`pagecache/mod.rs:1039-1042`); see ARCHITECTURE.md, "Apply is atomic
/// per entry". The costs, measured against 512 KiB segments (puts of 256-byte values, one per
/// entry): sled frees space a segment at a time and only segments well behind its log's tip,
/// so the database file holds a few more segments of garbage: 15 MiB instead of 10-11 after
/// 10,000 puts, 175 instead of 65 after 100,000, 736 instead of 628 after 1,000,000 and 2,000
/// instead of 1,894 after writing those keys three times; each reopen fills the rest of the
/// last segment (`pagecache/snapshot.rs:317-336`), adding up to 16 MiB, and an I/O buffer is a
/// segment's size (RSS 10-20 MiB higher). Apply times stayed within 4% (`cargo bench -p
/// rampart-storage -- apply`: 14.9 against 14.4 µs a put, 1.12 against 1.15 ms a txn of 100).
const SEGMENT_SIZE: usize = 16 << 20;
/// sled's default segment size (`config.rs:236`), which every database made before
/// [`SEGMENT_SIZE`] uses. sled refuses to open a database with another size than the one it was
/// made with (`config.rs:626-633`), so such a database keeps it.
const LEGACY_SEGMENT_SIZE: usize = 512 << 10;

/// Present in sled's directory once it has been opened by a Rampart that syncs every file sled
/// reads before each open ([`SledFiles::sync_before_open`]): from then on, each snapshot sled
/// writes at open describes durable data. Snapshots found without it were written by an earlier
/// version, possibly of data a power loss then took, and are set aside.
const SYNCED_OPENS_MARK: &str = "rampart-synced-opens";
/// Prefix of the snapshot files sled reads at open (`config.rs:824-855`).
const SLED_SNAPSHOT_PREFIX: &str = "snap.";
/// Suffix of a snapshot sled was writing and had not yet renamed into place
/// (`pagecache/snapshot.rs:531-561`): torn if its fsync did not happen, yet sled would read it.
const SLED_SNAPSHOT_UNFINISHED: &str = ".generating";
/// Prefix a set-aside snapshot is renamed with, so that sled no longer sees it.
const SET_ASIDE_PREFIX: &str = "set-aside.";

/// Opens the sled database. Every durable point of Rampart flushes explicitly, so sled's own
/// periodic flusher is off: no background thread writes or holds the database, and closing it
/// releases its lock at once. A database still locked by a handle that is closing (sled may
/// finish a last flush on another thread) is waited for briefly; one locked by another process
/// is refused with a clear error.
///
/// Before sled reads anything, everything it will read is made durable, so that it recovers, and
/// writes its snapshot of, durable data only (see `durability`); snapshots that may not be of
/// durable data are set aside first, and sled then recovers from its log alone.
///
/// Returns the database with the size of its log segments (see [`segment_size`]).
pub(crate) fn open_db(files: &SledFiles) -> Result<(sled::Db, usize), StoreError> {
    let segment_size = segment_size(files)?;
    if segment_size != SEGMENT_SIZE {
        tracing::warn!(
            dir = %files.dir.display(),
            segment_size,
            "this database keeps the log segment size it was made with: pages of the state \
             machine over a quarter of a segment are written to blob files, which a power loss \
             can lose while keeping later writes; give the member a new data directory to use \
             16 MiB segments"
        );
    }
    let config = sled::Config::new()
        .path(&files.dir)
        .segment_size(segment_size)
        .flush_every_ms(None)
        .cache_capacity(CACHE_CAPACITY);
    let started = std::time::Instant::now();
    let db = loop {
        // Each attempt: a handle closing in this process may have written since the last.
        files.sync_before_open()?;
        set_aside_untrusted_snapshots(files)?;
        match config.open() {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::Locked {
                        path: files.dir.clone(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    files.sync_after_open()?;
    let mark = files.dir.join(SYNCED_OPENS_MARK);
    if !mark.exists() {
        crate::files::write_atomically(&files.dir, SYNCED_OPENS_MARK, b"")?;
    }
    Ok((db, segment_size))
}

/// The segment size to open the database with: the one sled recorded in its `conf`, else, for
/// a data file that holds anything, [`LEGACY_SEGMENT_SIZE`] (this version makes `conf` durable
/// before the data file is first written, `SledFiles::sync_after_open`, and earlier ones never
/// synced it, so a lost `conf` beside data is theirs), else, for a new database, [`SEGMENT_SIZE`].
fn segment_size(files: &SledFiles) -> Result<usize, StoreError> {
    let conf = match std::fs::read(&files.conf) {
        Ok(conf) => conf,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StoreError::io("read", &files.conf, e)),
    };
    // sled takes a `conf` of 8 bytes or less for none and writes a new one (`config.rs:699-702`).
    if conf.len() > 8 {
        return String::from_utf8_lossy(&conf)
            .lines()
            .find_map(|line| line.strip_prefix("segment_size: ")?.parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                what: "sled configuration",
                detail: format!("{} records no segment size", files.conf.display()),
            });
    }
    let data_len = match std::fs::metadata(&files.data) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(StoreError::io("stat", &files.data, e)),
    };
    Ok(if data_len > 0 {
        LEGACY_SEGMENT_SIZE
    } else {
        new_segment_size()
    })
}

/// The segment size of a new database: [`SEGMENT_SIZE`], or in a test the one
/// [`tests::with_new_segment_size`] sets, so that a test can see how sled's log behaves over many
/// segments with little data.
fn new_segment_size() -> usize {
    #[cfg(test)]
    if let Some(size) = tests::NEW_SEGMENT_SIZE.get() {
        return size;
    }
    SEGMENT_SIZE
}

/// Renames sled's snapshot files it must not read out of its way: every one, in a directory not
/// yet marked with [`SYNCED_OPENS_MARK`]; an unfinished one (`.generating`), always. Without a
/// snapshot sled recovers from the log alone, replaying every segment from its header's
/// sequence number on (`pagecache/snapshot.rs:442-453` with `Snapshot::default()`,
/// `pagecache/iterator.rs:284-517`), as it does the first time it reopens any database; a
/// snapshot is only a summary of that replay up to its `stable_lsn` (`snapshot.rs:211-248`).
fn set_aside_untrusted_snapshots(files: &SledFiles) -> Result<(), StoreError> {
    let trusted = files.dir.join(SYNCED_OPENS_MARK).exists();
    let entries = match std::fs::read_dir(&files.dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("list", &files.dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", &files.dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(SLED_SNAPSHOT_PREFIX)
            || (trusted && !name.ends_with(SLED_SNAPSHOT_UNFINISHED))
        {
            continue;
        }
        let to = files.dir.join(format!("{SET_ASIDE_PREFIX}{name}"));
        std::fs::rename(entry.path(), &to).map_err(|e| StoreError::io("rename", &to, e))?;
        tracing::warn!(
            file = %to.display(),
            reason = if trusted {
                "unfinished"
            } else {
                "written by an earlier version, possibly of data a power loss took"
            },
            "set sled's snapshot aside: sled recovers from its log alone"
        );
    }
    Ok(())
}

/// Removes the current snapshot file if it ends before the log will start once openraft has
/// opened it: before the purged log id, or before the applied index where the log ends below
/// it (openraft then purges up to the applied index, "cleaning the hole" a crash left between
/// a snapshot install and its purge). Such a file could not bring a follower up to the log: a
/// leader would send it again and again. Without a file, openraft builds one from the state
/// machine at start.
fn drop_stale_snapshot(
    log: &LogStore,
    core: &MvccCore,
    snapshots: &SnapshotFiles,
) -> Result<(), StoreError> {
    let Some(snapshot_last) = snapshots.current_last() else {
        return Ok(());
    };
    let purged = log.purged()?.map_or(0, |id| id.index);
    let applied = core.read_state().applied.map_or(0, |id| id.index);
    let log_last = log.last_index().max(purged);
    let log_start = if log_last < applied { applied } else { purged };
    if snapshot_last.map_or(0, |id| id.index) < log_start {
        snapshots.remove_stale(log_start)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    thread_local! {
        pub(super) static NEW_SEGMENT_SIZE: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Runs `f` with every database this thread makes using log segments of `size` bytes.
    pub(crate) fn with_new_segment_size<T>(size: usize, f: impl FnOnce() -> T) -> T {
        NEW_SEGMENT_SIZE.set(Some(size));
        let result = f();
        NEW_SEGMENT_SIZE.set(None);
        result
    }

    /// sled 0.34.7's freeze on 16 MiB segments (see [`SEGMENT_SIZE`]): these 100,000 pairs,
    /// written in order, fill a 16 MiB I/O buffer to its last byte, and with sled as published
    /// the flush never returns (it did not within 60 s, three times of three). With the copy in
    /// `vendor/sled` it returns at once.
    #[test]
    fn a_log_buffer_filled_to_its_last_byte_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = open_db(&SledFiles::new(&dir.path().join("db"))).unwrap();
        let tree = db.open_tree("history").unwrap();
        for revision in 0..100_000u64 {
            let mut key = b"h".to_vec();
            key.extend_from_slice(&revision.to_be_bytes());
            key.extend_from_slice(&0u32.to_be_bytes());
            let mut value = vec![b'x'; 64];
            value[..8].copy_from_slice(&revision.to_le_bytes());
            tree.insert(key, value).unwrap();
        }
        let (flushed, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || flushed.send(db.flush().map(|_| ())));
        done.recv_timeout(Duration::from_secs(60))
            .expect("the flush returned")
            .unwrap();
    }
}
