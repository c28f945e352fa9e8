//! What survives a restart, and snapshots moving state between stores.

use std::collections::BTreeSet;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{Entry, EntryPayload, Membership, StoredMembership, Vote};
use rampart_storage::{ClusterIdentity, Command, MemberAttributes, RangeRequest, TypeConfig};
use tempfile::TempDir;

use crate::common::{log_id, put, range, snapshot_bytes, snapshot_data, strs, Node};

/// Writes history, a compaction, a membership and a member: something of every kind.
async fn populate(node: &mut Node) {
    node.put("a", "1").await; // 2
    node.put("b", "1").await; // 3
    node.put("a", "2").await; // 4
    node.delete("b", "").await; // 5
    node.put("c", "1").await; // 6
    node.apply(Command::Compact { revision: 3 }).await;
    // Done removing what it supersedes: a snapshot exported from here on holds the same rows
    // each time, and keeps the id it was built with.
    node.mvcc.wait_compacted(3).await.unwrap();
    node.apply_payload(EntryPayload::Membership(Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        None,
    )))
    .await;
    node.apply(Command::Publish(MemberAttributes {
        id: 2,
        name: "two".into(),
        client_urls: vec!["http://two:2379".into()],
    }))
    .await;
    node.put("d", "1").await; // 7
}

/// Everything a client or openraft can observe of a state machine.
fn observe(node: &Node) -> Vec<String> {
    let m = &node.mvcc;
    let mut seen = vec![
        format!("revision {}", m.revision()),
        format!("compact {}", m.compact_revision()),
        format!("applied {:?}", m.applied_log_id()),
        format!("membership {:?}", m.membership()),
        format!("members {:?}", m.members()),
    ];
    for rev in 0..=m.revision() + 1 {
        seen.push(format!(
            "@{rev}: {:?}",
            node.range(&RangeRequest {
                revision: rev,
                ..range("\0", "\0")
            })
        ));
    }
    // Replayed with each event's previous version, which the key index rebuilt at open finds.
    seen.push(format!(
        "events {:?}",
        m.events(m.compact_revision(), i64::MAX, b"\0", b"\0", 0)
    ));
    seen
}

#[tokio::test]
async fn state_machine_survives_restart() {
    let dir = TempDir::new().unwrap();
    let before = {
        let mut node = Node::open(dir.path());
        populate(&mut node).await;
        node.store.flush().unwrap();
        observe(&node)
    };
    let node = Node::open(dir.path());
    assert_eq!(observe(&node), before);
    assert_eq!(node.mvcc.revision(), 7);
    assert_eq!(node.mvcc.compact_revision(), 3);
    assert_eq!(node.mvcc.applied_log_id(), Some(log_id(9)));
    assert_eq!(node.dump_at(4).unwrap(), strs(&["a=2", "b=1"]));
    assert_eq!(
        node.mvcc.membership(),
        StoredMembership::new(
            Some(log_id(7)),
            Membership::new(vec![BTreeSet::from([1, 2, 3])], None)
        )
    );
    assert_eq!(node.mvcc.members().len(), 1);

    // The rebuilt index knows each live key's create revision and version.
    let mut node = node;
    node.put("a", "3").await; // 8
    let a = node.range(&range("a", "")).unwrap().kvs;
    assert_eq!(
        (a[0].create_revision, a[0].mod_revision, a[0].version),
        (2, 8, 3)
    );
}

#[tokio::test]
async fn log_vote_committed_and_identity_survive_restart() {
    let dir = TempDir::new().unwrap();
    {
        let store = rampart_storage::Store::open(dir.path()).unwrap();
        assert_eq!(store.identity().unwrap(), None);
        store
            .set_identity(&ClusterIdentity {
                cluster_id: 7,
                member_id: 9,
            })
            .unwrap();
        // The log alone: nothing applies these entries, so its purge must not wait for the
        // state machine.
        let mut log = store.log_store_unguarded();
        let entries = (1..=5).map(|i| Entry::<TypeConfig> {
            log_id: log_id(i),
            payload: EntryPayload::Normal(Command::Put(put("k", &i.to_string()))),
        });
        log.blocking_append(entries).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(4))).await.unwrap();
        log.purge(log_id(2)).await.unwrap();
        assert!(store.size_on_disk() > 0);
        store.flush().unwrap();
    }
    let store = rampart_storage::Store::open(dir.path()).unwrap();
    assert_eq!(
        store.identity().unwrap(),
        Some(ClusterIdentity {
            cluster_id: 7,
            member_id: 9
        })
    );
    let mut log = store.log_store();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(log_id(2)), Some(log_id(5)))
    );
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(4)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(
        entries[0].payload,
        EntryPayload::Normal(Command::Put(put("k", "3")))
    );

    tracing::info!("--- truncation is durable too");
    log.truncate(log_id(4)).await.unwrap();
    drop(log);
    drop(store);
    let store = rampart_storage::Store::open(dir.path()).unwrap();
    let state = store.log_store().get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(3)));
}

#[tokio::test]
async fn snapshot_moves_the_whole_state() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let mut leader = Node::open(leader_dir.path());
    populate(&mut leader).await;

    let mut follower = Node::open(follower_dir.path());
    follower.put("only-on-follower", "x").await;
    follower.put("a", "stale").await;

    tracing::info!("--- build on the leader");
    let snap = leader.build().await;
    assert_eq!(snap.meta.last_log_id, leader.mvcc.applied_log_id());
    assert_eq!(snap.meta.last_membership, leader.mvcc.membership());
    let current = leader
        .sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a current snapshot");
    assert_eq!(current.meta, snap.meta);

    tracing::info!("--- install on the follower: it now observes exactly what the leader does");
    let mut receiving = follower.sm.begin_receiving_snapshot().await.unwrap();
    assert!(snapshot_bytes(&mut receiving).await.is_empty());
    *receiving = *current.snapshot;
    follower
        .sm
        .install_snapshot(&current.meta, receiving)
        .await
        .unwrap();
    assert_eq!(observe(&follower), observe(&leader));
    assert_eq!(
        follower.get("only-on-follower"),
        None,
        "the old state is gone entirely"
    );
    // An install sets the compactor going again over what it brought.
    follower.mvcc.wait_compacted(3).await.unwrap();
    let installed = follower
        .sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("installed snapshot kept");
    assert_eq!(installed.meta, snap.meta);

    tracing::info!("--- the installed state and the snapshot survive a restart");
    let expected = observe(&follower);
    drop(follower);
    let mut follower = Node::open(follower_dir.path());
    assert_eq!(observe(&follower), expected);
    let again = follower
        .sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot after restart");
    assert_eq!(again.meta, snap.meta);

    tracing::info!("--- and the follower carries on from there, as the leader does");
    assert_eq!(follower.put("e", "1").await, leader.put("e", "1").await);
    assert_eq!(observe(&follower), observe(&leader));
}

#[tokio::test]
async fn corrupt_snapshots_are_refused() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let mut leader = Node::open(leader_dir.path());
    populate(&mut leader).await;
    let mut snap = leader.snapshot().await;
    let bytes = snapshot_bytes(&mut snap.snapshot).await;

    let mut follower = Node::open(follower_dir.path());
    follower.put("mine", "1").await;
    let before = observe(&follower);

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() - 10);
    let mut wrong_meta = snap.meta.clone();
    wrong_meta.snapshot_id = "someone-else".into();

    let attempts = [
        ("a flipped byte", snap.meta.clone(), flipped),
        ("a truncated file", snap.meta.clone(), truncated),
        ("garbage", snap.meta.clone(), b"not a snapshot".to_vec()),
        ("nothing", snap.meta.clone(), Vec::new()),
        ("meta not matching the data", wrong_meta, bytes.clone()),
    ];
    for (what, meta, data) in attempts {
        let res = follower
            .sm
            .install_snapshot(&meta, snapshot_data(&data))
            .await;
        assert!(res.is_err(), "{what} must be refused");
        assert_eq!(
            observe(&follower),
            before,
            "{what} must leave the state untouched"
        );
        assert!(
            follower.sm.get_current_snapshot().await.unwrap().is_none(),
            "{what} must not be kept"
        );
    }

    tracing::info!("--- the intact bytes still install");
    follower
        .sm
        .install_snapshot(&snap.meta, snapshot_data(&bytes))
        .await
        .unwrap();
    assert_eq!(observe(&follower), observe(&leader));
}

/// The state machine is in sled; the snapshot file is only its meta. A damaged file is set
/// aside and the store opens, with the same state.
#[tokio::test]
async fn a_corrupt_snapshot_file_is_set_aside_at_open() {
    let dir = TempDir::new().unwrap();
    let before = {
        let mut node = Node::open(dir.path());
        populate(&mut node).await;
        node.build().await;
        observe(&node)
    };
    let path = dir.path().join("snap").join("current.meta");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();

    let mut node = Node::open(dir.path());
    assert_eq!(observe(&node), before, "the state machine is untouched");
    assert!(node.sm.get_current_snapshot().await.unwrap().is_none());
    let aside = dir.path().join("snap").join("current.meta.corrupt");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the damaged file is kept aside"
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused_with_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let _first = rampart_storage::Store::open(dir.path()).unwrap();
    let error = match rampart_storage::Store::open(dir.path()) {
        Ok(_) => panic!("two stores opened one data directory"),
        Err(e) => e,
    };
    assert!(
        matches!(error, rampart_storage::StoreError::Locked { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("another process"), "{error}");
}

/// A snapshot is the state machine's durable point, not a copy of it: building one writes its
/// meta only, however large the state; the bytes a follower needs are made when asked for, from
/// the state as it is then.
#[tokio::test]
async fn a_snapshot_build_writes_no_copy_of_the_state_and_sends_the_state_now() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    let value = "v".repeat(4096);
    for i in 0..256 {
        node.put(&format!("k{i:03}"), &value).await;
    }
    let built = node.build().await;
    assert_eq!(built.meta.last_log_id, node.mvcc.applied_log_id());
    let snap_dir: u64 = std::fs::read_dir(dir.path().join("snap"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        snap_dir < 4096,
        "{snap_dir} bytes in snap/ for 1 MiB of values"
    );

    tracing::info!("--- nothing applied since: the snapshot sent is the one built");
    let mut sent = node.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(sent.meta, built.meta);
    assert!(snapshot_bytes(&mut sent.snapshot).await.len() > 256 * 4096);

    tracing::info!("--- applied since: a later snapshot, of the state now");
    node.put("later", "1").await;
    let mut sent = node.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(sent.meta.last_log_id, node.mvcc.applied_log_id());
    assert_ne!(sent.meta.snapshot_id, built.meta.snapshot_id);
    let follower_dir = TempDir::new().unwrap();
    let mut follower = Node::open(follower_dir.path());
    let bytes = snapshot_bytes(&mut sent.snapshot).await;
    follower
        .sm
        .install_snapshot(&sent.meta, snapshot_data(&bytes))
        .await
        .unwrap();
    assert_eq!(observe(&follower), observe(&node));
}

/// openraft's start asks for the current snapshot for its meta only: the handle made for it
/// answers that first call without exporting the store, and every later call with the data.
#[tokio::test]
async fn the_handle_for_a_raft_start_answers_its_first_call_with_the_meta_only() {
    let dir = TempDir::new().unwrap();
    let built = {
        let mut node = Node::open(dir.path());
        populate(&mut node).await;
        node.build().await
    };
    let store = rampart_storage::Store::open(dir.path()).unwrap();
    let mut sm = store.state_machine().for_raft_start();
    let mut first = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(first.meta, built.meta);
    assert!(snapshot_bytes(&mut first.snapshot).await.is_empty());
    let mut second = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(second.meta, built.meta);
    assert!(!snapshot_bytes(&mut second.snapshot).await.is_empty());
}

/// An earlier build kept a whole copy of the state machine as `snap/current.snap`; opened by
/// this build, the directory keeps its meta and drops the copy.
#[tokio::test]
async fn an_earlier_builds_snapshot_file_becomes_its_meta() {
    let dir = TempDir::new().unwrap();
    let (before, old_meta) = {
        let mut node = Node::open(dir.path());
        populate(&mut node).await;
        let mut sent = node.snapshot().await;
        // As the earlier build left it: the whole snapshot, and no meta file.
        let bytes = snapshot_bytes(&mut sent.snapshot).await;
        std::fs::write(dir.path().join("snap").join("current.snap"), bytes).unwrap();
        std::fs::remove_file(dir.path().join("snap").join("current.meta")).unwrap();
        (observe(&node), sent.meta)
    };
    let mut node = Node::open(dir.path());
    assert_eq!(observe(&node), before);
    assert!(!dir.path().join("snap").join("current.snap").exists());
    assert!(dir.path().join("snap").join("current.meta").exists());
    let current = node.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, old_meta);
}
