//! Opening a data directory and handing out its parts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::mvcc::{Mvcc, MvccCore};
use crate::snapshot::SnapshotFiles;
use crate::state_machine::StateMachine;

/// sled tree of the Raft log (see [`crate::log_store`]).
const LOG_TREE: &str = "raft_log";
/// sled tree of the MVCC state machine (see [`crate::codec`]).
const MVCC_TREE: &str = "mvcc";
/// sled tree of this node's own facts, which no snapshot carries.
const NODE_TREE: &str = "node";
const IDENTITY: &[u8] = b"identity";

/// Which cluster this data directory belongs to and who this member is in it; written once at
/// bootstrap so a restarted node cannot join the wrong cluster or under another id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// One node's data directory: the sled database in `dir/db` (Raft log, MVCC state machine, node
/// identity) and the current snapshot in `dir/snap`. Cloning gives another handle on the same
/// open database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    node: sled::Tree,
    log: LogStore,
    core: Arc<MvccCore>,
    snapshots: Arc<SnapshotFiles>,
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the data directory: sled db in `dir/db`, snapshot file(s) in
    /// `dir/snap`.
    ///
    /// Fails if the directory is already open (sled locks it), or if anything in it does not
    /// decode ([`StoreError::Corrupt`]/[`StoreError::Decode`] say what).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io("create data directory", dir, e))?;
        let db = sled::Config::new().path(dir.join("db")).open()?;
        let log = LogStore::new(db.clone(), db.open_tree(LOG_TREE)?);
        let core = Arc::new(MvccCore::open(db.clone(), db.open_tree(MVCC_TREE)?)?);
        let node = db.open_tree(NODE_TREE)?;
        let snapshots = Arc::new(SnapshotFiles::open(&dir.join("snap"))?);
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
            db,
            node,
            log,
            core,
            snapshots,
            dir: dir.to_path_buf(),
        })
    }

    /// The Raft log storage (and, through `get_log_reader`, its readers).
    pub fn log_store(&self) -> LogStore {
        self.log.clone()
    }

    /// The state machine, for openraft. There must be only one in use: it is the sole writer.
    pub fn state_machine(&self) -> StateMachine {
        StateMachine::new(self.core.clone(), self.snapshots.clone())
    }

    /// A read handle on the applied MVCC state.
    pub fn mvcc(&self) -> Mvcc {
        Mvcc::new(self.core.clone())
    }

    /// The identity recorded by [`Store::set_identity`], if any.
    pub fn identity(&self) -> Result<Option<ClusterIdentity>, StoreError> {
        match self.node.get(IDENTITY)? {
            Some(v) => Ok(Some(codec::decode("cluster identity", &v)?)),
            None => Ok(None),
        }
    }

    /// Records this node's identity; durable (flushed) before returning.
    pub fn set_identity(&self, id: &ClusterIdentity) -> Result<(), StoreError> {
        self.node
            .insert(IDENTITY, codec::encode("cluster identity", id)?)?;
        self.db.flush()?;
        // On disk: the identity, fsynced; a crash from here on restarts as this member.
        Ok(())
    }

    /// Bytes the database takes on disk (etcd's `dbSize`); 0 if sled cannot tell.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or_else(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read database size");
            0
        })
    }

    /// Flushes everything written so far to disk; the last step of an ordered shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        // On disk: every write made before this call, including applied entries not yet flushed.
        Ok(())
    }

    /// The shared MVCC core, for white-box tests of the layout.
    #[cfg(test)]
    pub(crate) fn core_for_tests(&self) -> Arc<MvccCore> {
        self.core.clone()
    }
}
