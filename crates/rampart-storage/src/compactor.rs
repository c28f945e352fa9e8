//! Physical compaction, in the background, a chunk at a time.
//!
//! Applying a `Compact` only records the new compact revision (reads below it fail from then on)
//! and drops the event-index entries of the deletes at exactly that revision, so that a replay
//! from the compact revision never meets an index entry whose version is about to go. Removing
//! the versions it superseded is this module's work, as etcd's scheduled compaction is: a worker
//! thread per store scans the history in chunks of [`CHUNK`] records and removes each chunk's
//! dead versions under the state's write lock, held only for that chunk, so writes and reads go
//! on between chunks instead of waiting for a scan of the whole history.
//!
//! A version not yet removed is invisible. Per key, a pass keeps the latest version at or below
//! the target revision and removes the older ones; a read at or above the compact revision
//! always finds that newer version first, and a replay from below the compact revision is
//! refused. When that latest version is a delete, it goes too, but only after every older
//! version of the key: sled recovers a prefix of its writes in order, so a crash in the middle
//! never leaves an old put exposed by a missing delete. Event-index entries below the target go
//! last. Every removal is idempotent, so a pass interrupted by a crash is simply run again.
//!
//! How far this member's history is compacted is kept in its own tree (not in the MVCC tree,
//! which is what snapshots carry) and published on a watch channel for `physical` compaction
//! requests. Installing a snapshot resets it to 0: the incoming pairs may hold versions the
//! sender had not removed yet, and the worker removes them here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::codec::{self, EVENT, HISTORY};
use crate::error::StoreError;
use crate::mvcc::MvccCore;

/// History records (or event-index entries) scanned per chunk; the state's write lock is held
/// while one chunk's removals are made.
const CHUNK: usize = 1024;

/// The pause between two chunks, which leaves the disk and the CPU to the requests (etcd's
/// compaction pauses as long between its batches of 1,000 keys).
const PAUSE: Duration = Duration::from_millis(10);

/// Key, in the compactor's tree, of the revision up to which history is physically compacted.
const COMPACTED: &[u8] = b"compacted";

/// The background compaction of one store (see the module docs).
pub(crate) struct Compactor {
    /// Holds [`COMPACTED`].
    tree: sled::Tree,
    /// The revision up to which history is physically compacted; 0 for "not known to be".
    done: watch::Sender<i64>,
    /// Bumped whenever the MVCC tree is replaced wholesale, so that a pass scanning the old
    /// tree stops rather than remove what its scan found there.
    generation: AtomicU64,
    /// Wakes the worker; dropped (with the store) to stop it.
    wake: Mutex<Option<mpsc::Sender<()>>>,
}

impl Compactor {
    pub(crate) fn open(tree: sled::Tree) -> Result<Self, StoreError> {
        let done = match tree.get(COMPACTED)? {
            Some(bytes) => codec::decode("physically compacted revision", &bytes)?,
            None => 0,
        };
        Ok(Compactor {
            tree,
            done: watch::channel(done).0,
            generation: AtomicU64::new(0),
            wake: Mutex::new(None),
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

    /// A receiver of the physically compacted revision.
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.done.subscribe()
    }

    fn record_done(&self, revision: i64) -> Result<(), StoreError> {
        self.tree.insert(
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
    stage: Stage,
    /// The next key to scan from.
    cursor: Vec<u8>,
    /// `h enc(key)` of the key whose versions are being scanned.
    group: Vec<u8>,
    /// The latest version `<= target` of that key seen so far, which stays unless it is a
    /// delete.
    candidate: Option<Candidate>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    History,
    Events,
}

struct Candidate {
    tombstone: bool,
    /// Its history key.
    key: sled::IVec,
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
            stage: Stage::History,
            cursor: vec![HISTORY],
            group: Vec::new(),
            candidate: None,
        });
        tracing::debug!(revision = target, "physical compaction started");
        return Ok(true);
    };
    let (removals, finished) = match current.stage {
        Stage::History => current.scan_history(&core.tree)?,
        Stage::Events => current.scan_events(&core.tree)?,
    };
    {
        let _state = core.state.write();
        if compactor.generation.load(Ordering::SeqCst) != current.generation {
            // The tree this chunk was scanned from is gone; start over on the new one.
            *pass = None;
            return Ok(true);
        }
        for key in &removals {
            core.tree.remove(key)?;
        }
        if finished && current.stage == Stage::Events {
            compactor.record_done(current.target)?;
            tracing::debug!(revision = current.target, "physical compaction finished");
            *pass = None;
            return Ok(true);
        }
    }
    if finished {
        current.stage = Stage::Events;
        current.cursor = vec![EVENT];
    }
    Ok(true)
}

impl Pass {
    /// Scans up to [`CHUNK`] history records from the cursor: returns the versions to remove, in
    /// the order they must go, and whether the history is done.
    fn scan_history(&mut self, tree: &sled::Tree) -> Result<(Vec<sled::IVec>, bool), StoreError> {
        let mut removals = Vec::new();
        for (scanned, item) in tree.range(self.cursor.as_slice()..).enumerate() {
            let (k, v) = item?;
            if k.first() != Some(&HISTORY) {
                break;
            }
            if scanned == CHUNK {
                self.cursor = k.to_vec();
                return Ok((removals, false));
            }
            let (head, revision) = codec::split_history_key(&k)?;
            if head != self.group.as_slice() {
                settle(self.candidate.take(), &mut removals);
                self.group = head.to_vec();
            }
            if revision > self.target {
                // Newer than the compaction point: this key's survivor (if any) is decided.
                settle(self.candidate.take(), &mut removals);
                continue;
            }
            let next = Candidate {
                tombstone: codec::history_record_bytes(&v)?.is_none(),
                key: k,
            };
            if let Some(old) = self.candidate.replace(next) {
                removals.push(old.key); // superseded at or before the target
            }
        }
        settle(self.candidate.take(), &mut removals);
        Ok((removals, true))
    }

    /// Up to [`CHUNK`] event-index entries below the target, and whether that is all of them.
    fn scan_events(&mut self, tree: &sled::Tree) -> Result<(Vec<sled::IVec>, bool), StoreError> {
        let end = codec::event_key_start(self.target);
        let keys = tree
            .range(self.cursor.as_slice()..end.as_slice())
            .keys()
            .take(CHUNK + 1)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.len() > CHUNK {
            self.cursor = keys[CHUNK].to_vec();
            return Ok((keys[..CHUNK].to_vec(), false));
        }
        Ok((keys, true))
    }
}

/// The last version `<=` the target of a key stays, unless it is a delete.
fn settle(candidate: Option<Candidate>, removals: &mut Vec<sled::IVec>) {
    if let Some(c) = candidate.filter(|c| c.tombstone) {
        removals.push(c.key);
    }
}
