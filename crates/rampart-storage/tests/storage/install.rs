//! Crash points of a follower's snapshot install: whatever step a crash interrupts, the store
//! opens again with a log whose purged part the state machine or the snapshot file covers.
//!
//! openraft 0.9 queues the install on the state machine's worker and purges the log up to the
//! snapshot at once, without waiting for it; these tests play that sequence step by step.

use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::Snapshot;
use rampart_storage::TypeConfig;
use tempfile::TempDir;

use crate::common::{snapshot_bytes, snapshot_data, Node};

/// A leader with 20 applied entries and a snapshot of them.
async fn leader_snapshot(dir: &TempDir) -> Snapshot<TypeConfig> {
    let mut leader = Node::open(dir.path());
    for i in 0..20 {
        leader.put(&format!("k{i:02}"), "leader").await;
    }
    build(&mut leader).await
}

/// A follower that applied 5 entries of its own and has a snapshot of them.
async fn follower(dir: &TempDir) -> Node {
    let mut follower = Node::open(dir.path());
    for i in 0..5 {
        follower.put(&format!("old{i}"), "follower").await;
    }
    build(&mut follower).await;
    follower
}

/// Builds (records) a snapshot of `node` as it is, and exports it as openraft would to send it.
async fn build(node: &mut Node) -> Snapshot<TypeConfig> {
    node.snapshot().await
}

async fn install(node: &mut Node, snapshot: &mut Snapshot<TypeConfig>) {
    let bytes = snapshot_bytes(&mut snapshot.snapshot).await;
    node.sm
        .install_snapshot(&snapshot.meta, snapshot_data(&bytes))
        .await
        .expect("the snapshot installs");
}

fn index_of(id: Option<openraft::LogId<u64>>) -> u64 {
    id.map_or(0, |id| id.index)
}

#[tokio::test]
async fn the_purge_mark_waits_for_the_state_machine_to_hold_the_snapshot() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let mut snapshot = leader_snapshot(&leader_dir).await;
    let upto = snapshot
        .meta
        .last_log_id
        .expect("the snapshot has a last log id");

    tracing::info!("--- the purge openraft issues beside the install waits for the install");
    let node = follower(&follower_dir).await;
    let mut log = node.store.log_store();
    let purge = tokio::time::timeout(Duration::from_millis(300), log.purge(upto)).await;
    assert!(
        purge.is_err(),
        "the purge to {upto} completed while the state machine was at {:?}",
        node.mvcc.applied_log_id()
    );

    tracing::info!("--- a crash now: the log is not purged past the state machine");
    drop(log);
    drop(node);
    let node = Node::open(follower_dir.path());
    let state = node.store.log_store().get_log_state().await.unwrap();
    assert!(
        index_of(state.last_purged_log_id) <= index_of(node.mvcc.applied_log_id()),
        "purged {:?} past the state machine at {:?}",
        state.last_purged_log_id,
        node.mvcc.applied_log_id()
    );

    tracing::info!("--- install and purge side by side, as openraft runs them: both complete");
    let mut node = node;
    let mut log = node.store.log_store();
    let (_, purged) = tokio::join!(install(&mut node, &mut snapshot), log.purge(upto));
    purged.expect("the purge completes once the install has");
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(upto));
    assert_eq!(node.mvcc.applied_log_id(), Some(upto));
}

/// A crash after the state machine took the snapshot but before its meta was replaced leaves
/// the old meta; a snapshot that ends before the log starts is dropped at open, so that openraft
/// builds a new one instead of taking the log for longer than it is.
#[tokio::test]
async fn a_snapshot_file_older_than_the_log_is_dropped_at_open() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let mut snapshot = leader_snapshot(&leader_dir).await;
    let upto = snapshot
        .meta
        .last_log_id
        .expect("the snapshot has a last log id");
    let file = follower_dir.path().join("snap").join("current.meta");

    for purge_too in [false, true] {
        tracing::info!(
            purge_too,
            "--- install, then put the old file back as a crash would"
        );
        let dir = TempDir::new().unwrap();
        let mut node = follower(&dir).await;
        let old_file = std::fs::read(dir.path().join("snap").join("current.meta")).unwrap();
        install(&mut node, &mut snapshot).await;
        if purge_too {
            node.store.log_store().purge(upto).await.unwrap();
        }
        drop(node);
        std::fs::write(dir.path().join("snap").join("current.meta"), &old_file).unwrap();

        let mut node = Node::open(dir.path());
        assert_eq!(node.mvcc.applied_log_id(), Some(upto));
        let current = node.sm.get_current_snapshot().await.unwrap();
        assert!(
            current.is_none(),
            "a snapshot ending at {:?} is still served though the log starts after {upto}",
            current.map(|s| s.meta.last_log_id)
        );
    }
    assert!(!file.exists(), "the follower's own directory was not used");
}
