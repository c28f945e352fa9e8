//! openraft's state machine: applies entries to the MVCC store, builds and installs snapshots.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};

use crate::error::StoreError;
use crate::mvcc::{blocking, MvccCore};
use crate::snapshot::{self, SnapshotBody, SnapshotFiles};
use crate::types::{CommandResponse, NodeId, PeerNode, TypeConfig};

/// The MVCC state machine, as openraft drives it. Writes go through [`StateMachine::apply`]
/// only; reads go through [`crate::Mvcc`].
pub struct StateMachine {
    core: Arc<MvccCore>,
    snapshots: Arc<SnapshotFiles>,
    /// Counts this handle as in use for [`crate::Store::released`].
    _in_use: Arc<()>,
}

impl StateMachine {
    pub(crate) fn new(core: Arc<MvccCore>, snapshots: Arc<SnapshotFiles>, in_use: Arc<()>) -> Self {
        StateMachine {
            core,
            snapshots,
            _in_use: in_use,
        }
    }
}

/// Builds a snapshot of the state machine as of the moment it runs.
pub struct SnapshotBuilder {
    core: Arc<MvccCore>,
    snapshots: Arc<SnapshotFiles>,
}

fn snapshot_error(
    meta: Option<&SnapshotMeta<NodeId, PeerNode>>,
    verb: ErrorVerb,
    e: &StoreError,
) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Reading the whole store, encoding and saving it take long: on a thread of their own,
        // so that the runtime's workers go on serving heartbeats and requests meanwhile.
        let (core, snapshots) = (self.core.clone(), self.snapshots.clone());
        let built = tokio::task::spawn_blocking(move || build(&core, &snapshots))
            .await
            .map_err(|e| {
                let e = StoreError::Stopped(if e.is_panic() {
                    "a snapshot build (it panicked)"
                } else {
                    "a snapshot build"
                });
                snapshot_error(None, ErrorVerb::Write, &e)
            })?;
        built.map_err(|e| *e)
    }
}

/// Builds and saves a snapshot of `core` as it is now. (The error is boxed only to keep the
/// result small on its way back from the blocking thread.)
fn build(
    core: &MvccCore,
    snapshots: &SnapshotFiles,
) -> Result<Snapshot<TypeConfig>, Box<StorageError<NodeId>>> {
    // A consistent copy: export holds the read lock, so the pairs are exactly the state after
    // `state.applied`, which becomes the snapshot's last log id.
    let exported = core
        .export()
        .map_err(|e| snapshot_error(None, ErrorVerb::Read, &e))?;
    let meta = SnapshotMeta {
        last_log_id: exported.applied,
        last_membership: exported.membership,
        snapshot_id: snapshots.new_id(exported.applied),
    };
    // openraft purges the log up to the snapshot once it has it, and after a restart the state
    // machine is read back from sled, not from the snapshot file: so the tree must be durable
    // up to `last_log_id` before the snapshot is handed over. Flushing after the export covers
    // that (and possibly more).
    core.disk
        .flush()
        .map_err(|e| snapshot_error(Some(&meta), ErrorVerb::Write, &e))?;
    core.flushed_through(meta.last_log_id.map_or(0, |id| id.index));
    let body = SnapshotBody {
        meta,
        pairs: exported.pairs,
    };
    let bytes = snapshot::encode(&body)
        .map_err(|e| snapshot_error(Some(&body.meta), ErrorVerb::Write, &e))?;
    snapshots
        .save(&body.meta, &bytes)
        .map_err(|e| snapshot_error(Some(&body.meta), ErrorVerb::Write, &e))?;
    tracing::info!(snapshot = %body.meta, bytes = bytes.len(), "built snapshot");
    Ok(Snapshot {
        meta: body.meta,
        snapshot: Box::new(Cursor::new(bytes)),
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>), StorageError<NodeId>>
    {
        let state = self.core.read_state();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Applying waits for the store's write lock and writes to sled: it may take long (a
        // snapshot being read, a delete of many keys), so the runtime moves its other tasks off
        // this worker meanwhile.
        blocking(|| {
            let mut responses = Vec::new();
            for entry in entries {
                // Each entry is applied (and visible to readers) whole, one at a time, in log
                // order.
                let resp = self
                    .core
                    .apply_entry(&entry)
                    .map_err(|e| (entry.log_id, e))?;
                self.core.applied_waiters.advance(entry.log_id.index);
                responses.push(resp);
            }
            Ok(responses)
        })
        .map_err(|(log_id, e)| StorageIOError::apply(log_id, &e).into())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            core: self.core.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let read_err = |e: StoreError| snapshot_error(Some(meta), ErrorVerb::Read, &e);
        // Nothing is touched until the whole snapshot has checked out: envelope, checksum, body.
        let body = snapshot::decode(&bytes).map_err(read_err)?;
        if body.meta != *meta {
            return Err(read_err(StoreError::corrupt(
                "snapshot",
                format!("its meta {} is not the announced {}", body.meta, meta),
            )));
        }
        blocking(|| {
            self.core.replace_all(&body.pairs, |incoming| {
                if incoming.applied != meta.last_log_id || incoming.membership != meta.last_membership {
                    return Err(StoreError::corrupt(
                        "snapshot",
                        "its state machine data does not match its meta (applied log id or membership)",
                    ));
                }
                Ok(())
            })
        })
        .map_err(read_err)?;
        if let Some(applied) = meta.last_log_id {
            self.core.applied_waiters.advance(applied.index);
        }
        self.core
            .disk
            .flush_async()
            .await
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, &e))?;
        // On disk: the state machine is exactly the snapshot's. The file comes next, and only
        // then may the log be purged up to it (`flushed_through` lets the purge go on): so the
        // log is never purged past both the state machine and the snapshot file. (A crash
        // between the two writes leaves the old file, older than the state machine; opening
        // the store drops a file that ends before the purged log, see `Store::open`.)
        self.snapshots
            .save(meta, &bytes)
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, &e))?;
        self.core
            .flushed_through(meta.last_log_id.map_or(0, |id| id.index));
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let loaded = self
            .snapshots
            .load()
            .map_err(|e| snapshot_error(None, ErrorVerb::Read, &e))?;
        Ok(loaded.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
