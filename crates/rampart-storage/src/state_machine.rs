//! openraft's state machine: applies entries to the MVCC store, builds and installs snapshots.

use std::io::{BufReader, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};

use crate::error::StoreError;
use crate::mvcc::{blocking, MvccCore};
use crate::snapshot::{self, Meta, SnapshotFiles, SnapshotReader};
use crate::stats::{StorageStats, SLOW_APPLY};
use crate::types::{CommandResponse, NodeId, PeerNode, TypeConfig};

/// The MVCC state machine, as openraft drives it. Writes go through [`StateMachine::apply`]
/// only; reads go through [`crate::Mvcc`].
pub struct StateMachine {
    core: Arc<MvccCore>,
    snapshots: Arc<SnapshotFiles>,
    /// Counts this handle as in use for [`crate::Store::released`].
    _in_use: Arc<()>,
    /// Where slow applies are counted.
    stats: Arc<StorageStats>,
}

impl StateMachine {
    pub(crate) fn new(
        core: Arc<MvccCore>,
        snapshots: Arc<SnapshotFiles>,
        in_use: Arc<()>,
        stats: Arc<StorageStats>,
    ) -> Self {
        StateMachine {
            core,
            snapshots,
            _in_use: in_use,
            stats,
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
        let built = tokio::task::spawn_blocking(move || build(&core, &snapshots, || {}))
            .await
            .map_err(|e| {
                let e = StoreError::Stopped(if e.is_panic() {
                    "a snapshot build (it panicked)"
                } else {
                    "a snapshot build"
                });
                snapshot_error(None, ErrorVerb::Write, &e)
            })?;
        let (meta, file) = built.map_err(|e| *e)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// Builds and saves a snapshot of `core` as it is now; returns it, open at its start. (The error
/// is boxed only to keep the result small on its way back from the blocking thread.)
/// `each_history_row` is [`MvccCore::export`]'s test seam.
pub(crate) fn build(
    core: &MvccCore,
    snapshots: &SnapshotFiles,
    each_history_row: impl FnMut(),
) -> Result<(Meta, std::fs::File), Box<StorageError<NodeId>>> {
    // A consistent copy, streamed to `current.snap.tmp`: the state after `state.applied`, which
    // becomes the snapshot's last log id (see `MvccCore::export`).
    let writer = core
        .export(
            |state| {
                snapshots.start_build(SnapshotMeta {
                    last_log_id: state.applied,
                    last_membership: state.membership.clone(),
                    snapshot_id: snapshots.new_id(state.applied),
                })
            },
            |_, _| Ok(None),
            each_history_row,
        )
        .map_err(|e| snapshot_error(None, ErrorVerb::Read, &e))?;
    let meta = writer.meta().clone();
    let write_err = |e: StoreError| snapshot_error(Some(&meta), ErrorVerb::Write, &e);
    let (file, largest_frame) = writer.finish().map_err(write_err)?;
    // openraft purges the log up to the snapshot once it has it, and after a restart the state
    // machine is read back from sled, not from the snapshot file: so the tree must be durable
    // up to `last_log_id` before the snapshot is handed over. Flushing after the export covers
    // that (and possibly more).
    core.disk().flush().map_err(write_err)?;
    core.flushed_through(meta.last_log_id.map_or(0, |id| id.index));
    snapshots.save_built(&meta).map_err(write_err)?;
    tracing::info!(
        snapshot = %meta,
        bytes = file.metadata().map_or(0, |m| m.len()),
        largest_frame,
        "built snapshot"
    );
    Ok((meta, file))
}

impl StateMachine {
    /// Checks the snapshot `received` while copying it to a file of this store, makes the copy
    /// durable, then rewrites the tree from it. Blocks for long.
    fn stage_and_replace(
        &self,
        meta: &Meta,
        mut received: std::fs::File,
    ) -> Result<(), StoreError> {
        let len = received
            .seek(SeekFrom::End(0))
            .and_then(|len| received.seek(SeekFrom::Start(0)).map(|_| len))
            .map_err(|e| StoreError::io("seek", "the received snapshot", e))?;
        let copy = self.snapshots.copy_for_install(received)?;
        // Nothing is touched until the whole snapshot has checked out: frames, checksums, the
        // bookkeeping its pairs hold against its meta.
        let checked = (|| {
            let mut reader = SnapshotReader::open(BufReader::with_capacity(256 * 1024, copy), len)?;
            if reader.meta() != meta {
                return Err(StoreError::corrupt(
                    "snapshot",
                    format!("its meta {} is not the announced {}", reader.meta(), meta),
                ));
            }
            let incoming = MvccCore::incoming_state(reader.pairs())?;
            if incoming.0.applied != meta.last_log_id
                || incoming.0.membership != meta.last_membership
            {
                return Err(StoreError::corrupt(
                    "snapshot",
                    "its state machine data does not match its meta (applied log id or \
                     membership)",
                ));
            }
            Ok((incoming, reader.into_input().into_inner()))
        })();
        let (incoming, copy) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                self.snapshots.discard_copy();
                return Err(e);
            }
        };
        let staged = self.snapshots.stage_install(copy)?;
        // On disk: `installing.snap`, checked and fsynced. From here a crash leaves the tree
        // anywhere between the old state and this one, and `Store::open` finishes the job.
        let mut pairs = snapshot::open_file(&staged)?;
        self.core.replace_from(incoming, || pairs.next_batch())
    }
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
                let began = Instant::now();
                let applying = self.stats.in_flight.begin("apply");
                let resp = self
                    .core
                    .apply_entry(&entry)
                    .map_err(|e| (entry.log_id, e))?;
                drop(applying);
                if began.elapsed() > SLOW_APPLY {
                    self.stats.slow_applies.inc();
                }
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

    /// A file with no name: openraft writes the chunks it receives into it, and
    /// [`StateMachine::install_snapshot`] reads it back; it is gone once dropped, whatever
    /// happens to the transfer.
    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = blocking(|| self.snapshots.receiving_file())
            .map_err(|e| snapshot_error(None, ErrorVerb::Write, &e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let received = snapshot.into_std().await;
        blocking(|| self.stage_and_replace(meta, received))
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Read, &e))?;
        if let Some(applied) = meta.last_log_id {
            self.core.applied_waiters.advance(applied.index);
        }
        self.core
            .disk()
            .flush_async()
            .await
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, &e))?;
        // On disk: the state machine is exactly the snapshot's. The file comes next, and only
        // then may the log be purged up to it (`flushed_through` lets the purge go on): so the
        // log is never purged past both the state machine and the snapshot file. (A crash
        // before the rename redoes the install at open from `installing.snap`.)
        self.snapshots
            .finish_install(meta)
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, &e))?;
        self.core
            .flushed_through(meta.last_log_id.map_or(0, |id| id.index));
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let current = self
            .snapshots
            .current()
            .map_err(|e| snapshot_error(None, ErrorVerb::Read, &e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use serde::Serialize;

    use super::*;
    use crate::codec::Pairs;
    use crate::test_support::{entry, put_cmd};
    use crate::types::{Command, DeleteRangeRequest};
    use crate::Store;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Every pair of the MVCC tree.
    fn tree(core: &MvccCore) -> Pairs {
        core.tree()
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    /// The commands of entries 1.., the same for every store of a test.
    fn command(index: u64) -> Command {
        match index % 7 {
            0 => Command::DeleteRange(DeleteRangeRequest {
                key: format!("k{}", index % 50).into(),
                ..Default::default()
            }),
            3 => Command::LeaseGrant {
                id: index as i64,
                ttl: 60,
            },
            _ => put_cmd(&format!("k{}", index % 50), &format!("v{index}")),
        }
    }

    /// Installs the snapshot in `file` on the state machine of `store`.
    fn install(store: &Store, meta: &Meta, file: std::fs::File) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let mut sm = store.state_machine();
                sm.install_snapshot(meta, Box::new(tokio::fs::File::from_std(file)))
                    .await
            })
            .expect("the snapshot installs");
    }

    /// The export holds the state's lock only while it copies what changes in place: applying
    /// goes on while it streams history, compactions included, and what it built is exactly
    /// the state as of its meta's last log id. (Before, the export held the read lock for the
    /// whole copy, and every apply waited for it.)
    #[test]
    fn writes_go_on_while_a_snapshot_streams_and_it_is_the_state_at_its_log_id() {
        let (dir, other, reference) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store = Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        for index in 1..=200 {
            core.apply_entry(&entry(index, command(index))).unwrap();
        }

        tracing::info!("--- a build paused in the middle of history");
        let (paused, is_paused) = mpsc::channel();
        let (go, resume) = mpsc::channel::<()>();
        let builder = std::thread::spawn({
            let (core, snapshots) = (core.clone(), store.snapshots_for_tests());
            move || {
                let mut rows = 0;
                build(&core, &snapshots, || {
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
            .recv_timeout(DEADLINE)
            .expect("the build reached history");

        tracing::info!("--- entries apply meanwhile, a compaction among them");
        let (applied, done) = mpsc::channel();
        let applier = std::thread::spawn({
            let core = core.clone();
            move || {
                for index in 201..=260 {
                    core.apply_entry(&entry(index, command(index))).unwrap();
                }
                core.apply_entry(&entry(261, Command::Compact { revision: 150 }))
                    .unwrap();
                applied.send(()).unwrap();
            }
        });
        done.recv_timeout(DEADLINE)
            .expect("applying waited for the paused snapshot build");
        applier.join().unwrap();
        go.send(()).unwrap();
        let (meta, file) = builder.join().unwrap().expect("the build succeeds");
        assert_eq!(meta.last_log_id.map(|id| id.index), Some(200));

        tracing::info!("--- installed, it is the state after entry 200 exactly");
        let installed = Store::open(other.path()).unwrap();
        install(&installed, &meta, file);
        let expected = Store::open(reference.path()).unwrap();
        let expected_core = expected.core_for_tests();
        for index in 1..=200 {
            expected_core
                .apply_entry(&entry(index, command(index)))
                .unwrap();
        }
        assert_eq!(tree(&installed.core_for_tests()), tree(&expected_core));
    }

    /// Format 1, the single envelope, as builds before format 2 wrote it.
    fn encode_format_1(meta: &Meta, pairs: &Pairs) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            meta: &'a Meta,
            pairs: &'a Pairs,
        }
        #[derive(Serialize)]
        struct Envelope {
            magic: [u8; 8],
            format: u32,
            crc32: u32,
            body: Vec<u8>,
        }
        let body = bincode::serialize(&Body { meta, pairs }).unwrap();
        bincode::serialize(&Envelope {
            magic: *b"RAMPSNAP",
            format: 1,
            crc32: crc32fast::hash(&body),
            body,
        })
        .unwrap()
    }

    /// A follower upgraded before its leader installs the format 1 snapshots the leader sends.
    #[test]
    fn a_format_1_snapshot_installs() {
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        for index in 1..=40 {
            core.apply_entry(&entry(index, command(index))).unwrap();
        }
        let (meta, _) = build(&core, &store.snapshots_for_tests(), || {}).unwrap();
        let mut old = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut old, &encode_format_1(&meta, &tree(&core))).unwrap();
        old.seek(SeekFrom::Start(0)).unwrap();

        let installed = Store::open(other.path()).unwrap();
        install(&installed, &meta, old);
        assert_eq!(tree(&installed.core_for_tests()), tree(&core));
        drop(installed);
        let reopened = Store::open(other.path()).unwrap();
        assert_eq!(
            reopened.snapshots_for_tests().current_last(),
            Some(meta.last_log_id)
        );
        assert_eq!(tree(&reopened.core_for_tests()), tree(&core));
    }

    /// A stop in the middle of rewriting the tree leaves `installing.snap`: the store opens
    /// with the install finished, whatever part of the tree had been rewritten.
    #[test]
    fn an_install_a_stop_interrupted_is_finished_at_open() {
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        for index in 1..=40 {
            core.apply_entry(&entry(index, command(index))).unwrap();
        }
        let (meta, _) = build(&core, &store.snapshots_for_tests(), || {}).unwrap();

        {
            let follower = Store::open(other.path()).unwrap();
            let follower_core = follower.core_for_tests();
            for index in 1..=5 {
                follower_core
                    .apply_entry(&entry(index, put_cmd("mine", "1")))
                    .unwrap();
            }
            // As a stop would leave it: the snapshot staged, the tree half rewritten (its
            // bookkeeping gone, some of the snapshot's pairs in).
            std::fs::copy(
                dir.path().join("snap").join("current.snap"),
                other.path().join("snap").join("installing.snap"),
            )
            .unwrap();
            follower_core
                .tree()
                .remove(crate::codec::META_FORMAT)
                .unwrap();
            for (k, v) in tree(&core).into_iter().take(10) {
                follower_core.tree().insert(k, v).unwrap();
            }
            follower.flush().unwrap();
        }
        let follower = Store::open(other.path()).unwrap();
        assert_eq!(tree(&follower.core_for_tests()), tree(&core));
        assert_eq!(follower.mvcc().applied_log_id(), meta.last_log_id);
        assert_eq!(
            follower.snapshots_for_tests().current_last(),
            Some(meta.last_log_id)
        );
        assert!(!other.path().join("snap").join("installing.snap").exists());
    }
}
