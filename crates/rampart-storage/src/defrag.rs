//! Defragmenting: rewriting the member's database into a fresh one and swapping it in, so that
//! the data directory shrinks to about its live data, while reads and writes go on.
//!
//! sled reuses a log segment only once most of it is garbage, so a store that was written over
//! many times stays large even after a compaction. A defragment
//! copies every tree into a new database beside the current one (`dir/db` or `dir/db.<n>`
//! becomes `dir/db.<n+1>`) and makes it current through the pointer file `dir/current-db`:
//!
//! 1. **Copy, without stopping anyone.** Into a database opened as every database of a running
//!    store is (`store::open_db`: no background flusher). With the compactor's removals held off
//!    ([`crate::compactor::Compactor::hold_removals`], as a snapshot export does) the state
//!    machine's history rows up to the revision R read under a brief read lock are copied: a
//!    history row is written once and removed only by the compactor or an install, both held
//!    off, so those rows are stable while they are read without any lock. The rows outside
//!    history (leases, attachments, bookkeeping), which change in place, are copied as they are
//!    found, after the applier has begun to note every key outside history it writes
//!    (`MvccCore::changed_in_place`); those noted keys are copied again in step 2. Then a few rounds copy the history that arrived
//!    meanwhile, and the new database is flushed, so that what is left for the pause is small.
//!    As the copy fills the new database, the live pages of its mostly dead log segments are
//!    relocated ([`SegmentCompaction`]), so that it ends close to its live data.
//! 2. **The pause.** Under the MVCC state's write lock (no entry is applied, no chunk compacted,
//!    nothing read) and [`Database::for_swap`] (no Raft mark or identity written): the history
//!    past the last copied revision is copied; the noted keys outside history are copied again
//!    (so the pause grows with what changed in place meanwhile, not with the number of leases
//!    or attachments); the small trees (redo record, compaction progress, Raft marks, identity)
//!    are compared with the old database's and made equal; the new database is flushed ([`crate::durability::Disk`]) and
//!    its directory entry synced; the pointer is replaced atomically
//!    ([`crate::files::write_atomically`]); the handles are swapped. Every later write goes to
//!    the new database. The pause is measured and returned ([`DefragReport::pause`]).
//! 3. **Cleanup.** Once no snapshot export still reads the old database's history (it took its
//!    tree handle before the swap), the old database is closed and its directory removed.
//!
//! A crash at any point leaves the old database current until the pointer is replaced, and the
//! new one, complete and durable, from then on. [`current_database`], at open, follows the
//! pointer and removes any other database directory: an unfinished copy, or an old database
//! whose removal the crash interrupted. A defragment asked for while one runs joins it: it waits
//! for it and returns its outcome.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::codec::{self, HISTORY};
use crate::database::{Database, Handles};
use crate::error::StoreError;
use crate::files::{sync_dir, write_atomically};
use crate::mvcc::MvccCore;

/// The file naming the current database directory; absent until the first defragment, meaning
/// [`FIRST_DATABASE`].
pub(crate) const POINTER: &str = "current-db";
/// The database directory of a data directory never defragmented.
pub(crate) const FIRST_DATABASE: &str = "db";

/// Rounds of copying the history that arrived during the previous round, before the pause.
const CATCH_UP_ROUNDS: usize = 4;
/// A round that copied fewer history rows than this ends the catching up: the pause copies the
/// rest.
const CATCH_UP_ENOUGH: u64 = 1_000;
/// How long the cleanup waits for the last users of the old database's handles (a flush begun
/// before the swap) before it removes the directory anyway.
const OLD_HANDLES_WAIT: Duration = Duration::from_secs(10);

/// What one defragment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefragReport {
    /// Bytes of the database file before.
    pub size_before: u64,
    /// Bytes of the new database file, once swapped in.
    pub size_after: u64,
    /// How long reads and writes were held off: the state's write lock, from asking for it
    /// until the new database was current.
    pub pause: Duration,
    /// How long the whole defragment took.
    pub took: Duration,
    /// The directory of the new database, relative to the data directory.
    pub database: String,
}

/// The points of a defragment a test may stop it at, as a crash there would (nothing after
/// the point happens, nothing is cleaned up).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefragStep {
    /// The new database was created; nothing is copied yet.
    Created,
    /// The history up to the first revision is copied, not flushed.
    Copying,
    /// Everything is copied and flushed, under the pause; the pointer still names the old one.
    Flushed,
    /// The pointer names the new database; the handles are not yet swapped.
    Switched,
}

/// The defragment of one store; at most one runs at a time, and later callers join it.
pub(crate) struct Defragmenter {
    dir: PathBuf,
    database: Arc<Database>,
    core: Arc<MvccCore>,
    running: Mutex<Option<Arc<Run>>>,
}

/// A running defragment, and its outcome once it is done.
struct Run {
    outcome: Mutex<Option<Result<DefragReport, String>>>,
    done: Condvar,
}

impl Defragmenter {
    pub(crate) fn new(dir: &Path, database: Arc<Database>, core: Arc<MvccCore>) -> Self {
        Defragmenter {
            dir: dir.to_path_buf(),
            database,
            core,
            running: Mutex::new(None),
        }
    }

    /// Defragments the store (see the module docs), or, if a defragment is running, waits for
    /// it and returns its outcome. Blocks for the whole copy: call it off the async runtime.
    pub(crate) fn run(&self, stop_at: Option<DefragStep>) -> Result<DefragReport, StoreError> {
        let (run, leader) = {
            let mut running = self.running.lock();
            match running.as_ref() {
                Some(run) => (run.clone(), false),
                None => {
                    let run = Arc::new(Run {
                        outcome: Mutex::new(None),
                        done: Condvar::new(),
                    });
                    *running = Some(run.clone());
                    (run, true)
                }
            }
        };
        if !leader {
            let mut outcome = run.outcome.lock();
            while outcome.is_none() {
                run.done.wait(&mut outcome);
            }
            return match outcome.as_ref() {
                Some(Ok(report)) => Ok(report.clone()),
                Some(Err(e)) => Err(StoreError::Defragment(e.clone())),
                None => unreachable!("waited until there is an outcome"),
            };
        }
        let result = self.defragment(stop_at);
        *run.outcome.lock() = Some(match &result {
            Ok(report) => Ok(report.clone()),
            Err(e) => Err(error_text(e)),
        });
        *self.running.lock() = None;
        run.done.notify_all();
        result
    }

    fn defragment(&self, stop_at: Option<DefragStep>) -> Result<DefragReport, StoreError> {
        let started = Instant::now();
        let old = self.database.get();
        let size_before = old.db.size_on_disk()?;
        let name = next_database(&old.dir);
        let new_dir = self.dir.join(&name);
        if new_dir.exists() {
            remove_database(&new_dir)?;
        }
        // Opened as every database of a running store is, with sled's background flusher off:
        // with it on (its segment cleaning made a copy a third smaller), the copy's own flush
        // once never returned (sled waiting in `make_stable` for a buffer no thread wrote).
        let new = Handles::open(&new_dir, old.disk.stats())?;
        let stop = |step| {
            if stop_at == Some(step) {
                Err(StoreError::Stopped(
                    "the defragment (a test stopped it here)",
                ))
            } else {
                Ok(())
            }
        };
        // Held from before the first copy until the swap: no history row the copy relies on
        // goes away (see the module docs). Released before the cleanup, which waits for exports.
        let removals = self.core.compactor.hold_removals();
        let swapped = (|| {
            stop(DefragStep::Created)?;
            let copied_to = self.copy(&old, &new, &stop)?;
            let copied_to = self.catch_up(&old, &new, copied_to)?;
            self.swap(&old, new, copied_to, &name, &stop)
        })();
        drop(removals);
        // Stopped or failed before the pause took them: no one needs the noted keys.
        self.core.changed_in_place.lock().take();
        let pause = match swapped {
            Ok(pause) => pause,
            Err(e) => {
                if !matches!(e, StoreError::Stopped(_)) {
                    // The pointer still names the old database: the copy is only in the way.
                    if let Err(cleanup) = remove_database(&new_dir) {
                        tracing::warn!(error = %cleanup, "cannot remove an unfinished defragment");
                    }
                }
                return Err(e);
            }
        };
        let size_after = self.database.get().db.size_on_disk()?;
        self.remove_old(old);
        let report = DefragReport {
            size_before,
            size_after,
            pause,
            took: started.elapsed(),
            database: name,
        };
        tracing::info!(
            size_before,
            size_after,
            pause_ms = pause.as_secs_f64() * 1e3,
            took_ms = report.took.as_secs_f64() * 1e3,
            database = %report.database,
            "defragmented"
        );
        Ok(report)
    }

    /// Step 1 (see the module docs): the bulk of the state machine, copied while writes go on.
    /// Returns the revision through which history is copied.
    fn copy(
        &self,
        old: &Handles,
        new: &Handles,
        stop: &dyn Fn(DefragStep) -> Result<(), StoreError>,
    ) -> Result<i64, StoreError> {
        let copied_to = self.core.state.read().revision;
        let mut compaction = SegmentCompaction::new(new);
        copy_history(&old.mvcc, &new.mvcc, 0, copied_to, Some(&mut compaction))?;
        stop(DefragStep::Copying)?;
        // Every key written from now on is noted, and copied again in the pause; the others
        // keep the value this copy finds.
        *self.core.changed_in_place.lock() = Some(BTreeSet::new());
        sync_outside_history(&old.mvcc, &new.mvcc)?;
        compaction.run()?;
        new.disk.flush()?;
        Ok(copied_to)
    }

    /// The history that arrived during the copy, a few rounds of it, each shorter than the one
    /// before, so that little is left for the pause; then a flush. Returns the revision through
    /// which history is copied.
    fn catch_up(
        &self,
        old: &Handles,
        new: &Handles,
        mut copied_to: i64,
    ) -> Result<i64, StoreError> {
        let mut compaction = SegmentCompaction::new(new);
        for _ in 0..CATCH_UP_ROUNDS {
            let revision = self.core.state.read().revision;
            let rows = copy_history(
                &old.mvcc,
                &new.mvcc,
                copied_to,
                revision,
                Some(&mut compaction),
            )?;
            copied_to = revision;
            if rows < CATCH_UP_ENOUGH {
                break;
            }
        }
        // Most of the copy reaches the disk now, not in the pause, and so does the new
        // database's name in the data directory.
        new.disk.flush()?;
        sync_dir(&self.dir)?;
        Ok(copied_to)
    }

    /// Step 2 (see the module docs): the rest, and the swap, under the pause. Returns how long
    /// the pause lasted.
    fn swap(
        &self,
        old: &Handles,
        new: Handles,
        copied_to: i64,
        name: &str,
        stop: &dyn Fn(DefragStep) -> Result<(), StoreError>,
    ) -> Result<Duration, StoreError> {
        let pause_started = Instant::now();
        let state = self.core.state.write();
        let mut current = self.database.for_swap();
        // No compaction under the pause: what is left is small.
        copy_history(&old.mvcc, &new.mvcc, copied_to, state.revision, None)?;
        match self.core.changed_in_place.lock().take() {
            Some(changed) => {
                for key in changed {
                    match old.mvcc.get(&key)? {
                        Some(value) => new.mvcc.insert(key, value)?,
                        None => new.mvcc.remove(key)?,
                    };
                }
            }
            // Not noted (never the case): compare them all instead.
            None => sync_outside_history(&old.mvcc, &new.mvcc)?,
        }
        for ((_, from), (_, to)) in old.trees().into_iter().zip(new.trees()).skip(1) {
            sync_rows(from, to, ..)?;
        }
        new.disk.flush()?;
        // On disk: the new database, equal to the old one (its name was synced before).
        stop(DefragStep::Flushed)?;
        if let Err(e) = write_atomically(&self.dir, POINTER, name.as_bytes()) {
            // Failed before its rename, the old database stays current. Failed after (the
            // directory's sync), a restart may open the new one: every write from now on must
            // go there, so the swap goes on.
            if pointed(&self.dir).as_deref() != Some(name) {
                return Err(e);
            }
            tracing::warn!(error = %e, "the defragment's pointer may not be durable yet");
        }
        // On disk: the pointer names the new database; a restart opens it.
        stop(DefragStep::Switched)?;
        *current = Arc::new(new);
        let applied = state.applied.map_or(0, |id| id.index);
        drop(current);
        drop(state);
        let pause = pause_started.elapsed();
        // The new database holds, flushed, everything applied so far.
        self.core.flushed_through(applied);
        Ok(pause)
    }

    /// Step 3 (see the module docs): closes the old database and removes its directory.
    fn remove_old(&self, old: Arc<Handles>) {
        // An export that took the old tree before the swap is done once this is granted.
        drop(self.core.compactor.exclude_exports());
        let deadline = Instant::now() + OLD_HANDLES_WAIT;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let dir = old.dir.clone();
        drop(old);
        if let Err(e) = remove_database(&dir).and_then(|()| sync_dir(&self.dir)) {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot remove the database a defragment replaced; the next start removes it"
            );
        }
    }
}

/// The text of `e` and its causes, for the callers that joined a failed defragment.
fn error_text(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Copies the history rows of revisions `after + 1 ..= through` from `from` to `to`, letting
/// `compaction`, if any, follow the bytes copied; returns how many rows there were.
fn copy_history(
    from: &sled::Tree,
    to: &sled::Tree,
    after: i64,
    through: i64,
    mut compaction: Option<&mut SegmentCompaction>,
) -> Result<u64, StoreError> {
    if through <= after {
        return Ok(0);
    }
    let start = codec::history_key_start(after.saturating_add(1));
    let end = codec::history_key_start(through.saturating_add(1));
    let mut rows = 0;
    for pair in from.range(start.as_slice()..end.as_slice()) {
        let (k, v) = pair?;
        let bytes = k.len() + v.len();
        to.insert(k, v)?;
        if let Some(compaction) = compaction.as_mut() {
            compaction.copied(bytes)?;
        }
        rows += 1;
    }
    Ok(rows)
}

/// Keeps the new database's log file close to its live data while the copy fills it.
///
/// sled writes every insert as a delta of a page, rewrites the page whole every few deltas and
/// splits it as it grows, so filling a database writes about twice what stays live; and it
/// relocates the live pages of a log segment (freeing the segment) only once at most half of it
/// is live, which fill garbage seldom reaches (each segment ends just over half live, and the
/// file about twice the data). So every [`COMPACT_EVERY_SEGMENTS`] segments' worth of keys and
/// values copied, the new database is flushed, which retires its full segments, and then the
/// live pages of every retired segment at most [`COMPACT_BELOW_PCT`] live, and of those sled
/// marked itself, are relocated (`sled::Db::compact_segments`, Rampart's copy of sled:
/// `vendor/sled/RAMPART.md`): the next flush frees those segments, and the copy reuses them,
/// or they become holes in the file.
struct SegmentCompaction<'a> {
    handles: &'a Handles,
    since: usize,
}

/// Log segments' worth of keys and values copied between compactions of the new database.
const COMPACT_EVERY_SEGMENTS: usize = 2;
/// A retired log segment of the new database at most this live (in percent) has its live pages
/// relocated. Measured on 1,000,000 pairs of 317 bytes inserted one by one: the file at 1.88
/// times the data without compacting, 1.48 with 60, 1.41 with 75, 1.29 with 90 (filling took
/// 6.8, 7.5, 7.7 and 8.6 s).
const COMPACT_BELOW_PCT: usize = 90;

impl<'a> SegmentCompaction<'a> {
    fn new(handles: &'a Handles) -> Self {
        SegmentCompaction { handles, since: 0 }
    }

    /// Notes `bytes` more copied; compacts once [`COMPACT_EVERY_SEGMENTS`] segments' worth have
    /// been since the last time.
    fn copied(&mut self, bytes: usize) -> Result<(), StoreError> {
        self.since += bytes;
        if self.since >= COMPACT_EVERY_SEGMENTS * self.handles.segment_size {
            self.run()?;
        }
        Ok(())
    }

    /// Retires the full segments, then relocates the live pages of those mostly dead.
    fn run(&mut self) -> Result<(), StoreError> {
        self.since = 0;
        self.handles.disk.flush()?;
        self.handles.db.compact_segments(COMPACT_BELOW_PCT)?;
        Ok(())
    }
}

/// The database directory the pointer in `dir` names, if it can be read.
fn pointed(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(POINTER))
        .ok()
        .map(|text| text.trim().to_string())
}

/// Makes the rows of `to` outside history equal to those of `from`.
fn sync_outside_history(from: &sled::Tree, to: &sled::Tree) -> Result<(), StoreError> {
    const FIRST_HISTORY: &[u8] = &[HISTORY];
    const AFTER_HISTORY: &[u8] = &[HISTORY + 1];
    sync_rows(from, to, ..FIRST_HISTORY)?;
    sync_rows(from, to, AFTER_HISTORY..)
}

/// Makes the rows of `to` in `range` equal to those of `from`: one ordered pass over both,
/// writing what differs and removing what `from` lacks.
fn sync_rows<R>(from: &sled::Tree, to: &sled::Tree, range: R) -> Result<(), StoreError>
where
    R: std::ops::RangeBounds<&'static [u8]> + Clone,
{
    let mut source = from.range::<&[u8], R>(range.clone()).peekable();
    let mut target = to.range::<&[u8], R>(range).peekable();
    loop {
        let ordering = match (source.peek(), target.peek()) {
            (None, None) => return Ok(()),
            (Some(Err(_)), _) => return Err(source.next().expect("peeked").unwrap_err().into()),
            (_, Some(Err(_))) => return Err(target.next().expect("peeked").unwrap_err().into()),
            (Some(Ok(_)), None) => std::cmp::Ordering::Less,
            (None, Some(Ok(_))) => std::cmp::Ordering::Greater,
            (Some(Ok((a, _))), Some(Ok((b, _)))) => a.cmp(b),
        };
        match ordering {
            std::cmp::Ordering::Less => {
                let (k, v) = source.next().expect("peeked")?;
                to.insert(k, v)?;
            }
            std::cmp::Ordering::Greater => {
                let (k, _) = target.next().expect("peeked")?;
                to.remove(k)?;
            }
            std::cmp::Ordering::Equal => {
                let (k, v) = source.next().expect("peeked")?;
                let (_, w) = target.next().expect("peeked")?;
                if v != w {
                    to.insert(k, v)?;
                }
            }
        }
    }
}

/// Whether `name` is that of a database directory: `db` or `db.<n>`.
fn is_database(name: &str) -> bool {
    name == FIRST_DATABASE
        || name
            .strip_prefix("db.")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The name of the database a defragment of the one at `current` writes.
fn next_database(current: &Path) -> String {
    let n = current
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("db."))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    format!("db.{}", n + 1)
}

fn remove_database(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", dir, e)),
    }
}

/// The current database directory of the data directory `dir` (relative to it), as the pointer
/// names it; and removes every other database directory (a defragment's unfinished copy, or
/// the database it replaced), so that only the current one remains.
pub(crate) fn current_database(dir: &Path) -> Result<String, StoreError> {
    let pointer = dir.join(POINTER);
    let (current, pointed) = match std::fs::read_to_string(&pointer) {
        Ok(text) => (text.trim().to_string(), true),
        // Never defragmented to the end: `db`, which a new data directory does not have yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (FIRST_DATABASE.into(), false),
        Err(e) => return Err(StoreError::io("read", &pointer, e)),
    };
    // Written only once the database it names was complete and durable.
    if pointed && (!is_database(&current) || !dir.join(&current).is_dir()) {
        return Err(StoreError::corrupt(
            "data directory",
            format!(
                "{} names {current:?}, which is not a database directory in it",
                pointer.display()
            ),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != current && is_database(&name) && entry.path().is_dir() {
            tracing::warn!(
                database = %entry.path().display(),
                current = %current,
                "removing a database a defragment left behind (an unfinished copy, or the one \
                 it replaced)"
            );
            remove_database(&entry.path())?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use openraft::storage::RaftLogStorage;
    use openraft::Vote;

    use super::*;
    use crate::store::ClusterIdentity;
    use crate::test_support::{entry, history, leased_put_cmd, progress, put_cmd};
    use crate::types::Command;
    use crate::Store;

    const IDENTITY: ClusterIdentity = ClusterIdentity {
        cluster_id: 0xc1,
        member_id: 0x31,
    };

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A store with an identity, a vote, a lease with a key attached, and `rounds` overwrites
    /// of `keys` keys of `value_len` bytes; returns the next log index.
    fn fill(store: &Store, keys: usize, rounds: usize, value_len: usize) -> u64 {
        store.set_identity(&IDENTITY).unwrap();
        runtime()
            .block_on(store.log_store().save_vote(&Vote::new(3, 2)))
            .unwrap();
        let core = store.core_for_tests();
        let mut index = 1;
        let mut apply = |cmd: Command| {
            core.apply_entry(&entry(index, cmd)).unwrap();
            index += 1;
        };
        apply(Command::LeaseGrant { id: 7, ttl: 600 });
        apply(leased_put_cmd("leased", "v", 7));
        let value = "x".repeat(value_len);
        for round in 0..rounds {
            for key in 0..keys {
                apply(put_cmd(&format!("k{key:05}"), &format!("{round}{value}")));
            }
        }
        index
    }

    /// Everything a reader and a restart depend on: the live keys and values, history, the
    /// revision and applied position, the lease, the vote and the identity.
    fn contents(store: &Store) -> String {
        let core = store.core_for_tests();
        let mvcc = store.mvcc();
        let (range, revision) = mvcc
            .range(&crate::types::RangeRequest {
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                ..Default::default()
            })
            .unwrap();
        let live: Vec<String> = range
            .kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={}@{}",
                    String::from_utf8_lossy(&kv.key),
                    kv.value.len(),
                    kv.mod_revision
                )
            })
            .collect();
        let vote = runtime().block_on(store.log_store().read_vote()).unwrap();
        format!(
            "revision {revision} progress {:?} live {live:?} history {:?} leases {:?} keys {:?} \
             vote {vote:?} identity {:?}",
            progress(&core),
            history(&core),
            mvcc.leases()
                .unwrap()
                .iter()
                .map(|l| (l.id, l.ttl))
                .collect::<Vec<_>>(),
            mvcc.lease_keys(7).unwrap(),
            store.identity().unwrap(),
        )
    }

    fn compact(store: &Store, index: &mut u64) {
        let core = store.core_for_tests();
        let revision = core.state.read().revision;
        core.apply_entry(&entry(*index, Command::Compact { revision }))
            .unwrap();
        *index += 1;
        let mvcc = store.mvcc();
        runtime()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), mvcc.wait_compacted(revision)).await
            })
            .expect("compacted within 30 s")
            .unwrap();
    }

    /// The database directories in `dir`.
    fn databases(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| is_database(name))
            .collect();
        names.sort();
        names
    }

    /// Writes applied while a defragment copies are all in the new database; the file shrinks
    /// to about the live data after a compaction; the pause is measured; a restart opens the
    /// new database with everything in it, and the old one is gone.
    #[test]
    fn a_defragment_while_entries_are_applied_keeps_every_one_and_shrinks_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut index = fill(&store, 500, 40, 1000);
        compact(&store, &mut index);
        let in_use_before = store.size_in_use();
        assert!(in_use_before > 500 * 1000, "{in_use_before}");
        assert!(in_use_before <= store.size_on_disk());

        let core = store.core_for_tests();
        let stop = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let writer = std::thread::spawn({
            let (core, stop, applied) = (core.clone(), stop.clone(), applied.clone());
            move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) || n < 200 {
                    let cmd = if n % 50 == 7 {
                        // Changes in place (a lease and an attachment) as well as history.
                        Command::LeaseGrant {
                            id: 100 + n,
                            ttl: 600,
                        }
                    } else {
                        put_cmd(&format!("during{n:05}"), "v")
                    };
                    core.apply_entry(&entry(index, cmd)).unwrap();
                    index += 1;
                    n += 1;
                    applied.store(n as u64, Ordering::SeqCst);
                }
                index
            }
        });
        let report = store.defragment().unwrap();
        stop.store(true, Ordering::SeqCst);
        let index = writer.join().unwrap();
        println!(
            "defragment: {} -> {} bytes, pause {:?} of {:?}, {} entries applied meanwhile",
            report.size_before,
            report.size_after,
            report.pause,
            report.took,
            applied.load(Ordering::SeqCst)
        );
        assert!(applied.load(Ordering::SeqCst) >= 200);
        assert_eq!(report.database, "db.1");
        assert_eq!(store.database_dir(), Path::new("db.1"));
        assert!(
            report.size_after < report.size_before / 2,
            "{report:?}: the file did not shrink"
        );
        assert!(report.pause < report.took, "{report:?}");
        assert_eq!(databases(dir.path()), ["db.1"]);
        assert!(store.size_in_use() <= store.size_on_disk());

        // Writes go on into the new database, and a second defragment moves on to the next.
        core.apply_entry(&entry(index, put_cmd("after", "1")))
            .unwrap();
        assert_eq!(store.defragment().unwrap().database, "db.2");
        let before = contents(&store);
        assert!(before.contains("during00199="), "{before}");
        // Each lease granted during the copy (entries 7, 57, 107, ... of the writer) is in the
        // new database.
        let granted = (applied.load(Ordering::SeqCst) + 42) / 50;
        let leases = store.mvcc().leases().unwrap();
        assert_eq!(
            leases.len() as u64,
            1 + granted,
            "leases in the new database"
        );
        assert!(before.contains("after="), "{before}");
        store.flush().unwrap();
        drop((store, core));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(contents(&store), before);
        assert_eq!(databases(dir.path()), ["db.2"]);
    }

    /// A stop at each step of a defragment leaves a data directory that opens, to the old
    /// database before the pointer is replaced and to the new one after, with everything in
    /// it, and only that database left; a defragment then runs again.
    #[test]
    fn a_defragmented_database_takes_little_more_than_its_live_data() {
        // 50,000 keys of 256-byte values (16 MB of live keys and values), written over once,
        // in log segments of 256 KiB: as many segments as a million keys take in full-size
        // ones, so that the few segments sled keeps being written at the file's end are as
        // small a part of it. Without the compaction of the copy's segments the file took 1.95
        // times the live bytes; with it, 1.12.
        let dir = tempfile::tempdir().unwrap();
        let (report, live) = crate::store::tests::with_new_segment_size(256 << 10, || {
            let store = Store::open(dir.path()).unwrap();
            let mut index = fill(&store, 50_000, 2, 256);
            compact(&store, &mut index);
            let report = store.defragment().unwrap();
            let live = store.size_in_use();
            // The relocated pages, and the holes where segments were, read back after a reopen.
            let before = contents(&store);
            store.flush().unwrap();
            drop(store);
            assert_eq!(contents(&Store::open(dir.path()).unwrap()), before);
            (report, live)
        });
        println!("defragmented: {report:?}, {live} bytes live");
        assert!(live > 15_000_000, "{live}");
        assert!(
            report.size_after * 10 <= live * 13,
            "{report:?}: {} bytes on disk for {live} live",
            report.size_after
        );
    }

    #[test]
    fn a_stop_at_any_step_opens_the_old_or_the_new_database_never_neither() {
        for step in [
            DefragStep::Created,
            DefragStep::Copying,
            DefragStep::Flushed,
            DefragStep::Switched,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut index = fill(&store, 50, 5, 100);
            compact(&store, &mut index);
            let before = contents(&store);
            let stopped = store.defragment_stopped_at(step);
            assert!(
                matches!(stopped, Err(StoreError::Stopped(_))),
                "{step:?}: {stopped:?}"
            );
            drop(store);
            let store = Store::open(dir.path()).unwrap();
            let expected = if step == DefragStep::Switched {
                "db.1"
            } else {
                FIRST_DATABASE
            };
            assert_eq!(databases(dir.path()), [expected], "{step:?}");
            assert_eq!(contents(&store), before, "{step:?}");
            let core = store.core_for_tests();
            core.apply_entry(&entry(index, put_cmd("after", "1")))
                .unwrap();
            store.defragment().unwrap();
            let after = contents(&store);
            drop((store, core));
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(contents(&store), after, "{step:?}");
            assert_eq!(databases(dir.path()).len(), 1, "{step:?}");
        }
    }

    /// A power loss right after a stop at each step (everything not fsynced gone, on a crash
    /// filesystem): the store opens to the old database before the pointer is replaced and to
    /// the new one after, with everything that was durable in it.
    #[test]
    fn a_power_loss_at_any_step_opens_the_old_or_the_new_database() {
        if !rampart_crashfs::fuse_available() {
            println!("SKIPPED: /dev/fuse is missing, so no FUSE filesystem can be mounted here");
            return;
        }
        for step in [
            DefragStep::Created,
            DefragStep::Copying,
            DefragStep::Flushed,
            DefragStep::Switched,
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let [backing, mountpoint] = ["backing", "mnt"].map(|name| tmp.path().join(name));
            for path in [&backing, &mountpoint] {
                std::fs::create_dir(path).unwrap();
            }
            let crashfs = rampart_crashfs::CrashFs::mount(&backing, &mountpoint).unwrap();
            let dir = mountpoint.join("data");
            let store = Store::open(&dir).unwrap();
            let mut index = fill(&store, 50, 5, 100);
            compact(&store, &mut index);
            // Durable: what the old database holds (applied entries wait for a flush).
            store.flush().unwrap();
            let before = contents(&store);
            let stopped = store.defragment_stopped_at(step);
            assert!(
                matches!(stopped, Err(StoreError::Stopped(_))),
                "{step:?}: {stopped:?}"
            );
            drop(store);
            crashfs.crash().unwrap();
            let store = Store::open(&dir).unwrap();
            let expected = if step == DefragStep::Switched {
                "db.1"
            } else {
                FIRST_DATABASE
            };
            assert_eq!(databases(&dir), [expected], "{step:?}");
            assert_eq!(contents(&store), before, "{step:?}");
        }
    }

    /// A snapshot build that took the old tree before the swap reads its history to the end
    /// from it: the swap goes on meanwhile, and the old database is removed only once the build
    /// is done. The snapshot holds exactly the pairs the tree held when the build began.
    #[test]
    fn a_snapshot_build_reading_the_old_database_finishes_before_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut index = fill(&store, 100, 3, 100);
        let core = store.core_for_tests();
        let pairs = |tree: &sled::Tree| -> Vec<(Vec<u8>, Vec<u8>)> {
            tree.iter()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect()
        };
        let at_build = pairs(&core.tree());

        let (paused, is_paused) = std::sync::mpsc::channel();
        let (go, resume) = std::sync::mpsc::channel::<()>();
        let builder = std::thread::spawn({
            let (core, snapshots) = (core.clone(), store.snapshots_for_tests());
            move || {
                let mut rows = 0;
                crate::state_machine::export(&core, &snapshots, || {
                    rows += 1;
                    if rows == 20 {
                        paused.send(()).unwrap();
                        resume.recv().unwrap();
                    }
                })
                .map_err(|e| e.to_string())
            }
        });
        is_paused
            .recv_timeout(Duration::from_secs(10))
            .expect("the build reached history");
        let defragment = std::thread::spawn(store.defragmenter());
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.database_dir() != Path::new("db.1") {
            assert!(Instant::now() < deadline, "the swap waited for the build");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Writes go to the new database while the build still reads the old one.
        core.apply_entry(&entry(index, put_cmd("after-swap", "1")))
            .unwrap();
        index += 1;
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !defragment.is_finished(),
            "the old database went during the build"
        );
        assert_eq!(databases(dir.path()), ["db", "db.1"]);

        go.send(()).unwrap();
        let (meta, file) = builder.join().unwrap().expect("the build succeeds");
        defragment.join().unwrap().unwrap();
        assert_eq!(databases(dir.path()), ["db.1"]);
        assert_eq!(meta.last_log_id.map(|id| id.index), Some(index - 2));
        let mut reader = crate::snapshot::reader_of(file, Path::new("built")).unwrap();
        let mut built = Vec::new();
        while let Some(batch) = reader.next_batch().unwrap() {
            built.extend(batch);
        }
        built.sort();
        assert_eq!(built, at_build);
    }

    /// A pointer naming no database is refused at open, not taken for an empty store.
    #[test]
    fn a_pointer_to_a_missing_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        std::fs::write(dir.path().join(POINTER), "db.9").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// A second defragment asked for while one runs waits for it and returns its outcome.
    #[test]
    fn a_defragment_asked_for_while_one_runs_joins_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fill(&store, 200, 5, 1000);
        let second = store.defragmenter();
        // The state lock held here keeps the first one in its catch-up rounds or its pause.
        let core = store.core_for_tests();
        let held = core.state.read();
        let first = std::thread::spawn(store.defragmenter());
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.defragmenter_for_tests().running.lock().is_none() {
            assert!(
                Instant::now() < deadline,
                "the first defragment never started"
            );
            std::thread::yield_now();
        }
        let joined = std::thread::spawn(second);
        // The slot, the first and the joiner hold the run.
        let defragmenter = store.defragmenter_for_tests();
        while defragmenter.running.lock().as_ref().map(Arc::strong_count) != Some(3) {
            assert!(
                Instant::now() < deadline,
                "the second defragment never joined"
            );
            std::thread::yield_now();
        }
        drop(held);
        let (first, joined) = (first.join().unwrap(), joined.join().unwrap());
        assert_eq!(first.unwrap(), joined.unwrap());
        assert_eq!(databases(dir.path()), ["db.1"]);
    }
}
