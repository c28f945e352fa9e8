//! The open sled database and its trees, as one replaceable set of handles.
//!
//! A data directory holds one current sled database (`dir/db`, or `dir/db.<n>` after a
//! defragment, named by the pointer file `dir/current-db`; see [`crate::defrag`]). Every part
//! of the store reaches its trees through [`Database`], never through a handle kept aside, so
//! that a defragment can swap a rewritten database in while the member runs.
//!
//! The rule that makes the swap lose no write: every write to a tree is made by a holder of a
//! lock that the swap holds exclusively, with handles taken under that same lock. The state
//! machine's trees (`mvcc`, `mvcc_redo`, `mvcc_compaction`) are written only under the MVCC
//! state's write lock (the applier, the compactor's chunks, a snapshot install); the Raft log's
//! marks and the node identity only while holding [`Database::for_write`]. The swap holds both,
//! so a write lands either in the old database before the last copy of it, or in the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::durability::{Disk, SledFiles};
use crate::error::StoreError;
use crate::stats::StorageStats;

/// sled tree of the Raft log (see [`crate::log_store`]).
pub(crate) const LOG_TREE: &str = "raft_log";
/// sled tree of the MVCC state machine (see [`crate::codec`]).
pub(crate) const MVCC_TREE: &str = "mvcc";
/// sled tree of the state machine's redo record (see [`crate::redo`]).
pub(crate) const REDO_TREE: &str = "mvcc_redo";
/// Progress of the background compaction (see `compactor`).
pub(crate) const COMPACTION_TREE: &str = "mvcc_compaction";
/// sled tree of this node's own facts, which no snapshot carries.
pub(crate) const NODE_TREE: &str = "node";

/// One open sled database: the handle, its files for flushing, and its trees.
pub(crate) struct Handles {
    pub db: sled::Db,
    /// The database's files; every durable point goes through its flush.
    pub disk: Arc<Disk>,
    /// The directory sled was opened at.
    pub dir: PathBuf,
    /// The size of the database's log segments, in bytes.
    pub segment_size: usize,
    pub mvcc: sled::Tree,
    pub redo: sled::Tree,
    pub compaction: sled::Tree,
    pub log: sled::Tree,
    pub node: sled::Tree,
}

impl Handles {
    /// Opens (creating if needed) the sled database at `dir` and its trees.
    /// `stats` records its flushes' durations.
    pub(crate) fn open(dir: &Path, stats: Arc<StorageStats>) -> Result<Handles, StoreError> {
        let files = SledFiles::new(dir);
        let (db, segment_size) = crate::store::open_db(&files)?;
        let disk = Arc::new(Disk::new(db.clone(), &files, stats)?);
        Ok(Handles {
            mvcc: db.open_tree(MVCC_TREE)?,
            redo: db.open_tree(REDO_TREE)?,
            compaction: db.open_tree(COMPACTION_TREE)?,
            log: db.open_tree(LOG_TREE)?,
            node: db.open_tree(NODE_TREE)?,
            disk,
            dir: dir.to_path_buf(),
            segment_size,
            db,
        })
    }

    /// Every tree, with its name, for copying a database whole.
    pub(crate) fn trees(&self) -> [(&'static str, &sled::Tree); 5] {
        [
            (MVCC_TREE, &self.mvcc),
            (REDO_TREE, &self.redo),
            (COMPACTION_TREE, &self.compaction),
            (LOG_TREE, &self.log),
            (NODE_TREE, &self.node),
        ]
    }
}

/// The current database of a data directory; see the module docs.
pub(crate) struct Database {
    current: RwLock<Arc<Handles>>,
}

impl Database {
    pub(crate) fn new(handles: Handles) -> Database {
        Database {
            current: RwLock::new(Arc::new(handles)),
        }
    }

    /// The current handles. A state machine tree taken from them is written only under the
    /// MVCC state's write lock, taken before this call (see the module docs).
    pub(crate) fn get(&self) -> Arc<Handles> {
        self.current.read().clone()
    }

    /// The current handles, for a write to the Raft log's marks or the node identity: the
    /// database is not swapped while the guard lives. Hold it only for the write itself (not
    /// across a flush or an await), and never take the MVCC state's lock while holding it.
    pub(crate) fn for_write(&self) -> RwLockReadGuard<'_, Arc<Handles>> {
        self.current.read()
    }

    /// Excludes every writer of the log's marks and the node identity, so the database can be
    /// replaced; see [`crate::defrag`].
    pub(crate) fn for_swap(&self) -> RwLockWriteGuard<'_, Arc<Handles>> {
        self.current.write()
    }
}
