//! Physical compaction, in the background, a chunk at a time.
//!
//! Applying a `Compact` only records the new compact revision: reads below it fail from then on.
//! Removing the versions it superseded is this module's work, as etcd's scheduled compaction is:
//! a worker thread per store walks the key index in key order and, a chunk at a time
//! ([`KeyIndex::compact_chunk`]), removes each chunk's dead versions from the index and from
//! history together, under the state's write lock, held only for that chunk, so writes and
//! reads go on between chunks instead of waiting for the whole pass.
//!
//! A version not yet removed is invisible. Per key, a pass keeps the latest version at or below
//! the target revision and removes the older ones; a read at or above the compact revision
//! always finds that newer version first, and a replay from below the compact revision is
//! refused. When that latest version is a delete, it goes too, but only after every older
//! version of the key: sled recovers a prefix of its writes in order, so a crash in the middle
//! never leaves an old put exposed by a missing delete. Every removal is idempotent, and the
//! index is rebuilt from what history holds at open, so a pass interrupted by a crash is simply
//! run again.
//!
//! How far this member's history is compacted is kept in its own tree (not in the MVCC tree,
//! which is what snapshots carry) and published on a watch channel for `physical` compaction
//! requests. Installing a snapshot resets it to 0: the incoming pairs may hold versions the
//! sender had not removed yet, and the worker removes them here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::watch;

use crate::codec;
use crate::database::Database;
use crate::error::StoreError;
#[cfg(doc)]
use crate::index::KeyIndex;
use crate::mvcc::MvccCore;

/// The work of one chunk: keys looked at plus versions removed (see
/// [`KeyIndex::compact_chunk`]); the state's write lock is held while one chunk's removals are
/// made.
const CHUNK: usize = 1024;

/// The pause between two chunks, which leaves the disk and the CPU to the requests (etcd's
/// compaction pauses as long between its batches of 1,000 keys).
const PAUSE: Duration = Duration::from_millis(10);

/// Key, in the compactor's tree, of the revision up to which history is physically compacted.
const COMPACTED: &[u8] = b"compacted";

/// The background compaction of one store (see the module docs).
pub(crate) struct Compactor {
    /// Its tree, which holds [`COMPACTED`], is the current database's `compaction`, written
    /// only under the state's write lock.
    database: Arc<Database>,
    /// The revision up to which history is physically compacted; 0 for "not known to be".
    done: watch::Sender<i64>,
    /// Bumped whenever the MVCC tree is replaced wholesale, so that a pass scanning the old
    /// tree stops rather than remove what its scan found there.
    generation: AtomicU64,
    /// Wakes the worker; dropped (with the store) to stop it.
    wake: Mutex<Option<mpsc::Sender<()>>>,
    /// Held for reading while a snapshot export streams history without the state's lock, and
    /// for writing by whatever removes history rows (a chunk of this worker, a snapshot
    /// install), always before the state's lock: so the rows an export is reading stay.
    removals: RwLock<()>,
}

impl Compactor {
    pub(crate) fn open(database: Arc<Database>) -> Result<Self, StoreError> {
        let done = match database.get().compaction.get(COMPACTED)? {
            Some(bytes) => codec::decode("physically compacted revision", &bytes)?,
            None => 0,
        };
        Ok(Compactor {
            database,
            done: watch::channel(done).0,
            generation: AtomicU64::new(0),
            wake: Mutex::new(None),
            removals: RwLock::new(()),
        })
    }

    /// Starts `core`'s worker thread, which runs until the core is dropped, and has it catch up
    /// with any compaction left unfinished when the store was last closed.
    pub(crate) fn start(core: &Arc<MvccCore>) -> Result<(), StoreError> {
        let (wake, woken) = mpsc::channel();
        let weak = Arc::downgrade(core);
        std::thread::Builder::new()
            .name("mvcc-compactor".into())
            .spawn(move || run(weak, woken))
            .map_err(|e| StoreError::io("start the compactor thread", "", e))?;
        *core.compactor.wake.lock() = Some(wake);
        core.compactor.wake();
        Ok(())
    }

    /// Tells the worker there may be work: a new compact revision, or a replaced tree.
    pub(crate) fn wake(&self) {
        if let Some(wake) = self.wake.lock().as_ref() {
            // The worker is gone only when the store is being dropped.
            let _ = wake.send(());
        }
    }

    /// The MVCC tree was replaced wholesale; called with the state's write lock held.
    pub(crate) fn tree_replaced(&self) -> Result<(), StoreError> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.record_done(0)?;
        self.wake();
        Ok(())
    }

    /// Holds off every removal of history rows (see `removals`) while the guard lives. Take it
    /// before the state's lock.
    pub(crate) fn hold_removals(&self) -> RwLockReadGuard<'_, ()> {
        self.removals.read()
    }

    /// Waits until no export holds removals off, and keeps them held off from others while the
    /// guard lives. Take it before the state's lock.
    pub(crate) fn exclude_exports(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        self.removals.write()
    }

    /// Records in `tree`, the compactor's, that nothing is known to be compacted: for a tree
    /// rewritten from a snapshot before the store is opened (see [`Compactor::tree_replaced`]).
    pub(crate) fn forget_progress(tree: &sled::Tree) -> Result<(), StoreError> {
        tree.insert(
            COMPACTED,
            codec::encode("physically compacted revision", &0i64)?,
        )?;
        Ok(())
    }

    /// A receiver of the physically compacted revision.
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.done.subscribe()
    }

    fn record_done(&self, revision: i64) -> Result<(), StoreError> {
        self.database.get().compaction.insert(
            COMPACTED,
            codec::encode("physically compacted revision", &revision)?,
        )?;
        self.done.send_replace(revision);
        Ok(())
    }
}

/// The worker: passes until the history is compacted up to the compact revision, then sleeps
/// until woken. Holds the core only while working, so it never keeps a closed store open long.
fn run(core: Weak<MvccCore>, woken: mpsc::Receiver<()>) {
    let mut pass = None;
    loop {
        let Some(strong) = core.upgrade() else { return };
        match step(&strong, &mut pass) {
            Ok(true) => {
                drop(strong);
                std::thread::sleep(PAUSE);
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                // Like a failed apply, a failed removal means the disk or the data is broken;
                // the next write to the store meets the same error and stops the member.
                tracing::error!(error = %e, "physical compaction failed; it stops until woken");
                pass = None;
            }
        }
        drop(strong);
        if woken.recv().is_err() {
            return;
        }
    }
}

/// One pass over the history, up to `target`.
struct Pass {
    target: i64,
    generation: u64,
    /// The next key of the index to look at.
    cursor: Vec<u8>,
}

/// Does one chunk of work; `Ok(false)` when there is none left.
fn step(core: &MvccCore, pass: &mut Option<Pass>) -> Result<bool, StoreError> {
    let compactor = &core.compactor;
    let Some(current) = pass.as_mut() else {
        // Both read under the state lock, under which the tree is replaced: the target is that
        // of the tree this generation names.
        let (target, generation) = {
            let state = core.state.read();
            (
                state.compact_revision,
                compactor.generation.load(Ordering::SeqCst),
            )
        };
        if target <= *compactor.done.borrow() {
            return Ok(false);
        }
        *pass = Some(Pass {
            target,
            generation,
            cursor: Vec::new(),
        });
        tracing::debug!(revision = target, "physical compaction started");
        return Ok(true);
    };
    // A snapshot export may be reading the rows this chunk would remove: wait for it.
    let _removals = compactor.removals.write();
    let mut state = core.state.write();
    let stats = core.disk().stats();
    let _removing = stats.in_flight.begin("compaction");
    if compactor.generation.load(Ordering::SeqCst) != current.generation {
        // The tree (and its index) this pass was working on is gone; start over on the new one.
        *pass = None;
        return Ok(true);
    }
    let (removed, next) = state
        .index
        .compact_chunk(&current.cursor, current.target, CHUNK);
    // If a removal fails, the index has already forgotten versions history still holds; the
    // member stops at the same error on its next write, and the index is rebuilt at restart.
    let tree = core.tree();
    let mut freed = 0;
    for version in &removed {
        let key = version.history_key();
        if let Some(old) = tree.remove(key)? {
            freed += key.len() + old.len();
        }
    }
    core.live_bytes_shrank(freed);
    match next {
        Some(key) => current.cursor = key,
        None => {
            compactor.record_done(current.target)?;
            tracing::debug!(revision = current.target, "physical compaction finished");
            *pass = None;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::codec::HISTORY;
    use crate::test_support::{entry, history, put_cmd, replay};
    use crate::types::{Command, CommandResult, DeleteRangeRequest, PutRequest};

    /// Waits (at most 10 s) until the background compaction of `core` reaches `revision`.
    fn wait_compacted(core: &Arc<MvccCore>, revision: i64) {
        let mvcc = crate::Mvcc::new(core.clone());
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    mvcc.wait_compacted(revision),
                )
                .await
            })
            .expect("physical compaction did not finish within 10 s")
            .unwrap();
    }

    #[test]
    fn compaction_physically_removes_superseded_versions_and_tombstones() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let mut index = 0;
        let mut apply = |cmd: Command| {
            index += 1;
            core.apply_entry(&entry(index, cmd)).unwrap()
        };
        let put = |k: &str| {
            Command::Put(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
        };
        apply(put("a")); // 2
        apply(put("b")); // 3
        apply(put("a")); // 4
        apply(Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        })); // 5
        apply(put("c")); // 6
        assert_eq!(history(&core), ["a@2", "a@4", "b@3", "-b@5", "c@6"]);
        assert_eq!(replay(&core, 1), ["2:a", "3:b", "4:a", "5:-b", "6:c"]);

        assert_eq!(
            apply(Command::Compact { revision: 4 }).result,
            Ok(CommandResult::Compact)
        );
        wait_compacted(&core, 4);
        assert_eq!(
            history(&core),
            ["a@4", "b@3", "-b@5", "c@6"],
            "a@2 was superseded at 4"
        );
        assert_eq!(replay(&core, 4), ["4:a", "5:-b", "6:c"]);

        assert_eq!(
            apply(Command::Compact { revision: 5 }).result,
            Ok(CommandResult::Compact)
        );
        wait_compacted(&core, 5);
        assert_eq!(
            history(&core),
            ["a@4", "c@6"],
            "b's delete at 5 takes its whole history"
        );
        assert_eq!(
            replay(&core, 5),
            ["6:c"],
            "a delete at exactly the compact revision is not replayed"
        );

        assert_eq!(
            apply(Command::Compact { revision: 6 }).result,
            Ok(CommandResult::Compact)
        );
        wait_compacted(&core, 6);
        assert_eq!(
            history(&core),
            ["a@4", "c@6"],
            "the latest version of a live key always stays"
        );
    }

    /// Writes `keys` keys a few times over (every seventh deleted in between), enough history
    /// for several compaction chunks; returns the store revision and, per revision, the key it
    /// changed and whether that was a delete.
    fn write_history(core: &MvccCore, index: &mut u64, keys: usize) -> Vec<(String, i64, bool)> {
        let mut changes = Vec::new();
        let mut revision = core.state.read().revision;
        for round in 0..3 {
            for i in 0..keys {
                let key = format!("k{i:05}");
                *index += 1;
                let deleting = round == 1 && i % 7 == 0;
                let cmd = if deleting {
                    Command::DeleteRange(DeleteRangeRequest {
                        key: key.clone().into_bytes(),
                        ..Default::default()
                    })
                } else {
                    put_cmd(&key, &format!("{round}"))
                };
                core.apply_entry(&entry(*index, cmd)).unwrap();
                revision += 1;
                changes.push((key, revision, deleting));
            }
        }
        changes
    }

    /// `history()` as it must be after compacting `changes` at `revision`: per key, the versions
    /// after it, and the latest one at or before it unless that is a delete.
    fn compacted_history(changes: &[(String, i64, bool)], revision: i64) -> Vec<String> {
        let mut by_key: BTreeMap<&str, Vec<(i64, bool)>> = BTreeMap::new();
        for (key, rev, deleted) in changes {
            by_key.entry(key).or_default().push((*rev, *deleted));
        }
        let mut out = Vec::new();
        for (key, versions) in by_key {
            let survivor = versions.iter().rfind(|(r, _)| *r <= revision);
            for &(rev, deleted) in &versions {
                let kept = rev > revision || (Some(&(rev, deleted)) == survivor && !deleted);
                if kept {
                    out.push(format!("{}{key}@{rev}", if deleted { "-" } else { "" }));
                }
            }
        }
        out
    }

    #[test]
    fn writes_made_during_a_background_compaction_stay() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let mut index = 0;
        // 3 x 1500 versions: several chunks of the compactor.
        let mut changes = write_history(&core, &mut index, 1500);
        let at = changes[2 * 1500 + 100].1;
        index += 1;
        let reply = core
            .apply_entry(&entry(index, Command::Compact { revision: at }))
            .unwrap();
        assert_eq!(reply.result, Ok(CommandResult::Compact));
        // Applied while the compactor works through the history (or after: either way the
        // result must be the same).
        changes.extend(write_history(&core, &mut index, 40));
        wait_compacted(&core, at);
        assert_eq!(history(&core), compacted_history(&changes, at));
        assert_eq!(
            replay(&core, at).len(),
            changes.iter().filter(|(_, r, _)| *r >= at).count(),
            "every change from the compact revision on is replayed (no delete at {at})"
        );
        let history_keys: std::collections::BTreeSet<Vec<u8>> = core
            .tree()
            .scan_prefix([HISTORY])
            .map(|item| codec::history_value(&item.unwrap().1).unwrap().key.to_vec())
            .collect();
        assert_eq!(
            core.state.read().index.len(),
            history_keys.len(),
            "the index holds exactly the keys history has"
        );
    }

    #[test]
    fn a_compaction_unfinished_at_close_is_finished_after_reopening() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut index = 0;
        let (changes, at) = {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            let changes = write_history(&core, &mut index, 1500);
            let at = changes.last().unwrap().1 - 10;
            index += 1;
            core.apply_entry(&entry(index, Command::Compact { revision: at }))
                .unwrap();
            // Closed at once, most likely with the compactor in the middle of its pass.
            store.flush().unwrap();
            (changes, at)
        };
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        assert_eq!(core.state.read().compact_revision, at);
        wait_compacted(&core, at);
        assert_eq!(history(&core), compacted_history(&changes, at));
    }
}
