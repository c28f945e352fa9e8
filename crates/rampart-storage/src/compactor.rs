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

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::codec;
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
    let mut state = core.state.write();
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
    for version in &removed {
        core.tree.remove(version.history_key())?;
    }
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
