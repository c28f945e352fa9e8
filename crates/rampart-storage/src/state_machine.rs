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
use crate::requests::AppliedRequests;
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
    /// Whether the next `get_current_snapshot` is openraft's start asking for the meta only.
    start_pending: bool,
    /// Where the requests of each applied entry are counted.
    requests: Arc<AppliedRequests>,
}

impl StateMachine {
    pub(crate) fn new(
        core: Arc<MvccCore>,
        snapshots: Arc<SnapshotFiles>,
        in_use: Arc<()>,
        stats: Arc<StorageStats>,
        requests: Arc<AppliedRequests>,
    ) -> Self {
        StateMachine {
            core,
            snapshots,
            _in_use: in_use,
            stats,
            start_pending: false,
            requests,
        }
    }

    /// This handle, for `Raft::new`. openraft's start calls `get_current_snapshot` once, before
    /// anything else can, and keeps only the meta (`storage/helper.rs`, openraft 0.9.25): this
    /// handle answers that first call with the current meta and an empty file, so that a start
    /// does not export the whole state machine for nothing.
    pub fn for_raft_start(mut self) -> Self {
        self.start_pending = true;
        self
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

/// The error of a task on a blocking thread that ended without its result: `what`, or
/// `what_panicked` if it panicked.
fn ended(
    e: &tokio::task::JoinError,
    what: &'static str,
    what_panicked: &'static str,
) -> StoreError {
    StoreError::Stopped(if e.is_panic() { what_panicked } else { what })
}

/// `file` as openraft's snapshot data, described by `meta`.
fn snapshot_of(meta: Meta, file: std::fs::File) -> Snapshot<TypeConfig> {
    Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(file)),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// A snapshot is the state machine on disk (see [`crate::snapshot`]): building one flushes
    /// the tree and records the meta, so it costs one flush, not a copy of the store. The data
    /// openraft gets back is empty: it keeps only the meta of a build.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (core, snapshots) = (self.core.clone(), self.snapshots.clone());
        let built = tokio::task::spawn_blocking(move || {
            let meta = record(&core, &snapshots)?;
            Ok::<_, StoreError>((meta, snapshots.receiving_file()?))
        })
        .await
        .map_err(|e| {
            snapshot_error(
                None,
                ErrorVerb::Write,
                &ended(&e, "a snapshot build", "a snapshot build (it panicked)"),
            )
        })?;
        let (meta, empty) = built.map_err(|e| snapshot_error(None, ErrorVerb::Write, &e))?;
        Ok(snapshot_of(meta, empty))
    }
}

/// Makes the state machine durable as it is now and records that point as the current
/// snapshot; returns its meta.
fn record(core: &MvccCore, snapshots: &SnapshotFiles) -> Result<Meta, StoreError> {
    let (applied, membership) = {
        let state = core.read_state();
        (state.applied, state.membership.clone())
    };
    // openraft purges the log up to the snapshot once it has it, and after a restart the state
    // machine is read back from sled: so the tree must be durable up to `applied` before the
    // meta is handed over. Flushing after reading it covers that (and possibly more).
    core.disk().flush()?;
    core.flushed_through(applied.map_or(0, |id| id.index));
    let meta = meta_at(snapshots, applied, membership);
    snapshots.record(&meta)?;
    tracing::info!(snapshot = %meta, "recorded snapshot");
    Ok(meta)
}

/// The meta of a snapshot of the state after `applied`: the current snapshot's when nothing was
/// applied since it (the same snapshot, under the same id), else a new one.
fn meta_at(
    snapshots: &SnapshotFiles,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, PeerNode>,
) -> Meta {
    match snapshots.current() {
        Some(current) if current.last_log_id == applied => current,
        _ => fresh_meta(snapshots, applied, membership),
    }
}

/// The meta of a snapshot of the state after `applied`, under a new id.
fn fresh_meta(
    snapshots: &SnapshotFiles,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, PeerNode>,
) -> Meta {
    SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: snapshots.new_id(applied),
    }
}

/// Writes the state machine as it is now into a file with no name, for a follower; returns it,
/// open at its start, with its meta. The meta is the current snapshot's when nothing was applied
/// since it was recorded (and the compactor is done), so that openraft sees the snapshot it
/// knows; otherwise a new one, later than it (openraft accepts a shipped snapshot newer than the
/// one it chose).
/// `each_history_row` is [`MvccCore::export`]'s test seam.
pub(crate) fn export(
    core: &MvccCore,
    snapshots: &SnapshotFiles,
    each_history_row: impl FnMut(),
) -> Result<(Meta, std::fs::File), Box<StorageError<NodeId>>> {
    // A consistent copy: the state after `state.applied`, which becomes the snapshot's last
    // log id (see `MvccCore::export`).
    let writer = core
        .export(
            |state| {
                let membership = state.membership.clone();
                // One id, one content: while the compactor still removes rows, a second export
                // at the same log id could hold fewer, and a follower resuming a transfer of
                // that id would mix the two.
                let meta = if core.compaction_settled(state) {
                    meta_at(snapshots, state.applied, membership)
                } else {
                    fresh_meta(snapshots, state.applied, membership)
                };
                snapshots.export_file(meta)
            },
            |_, _| Ok(None),
            each_history_row,
        )
        .map_err(|e| snapshot_error(None, ErrorVerb::Read, &e))?;
    let meta = writer.meta().clone();
    let (file, largest_frame) = writer
        .finish()
        .map_err(|e| snapshot_error(Some(&meta), ErrorVerb::Write, &e))?;
    tracing::info!(
        snapshot = %meta,
        bytes = file.metadata().map_or(0, |m| m.len()),
        largest_frame,
        "exported snapshot"
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
        let entries: Vec<_> = entries.into_iter().collect();
        let quick = self.core.quick_to_apply(&entries);
        let apply_all = || {
            let mut responses = Vec::with_capacity(entries.len());
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
                self.requests.note(&entry);
                responses.push(resp);
            }
            Ok(responses)
        };
        // Applying waits for the store's write lock and writes to sled. Entries that touch a
        // few keys, with the lock free, take some microseconds a key and run right here: moving
        // this worker's other tasks to another thread for them would cost more than they do.
        // Anything else may take long (a delete of many keys, a reader holding the lock), so
        // the runtime moves its other tasks off this worker meanwhile.
        let result = if quick {
            apply_all()
        } else {
            blocking(apply_all)
        };
        result.map_err(|(log_id, e)| StorageIOError::apply(log_id, &e).into())
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
        // On disk: the state machine is exactly the snapshot's. Its meta is recorded next, and
        // only then may the log be purged up to it (`flushed_through` lets the purge go on).
        // (A crash before `installing.snap` is removed redoes the install at open from it.)
        self.snapshots
            .finish_install(meta)
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, &e))?;
        self.core
            .flushed_through(meta.last_log_id.map_or(0, |id| id.index));
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    /// The state machine as it is now, exported for a follower (see [`export`]); `None` before
    /// the first snapshot. The first call of a handle made by [`StateMachine::for_raft_start`]
    /// answers with the current meta and no data instead.
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(current) = self.snapshots.current() else {
            self.start_pending = false;
            return Ok(None);
        };
        if std::mem::take(&mut self.start_pending) {
            let empty = blocking(|| self.snapshots.receiving_file())
                .map_err(|e| snapshot_error(Some(&current), ErrorVerb::Read, &e))?;
            return Ok(Some(snapshot_of(current, empty)));
        }
        let (core, snapshots) = (self.core.clone(), self.snapshots.clone());
        let exported = tokio::task::spawn_blocking(move || export(&core, &snapshots, || {}))
            .await
            .map_err(|e| {
                snapshot_error(
                    None,
                    ErrorVerb::Read,
                    &ended(&e, "a snapshot export", "a snapshot export (it panicked)"),
                )
            })?;
        let (meta, file) = exported.map_err(|e| *e)?;
        Ok(Some(snapshot_of(meta, file)))
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

    /// An entry applied while a reader holds the state waits for the reader off the runtime's
    /// worker: with one worker, another task still runs meanwhile. (Applied on the worker
    /// itself, as a quick entry is when the state is free, it would stall every task until the
    /// reader let go.)
    #[test]
    fn an_apply_waiting_for_a_reader_leaves_the_runtime_its_worker() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let reading = core.state.read();

        let (started, has_started) = mpsc::channel();
        let applied = runtime.spawn({
            let mut sm = store.state_machine();
            async move {
                // Nothing between this send and the wait for the state lets another task run
                // on the worker.
                started.send(()).unwrap();
                sm.apply(vec![entry(1, put_cmd("a", "1"))])
                    .await
                    .map(|_| ())
            }
        });
        has_started.recv_timeout(DEADLINE).unwrap();
        let (ran, has_run) = mpsc::channel();
        runtime.spawn(async move { ran.send(()).unwrap() });
        has_run
            .recv_timeout(DEADLINE)
            .expect("another task ran while the apply waited for the reader");

        drop(reading);
        runtime
            .block_on(applied)
            .unwrap()
            .expect("the entry applies once the reader is done");
        assert_eq!(core.read_state().revision, 2);
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
                export(&core, &snapshots, || {
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
        let (meta, _) = export(&core, &store.snapshots_for_tests(), || {}).unwrap();
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
        let (meta, mut exported) = export(&core, &store.snapshots_for_tests(), || {}).unwrap();

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
            let mut staged =
                std::fs::File::create(other.path().join("snap").join("installing.snap")).unwrap();
            std::io::copy(&mut exported, &mut staged).unwrap();
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
