//! Leases: grant, revoke (deleting the attached keys), checkpoints, attaching keys by put, and
//! the feed of grants and revokes.

use rampart_storage::{
    ApplyError, Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    Lease, LeaseChange, LeaseCheckpoint, LeaseFeed, PutRequest, RequestOp, TxnRequest, WatchFeed,
};
use tempfile::TempDir;

use crate::common::{events_str, put, strs, Node};

fn lease(id: i64, ttl: i64, remaining_ttl: Option<i64>) -> Lease {
    Lease {
        id,
        ttl,
        remaining_ttl,
    }
}

#[tokio::test]
async fn grant_refuses_a_duplicate_and_makes_no_revision() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("a", "1").await;

    tracing::info!("--- grant");
    let resp = node.apply(Command::LeaseGrant { id: 7, ttl: 10 }).await;
    assert_eq!(
        resp.result,
        Ok(CommandResult::LeaseGrant { id: 7, ttl: 10 })
    );
    assert_eq!(resp.revision, 2, "a grant makes no revision");
    assert_eq!(node.mvcc.lease(7).unwrap(), Some(lease(7, 10, None)));

    tracing::info!("--- the same id again fails and changes nothing");
    let resp = node.apply(Command::LeaseGrant { id: 7, ttl: 20 }).await;
    assert_eq!(resp.result, Err(ApplyError::LeaseExists));
    assert_eq!(node.mvcc.lease(7).unwrap(), Some(lease(7, 10, None)));

    tracing::info!("--- leases list by id, negative ids included; unknown ids read as nothing");
    node.grant(3, 5).await;
    node.grant(-2, 60).await;
    assert_eq!(
        node.mvcc.leases().unwrap(),
        vec![lease(-2, 60, None), lease(3, 5, None), lease(7, 10, None)]
    );
    assert_eq!(node.mvcc.lease(99).unwrap(), None);
    assert!(node.lease_keys(99).is_empty());
    assert_eq!(node.mvcc.revision(), 2);
}

#[tokio::test]
async fn revoke_deletes_the_attached_keys_in_one_revision() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.grant(1, 10).await;
    node.grant(2, 10).await;
    node.put_lease("c", "3", 1).await; // 2
    node.put_lease("a", "1", 1).await; // 3
    node.put_lease("b", "2", 1).await; // 4
    node.put("d", "4").await; // 5
    node.put_lease("e", "5", 2).await; // 6
    assert_eq!(node.lease_keys(1), strs(&["a", "b", "c"]));
    let (mut feed, _prev_kv) = node.mvcc.subscribe_with_prev_kv(b"\0", b"\0");

    tracing::info!("--- revoke lease 1");
    let resp = node.apply(Command::LeaseRevoke { id: 1 }).await;
    assert_eq!(resp.result, Ok(CommandResult::LeaseRevoke));
    assert_eq!(resp.revision, 7, "one revision for all three keys");
    assert_eq!(node.dump_at(0).unwrap(), strs(&["d=4", "e=5"]));
    assert_eq!(node.mvcc.lease(1).unwrap(), None);
    assert!(node.lease_keys(1).is_empty());
    assert_eq!(node.lease_keys(2), strs(&["e"]), "other leases untouched");

    tracing::info!("--- its events: DELETEs in key order, in history and on the feed");
    let (replayed, last) = node.mvcc.events(7, 7, b"\0", b"\0", 0).unwrap();
    assert_eq!(last, 7);
    assert_eq!(
        events_str(&replayed),
        strs(&["@7: DELETE a (was a=1), DELETE b (was b=2), DELETE c (was c=3)"])
    );
    match feed.try_recv() {
        Ok(WatchFeed::Revision(live)) => assert_eq!(live.events().as_deref(), Some(&replayed[0])),
        other => panic!("expected the revoke's events, got {other:?}"),
    }

    tracing::info!("--- revoking it again, or an unknown lease, fails and changes nothing");
    for id in [1, 42] {
        let resp = node.apply(Command::LeaseRevoke { id }).await;
        assert_eq!(resp.result, Err(ApplyError::LeaseNotFound), "revoke {id}");
        assert_eq!(resp.revision, 7);
    }

    tracing::info!("--- a lease without keys goes without a revision");
    node.grant(3, 10).await;
    let resp = node.apply(Command::LeaseRevoke { id: 3 }).await;
    assert_eq!(
        (resp.revision, resp.result),
        (7, Ok(CommandResult::LeaseRevoke))
    );
    assert_eq!(node.mvcc.lease(3).unwrap(), None);
    assert!(feed.try_recv().is_err(), "no revision, no feed message");
}

#[tokio::test]
async fn put_needs_an_existing_lease() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("k", "v").await;

    let resp = node.put_lease("k", "x", 42).await;
    assert_eq!(resp.result, Err(ApplyError::LeaseNotFound));
    assert_eq!(resp.revision, 2);
    assert_eq!(node.dump_at(0).unwrap(), strs(&["k=v"]));
    assert!(node.lease_keys(42).is_empty());

    node.grant(42, 10).await;
    let resp = node.put_lease("k", "x", 42).await;
    assert!(resp.result.is_ok(), "{resp:?}");
    assert_eq!(node.get("k").unwrap().lease, 42);
    assert_eq!(node.lease_keys(42), strs(&["k"]));
}

#[tokio::test]
async fn puts_attach_move_keep_and_detach() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.grant(1, 10).await;
    node.grant(2, 10).await;

    tracing::info!("--- attach to 1, then move to 2");
    node.put_lease("k", "v1", 1).await;
    assert_eq!(node.lease_keys(1), strs(&["k"]));
    node.put_lease("k", "v2", 2).await;
    assert!(node.lease_keys(1).is_empty(), "moved away from 1");
    assert_eq!(node.lease_keys(2), strs(&["k"]));
    assert_eq!(node.get("k").unwrap().lease, 2);

    tracing::info!("--- ignore_lease keeps lease 2 and its attachment");
    let resp = node
        .apply(Command::Put(PutRequest {
            ignore_lease: true,
            ..put("k", "v3")
        }))
        .await;
    assert!(resp.result.is_ok(), "{resp:?}");
    assert_eq!(node.get("k").unwrap().lease, 2);
    assert_eq!(node.lease_keys(2), strs(&["k"]));

    tracing::info!("--- a put with lease 0 detaches");
    node.put("k", "v4").await;
    assert_eq!(node.get("k").unwrap().lease, 0);
    assert!(node.lease_keys(2).is_empty());

    tracing::info!("--- so revoking 2 leaves k alone, without a revision");
    let before = node.mvcc.revision();
    let resp = node.apply(Command::LeaseRevoke { id: 2 }).await;
    assert_eq!(
        (resp.revision, resp.result),
        (before, Ok(CommandResult::LeaseRevoke))
    );
    assert_eq!(node.dump_at(0).unwrap(), strs(&["k=v4"]));
}

#[tokio::test]
async fn deletes_detach() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.grant(1, 10).await;
    for k in ["a", "b", "c"] {
        node.put_lease(k, k, 1).await;
    }

    node.delete("a", "").await;
    assert_eq!(node.lease_keys(1), strs(&["b", "c"]));

    let txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: "b".into(),
            range_end: "\0".into(),
            prev_kv: false,
        })],
        failure: vec![],
    };
    assert!(node.apply(Command::Txn(txn)).await.result.is_ok());
    assert!(node.lease_keys(1).is_empty());

    tracing::info!("--- re-creating a deleted key does not re-attach it");
    node.put("a", "again").await;
    assert!(node.lease_keys(1).is_empty());
    let before = node.mvcc.revision();
    node.apply(Command::LeaseRevoke { id: 1 }).await;
    assert_eq!(node.mvcc.revision(), before, "nothing left to delete");
    assert_eq!(node.dump_at(0).unwrap(), strs(&["a=again"]));
}

#[tokio::test]
async fn checkpoints_clamp_to_the_ttl_and_skip_unknown_leases() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("a", "1").await;
    node.grant(1, 10).await;
    node.grant(2, 5).await;

    let resp = node
        .apply(Command::LeaseCheckpoint {
            checkpoints: vec![
                LeaseCheckpoint {
                    id: 1,
                    remaining_ttl: 7,
                },
                LeaseCheckpoint {
                    id: 2,
                    remaining_ttl: 50,
                },
                LeaseCheckpoint {
                    id: 99,
                    remaining_ttl: 3,
                },
            ],
        })
        .await;
    assert_eq!(
        (resp.revision, resp.result),
        (2, Ok(CommandResult::LeaseCheckpoint))
    );
    assert_eq!(
        node.mvcc.leases().unwrap(),
        vec![lease(1, 10, Some(7)), lease(2, 5, Some(5))],
        "clamped to the granted TTL; 99 not created"
    );

    tracing::info!("--- a later checkpoint replaces the remaining TTL");
    node.apply(Command::LeaseCheckpoint {
        checkpoints: vec![LeaseCheckpoint {
            id: 1,
            remaining_ttl: 9,
        }],
    })
    .await;
    assert_eq!(node.mvcc.lease(1).unwrap(), Some(lease(1, 10, Some(9))));
}

#[tokio::test]
async fn txn_puts_with_leases() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.grant(5, 10).await;

    let put_lease = |k: &str, lease: i64| RequestOp::Put(PutRequest { lease, ..put(k, k) });
    let txn = TxnRequest {
        compare: vec![],
        success: vec![put_lease("a", 5), put_lease("b", 5)],
        failure: vec![],
    };
    let resp = node.apply(Command::Txn(txn)).await;
    assert_eq!(resp.revision, 2);
    assert_eq!(node.lease_keys(5), strs(&["a", "b"]));

    tracing::info!("--- a LEASE compare sees the attachment");
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Lease(5),
            key: "a".into(),
            range_end: "c".into(),
        }],
        success: vec![put_lease("c", 0)],
        failure: vec![],
    };
    let resp = node.apply(Command::Txn(txn)).await;
    assert!(matches!(resp.result, Ok(CommandResult::Txn(ref t)) if t.succeeded));

    tracing::info!("--- an unknown lease anywhere in the chosen branch fails the whole txn");
    let txn = TxnRequest {
        compare: vec![],
        success: vec![put_lease("d", 5), put_lease("e", 6)],
        failure: vec![],
    };
    let resp = node.apply(Command::Txn(txn)).await;
    assert_eq!(resp.result, Err(ApplyError::LeaseNotFound));
    assert_eq!(resp.revision, 3);
    assert_eq!(node.lease_keys(5), strs(&["a", "b"]));
    assert_eq!(node.get("d"), None);
}

#[tokio::test]
async fn leases_survive_restart_and_travel_in_snapshots() {
    let dir = TempDir::new().unwrap();
    let expected = {
        let mut node = Node::open(dir.path());
        node.grant(1, 10).await;
        node.grant(2, 20).await;
        node.put_lease("a", "1", 1).await;
        node.put_lease("b", "2", 2).await;
        node.apply(Command::LeaseCheckpoint {
            checkpoints: vec![LeaseCheckpoint {
                id: 2,
                remaining_ttl: 15,
            }],
        })
        .await;
        node.store.flush().unwrap();
        (
            node.mvcc.leases().unwrap(),
            node.lease_keys(1),
            node.lease_keys(2),
        )
    };

    tracing::info!("--- after a restart");
    let mut leader = Node::open(dir.path());
    let seen = (
        leader.mvcc.leases().unwrap(),
        leader.lease_keys(1),
        leader.lease_keys(2),
    );
    assert_eq!(seen, expected);
    assert_eq!(expected.0[1], lease(2, 20, Some(15)));

    tracing::info!("--- installed on a follower that had leases of its own");
    let follower_dir = TempDir::new().unwrap();
    let mut follower = Node::open(follower_dir.path());
    follower.grant(9, 1).await;
    follower.put_lease("z", "9", 9).await;
    let snapshot = leader.snapshot().await;
    follower.install(snapshot).await;
    follower.next_index = leader.next_index; // carry on with the leader's log
    let seen = (
        follower.mvcc.leases().unwrap(),
        follower.lease_keys(1),
        follower.lease_keys(2),
    );
    assert_eq!(seen, expected);
    assert!(follower.lease_keys(9).is_empty(), "the old state is gone");

    tracing::info!("--- and a revoke there deletes the attached key, as on the leader");
    for node in [&mut leader, &mut follower] {
        let resp = node.apply(Command::LeaseRevoke { id: 1 }).await;
        assert_eq!(resp.result, Ok(CommandResult::LeaseRevoke));
        assert_eq!(node.dump_at(0).unwrap(), strs(&["b=2"]));
    }
    assert_eq!(
        events_str(&leader.all_events()),
        events_str(&follower.all_events())
    );
}

/// Everything a lease feed has to give now.
fn drain(feed: &mut LeaseFeed) -> Vec<LeaseChange> {
    std::iter::from_fn(|| feed.try_next().expect("the feed is open")).collect()
}

#[tokio::test]
async fn a_lease_feed_carries_every_grant_and_revoke_after_its_list_in_apply_order() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.grant(1, 10).await;
    node.grant(2, 20).await;

    tracing::info!("--- the list holds the leases so far; the feed starts after them");
    let (leases, mut feed) = node.mvcc.follow_leases().unwrap();
    assert_eq!(leases, vec![lease(1, 10, None), lease(2, 20, None)]);
    assert_eq!(drain(&mut feed), []);

    tracing::info!("--- grants and revokes, alone and in a batch; failures and other writes not");
    node.grant(3, 30).await;
    let refused = node.apply(Command::LeaseGrant { id: 3, ttl: 5 }).await;
    assert_eq!(refused.result, Err(ApplyError::LeaseExists));
    node.put_lease("a", "1", 2).await;
    node.apply(Command::LeaseRevoke { id: 1 }).await;
    let unknown = node.apply(Command::LeaseRevoke { id: 99 }).await;
    assert_eq!(unknown.result, Err(ApplyError::LeaseNotFound));
    node.apply(Command::LeaseCheckpoint {
        checkpoints: vec![LeaseCheckpoint {
            id: 2,
            remaining_ttl: 7,
        }],
    })
    .await;
    node.apply(Command::Batch(vec![
        Command::LeaseGrant { id: 4, ttl: 40 },
        Command::LeaseRevoke { id: 3 },
        Command::Put(put("b", "1")),
        Command::LeaseRevoke { id: 3 },
        Command::LeaseGrant { id: 3, ttl: 33 },
    ]))
    .await;
    assert_eq!(
        drain(&mut feed),
        [
            LeaseChange::Granted { id: 3, ttl: 30 },
            LeaseChange::Revoked { id: 1 },
            LeaseChange::Granted { id: 4, ttl: 40 },
            LeaseChange::Revoked { id: 3 },
            LeaseChange::Granted { id: 3, ttl: 33 },
        ]
    );

    tracing::info!("--- a second feed starts where its own list ends; a dropped one is forgotten");
    let (leases, mut second) = node.mvcc.follow_leases().unwrap();
    let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
    assert_eq!(ids, [2, 3, 4]);
    drop(feed);
    node.apply(Command::LeaseRevoke { id: 4 }).await;
    assert_eq!(drain(&mut second), [LeaseChange::Revoked { id: 4 }]);

    tracing::info!("--- a snapshot installed over the state ends the feed, after what it held");
    let other_dir = TempDir::new().unwrap();
    let mut other = Node::open(other_dir.path());
    other.grant(8, 80).await;
    let snapshot = other.snapshot().await;
    node.grant(5, 50).await;
    node.install(snapshot).await;
    assert_eq!(
        second.try_next().unwrap(),
        Some(LeaseChange::Granted { id: 5, ttl: 50 })
    );
    assert!(
        second.try_next().is_err(),
        "the feed outlived the state it followed"
    );
    let (leases, mut third) = node.mvcc.follow_leases().unwrap();
    assert_eq!(leases, vec![lease(8, 80, None)]);
    assert_eq!(drain(&mut third), []);
}
