//! Revisions, versions, history, compaction, Put and DeleteRange options, non-KV entries.

use std::collections::BTreeSet;

use openraft::{EntryPayload, Membership, StoredMembership};
use rampart_storage::{
    ApplyError, Command, CommandResult, DeleteRangeRequest, KeyValue, MemberAttributes, PutRequest,
    PutResponse,
};
use tempfile::TempDir;

use crate::common::{log_id, put, range, strs, Node, RangeExt};

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        value: value.into(),
        lease: 0,
    }
}

#[tokio::test]
async fn empty_store_is_at_revision_one() {
    let dir = TempDir::new().unwrap();
    let node = Node::open(dir.path());
    assert_eq!(node.mvcc.revision(), 1);
    assert_eq!(node.mvcc.compact_revision(), 0);
    assert_eq!(node.mvcc.applied_log_id(), None);
    let all = node.range(&range("\0", "\0")).unwrap();
    assert_eq!((all.kvs.len(), all.count, all.more), (0, 0, false));
    assert_eq!(node.get_at("a", 1), Ok(None), "revision 1 is readable");
    assert_eq!(node.get_at("a", 2), Err(ApplyError::FutureRevision));
}

#[tokio::test]
async fn revisions_and_versions_across_put_put_delete_put() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());

    tracing::info!("--- create, then modify");
    assert_eq!(node.put("a", "1").await, 2);
    assert_eq!(node.get("a"), Some(kv("a", "1", 2, 2, 1)));
    assert_eq!(node.put("a", "2").await, 3);
    assert_eq!(node.get("a"), Some(kv("a", "2", 2, 3, 2)));

    tracing::info!("--- delete makes a revision; deleting nothing does not");
    let del = node.delete("a", "").await;
    assert_eq!(del.revision, 4);
    match del.result {
        Ok(CommandResult::DeleteRange(r)) => assert_eq!((r.deleted, r.prev_kvs.len()), (1, 0)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(node.get("a"), None);
    let del = node.delete("a", "").await;
    assert_eq!(del.revision, 4, "a delete of nothing keeps the revision");
    assert!(matches!(del.result, Ok(CommandResult::DeleteRange(ref r)) if r.deleted == 0));

    tracing::info!("--- re-creation starts a new incarnation");
    assert_eq!(node.put("a", "3").await, 5);
    assert_eq!(node.get("a"), Some(kv("a", "3", 5, 5, 1)));
    assert_eq!(node.mvcc.revision(), 5);
    assert_eq!(
        node.mvcc.applied_log_id(),
        Some(log_id(5)),
        "every entry advances the applied id"
    );
}

/// a=1 @2, b=1 @3, a=2 @4, delete b @5, c=1 @6.
async fn history_fixture(node: &mut Node) {
    assert_eq!(node.put("a", "1").await, 2);
    assert_eq!(node.put("b", "1").await, 3);
    assert_eq!(node.put("a", "2").await, 4);
    assert_eq!(node.delete("b", "").await.revision, 5);
    assert_eq!(node.put("c", "1").await, 6);
}

#[tokio::test]
async fn reads_at_past_revisions_answer_from_history() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    history_fixture(&mut node).await;

    assert_eq!(node.dump_at(1).unwrap(), Vec::<String>::new());
    assert_eq!(node.dump_at(2).unwrap(), strs(&["a=1"]));
    assert_eq!(node.dump_at(3).unwrap(), strs(&["a=1", "b=1"]));
    assert_eq!(node.dump_at(4).unwrap(), strs(&["a=2", "b=1"]));
    assert_eq!(
        node.dump_at(5).unwrap(),
        strs(&["a=2"]),
        "b's delete hides it"
    );
    assert_eq!(node.dump_at(6).unwrap(), strs(&["a=2", "c=1"]));
    assert_eq!(node.dump_at(0).unwrap(), node.dump_at(6).unwrap());
    assert_eq!(node.dump_at(7), Err(ApplyError::FutureRevision));

    assert_eq!(
        node.get_at("a", 3).unwrap(),
        Some(kv("a", "1", 2, 2, 1)),
        "old versions keep their metadata"
    );
    assert_eq!(node.get_at("b", 4).unwrap(), Some(kv("b", "1", 3, 3, 1)));
    let at3 = node.range(&range("a", "c").with_revision(3)).unwrap();
    assert_eq!((at3.count, at3.kvs.len()), (2, 2));
    let limited = node
        .range(&range("\0", "\0").with_revision(4).with_limit(1))
        .unwrap();
    assert_eq!(
        (limited.kvs.len(), limited.count, limited.more),
        (1, 2, true)
    );
}

#[tokio::test]
async fn compaction_drops_old_history_only() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    history_fixture(&mut node).await;

    tracing::info!("--- compact at 4");
    let resp = node.apply(Command::Compact { revision: 4 }).await;
    assert_eq!(resp.result, Ok(CommandResult::Compact));
    assert_eq!(resp.revision, 6, "compaction makes no revision");
    assert_eq!(node.mvcc.revision(), 6);
    assert_eq!(node.mvcc.compact_revision(), 4);

    assert_eq!(node.dump_at(2), Err(ApplyError::Compacted));
    assert_eq!(node.dump_at(3), Err(ApplyError::Compacted));
    assert_eq!(
        node.dump_at(4).unwrap(),
        strs(&["a=2", "b=1"]),
        "the compact revision itself still reads"
    );
    assert_eq!(node.dump_at(5).unwrap(), strs(&["a=2"]));
    assert_eq!(node.dump_at(6).unwrap(), strs(&["a=2", "c=1"]));
    assert_eq!(node.get_at("b", 4).unwrap(), Some(kv("b", "1", 3, 3, 1)));

    tracing::info!("--- compacting at or below the compact revision, or in the future, fails");
    for (rev, err) in [
        (4, ApplyError::Compacted),
        (3, ApplyError::Compacted),
        (7, ApplyError::FutureRevision),
    ] {
        let resp = node.apply(Command::Compact { revision: rev }).await;
        assert_eq!(resp.result, Err(err), "compact {rev}");
        assert_eq!(
            node.mvcc.compact_revision(),
            4,
            "a failed compact changes nothing"
        );
    }

    tracing::info!("--- compact past b's delete: b is gone at every readable revision");
    let resp = node.apply(Command::Compact { revision: 5 }).await;
    assert_eq!(resp.result, Ok(CommandResult::Compact));
    assert_eq!(node.dump_at(4), Err(ApplyError::Compacted));
    assert_eq!(node.dump_at(5).unwrap(), strs(&["a=2"]));
    assert_eq!(node.get_at("b", 5).unwrap(), None);
    assert_eq!(node.dump_at(0).unwrap(), strs(&["a=2", "c=1"]));

    tracing::info!("--- writes continue after compaction");
    assert_eq!(node.put("a", "3").await, 7);
    assert_eq!(
        node.get("a"),
        Some(kv("a", "3", 2, 7, 3)),
        "compaction keeps create revision and version"
    );
    assert_eq!(node.get_at("a", 6).unwrap(), Some(kv("a", "2", 2, 4, 2)));
}

#[tokio::test]
async fn put_options() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());

    tracing::info!("--- prev_kv");
    let resp = node
        .apply(Command::Put(PutRequest {
            prev_kv: true,
            ..put("k", "v1")
        }))
        .await;
    assert_eq!(
        resp.result,
        Ok(CommandResult::Put(PutResponse { prev_kv: None }))
    );
    let resp = node
        .apply(Command::Put(PutRequest {
            prev_kv: true,
            ..put("k", "v2")
        }))
        .await;
    assert_eq!(
        resp.result,
        Ok(CommandResult::Put(PutResponse {
            prev_kv: Some(kv("k", "v1", 2, 2, 1))
        }))
    );
    let resp = node.apply(Command::Put(put("k", "v3"))).await;
    assert_eq!(
        resp.result,
        Ok(CommandResult::Put(PutResponse { prev_kv: None })),
        "no prev_kv unless asked"
    );

    tracing::info!("--- ignore_value keeps the value, still makes a version");
    let resp = node
        .apply(Command::Put(PutRequest {
            ignore_value: true,
            ..put("k", "ignored")
        }))
        .await;
    assert_eq!(resp.revision, 5);
    assert_eq!(node.get("k"), Some(kv("k", "v3", 2, 5, 4)));

    tracing::info!("--- ignore_lease on an existing key keeps its lease");
    let resp = node
        .apply(Command::Put(PutRequest {
            ignore_lease: true,
            ..put("k", "v4")
        }))
        .await;
    assert!(resp.result.is_ok(), "{resp:?}");
    assert_eq!(node.get("k"), Some(kv("k", "v4", 2, 6, 5)));

    tracing::info!("--- failures change nothing and report the current revision");
    let failures = [
        (
            PutRequest {
                ignore_value: true,
                ..put("missing", "x")
            },
            ApplyError::KeyNotFound,
        ),
        (
            PutRequest {
                ignore_lease: true,
                ..put("missing", "x")
            },
            ApplyError::KeyNotFound,
        ),
        (
            PutRequest {
                lease: 42,
                ..put("k", "x")
            },
            ApplyError::LeaseNotFound,
        ),
        (
            PutRequest {
                lease: 42,
                ..put("missing", "x")
            },
            ApplyError::LeaseNotFound,
        ),
    ];
    for (req, err) in failures {
        let resp = node.apply(Command::Put(req.clone())).await;
        assert_eq!(resp.result, Err(err), "{req:?}");
        assert_eq!(resp.revision, 6, "{req:?}");
    }
    assert_eq!(node.get("missing"), None);
    assert_eq!(node.get("k"), Some(kv("k", "v4", 2, 6, 5)));
    assert_eq!(
        node.mvcc.applied_log_id(),
        Some(log_id(9)),
        "failed commands are still applied entries"
    );
}

#[tokio::test]
async fn delete_range_with_prev_kv() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    for k in ["a", "b", "c", "d"] {
        node.put(k, k).await;
    }
    let resp = node
        .apply(Command::DeleteRange(DeleteRangeRequest {
            key: "a".into(),
            range_end: "c".into(),
            prev_kv: true,
        }))
        .await;
    assert_eq!(resp.revision, 6, "one revision for the whole range");
    match resp.result {
        Ok(CommandResult::DeleteRange(r)) => {
            assert_eq!(r.deleted, 2);
            assert_eq!(
                r.prev_kvs,
                vec![kv("a", "a", 2, 2, 1), kv("b", "b", 3, 3, 1)]
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(node.dump_at(0).unwrap(), strs(&["c=c", "d=d"]));
    assert_eq!(
        node.dump_at(5).unwrap(),
        strs(&["a=a", "b=b", "c=c", "d=d"])
    );

    tracing::info!("--- delete everything with \\0..\\0");
    let resp = node.delete("\0", "\0").await;
    assert_eq!(resp.revision, 7);
    assert!(
        matches!(resp.result, Ok(CommandResult::DeleteRange(ref r)) if r.deleted == 2 && r.prev_kvs.is_empty())
    );
    assert_eq!(node.dump_at(0).unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn blank_membership_and_publish_entries() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("a", "1").await;

    let resp = node.apply_payload(EntryPayload::Blank).await;
    assert_eq!((resp.revision, resp.result), (2, Ok(CommandResult::Empty)));
    assert_eq!(node.mvcc.applied_log_id(), Some(log_id(2)));

    let membership = Membership::new(vec![BTreeSet::from([1, 2])], None);
    let resp = node
        .apply_payload(EntryPayload::Membership(membership.clone()))
        .await;
    assert_eq!((resp.revision, resp.result), (2, Ok(CommandResult::Empty)));
    assert_eq!(
        node.mvcc.membership(),
        StoredMembership::new(Some(log_id(3)), membership)
    );

    let m1 = MemberAttributes {
        id: 1,
        name: "one".into(),
        client_urls: vec!["http://one:2379".into()],
    };
    let m2 = MemberAttributes {
        id: 2,
        name: "two".into(),
        client_urls: vec![],
    };
    let m1b = MemberAttributes {
        client_urls: vec!["http://one:3379".into()],
        ..m1.clone()
    };
    for m in [&m2, &m1, &m1b] {
        let resp = node.apply(Command::Publish(m.clone())).await;
        assert_eq!(
            (resp.revision, resp.result),
            (2, Ok(CommandResult::Publish))
        );
    }
    assert_eq!(node.mvcc.members(), vec![m1b, m2], "latest per id, by id");
    assert_eq!(node.mvcc.revision(), 2);
}

/// Every entry rewrites all of `k00`..`k19` with one value; a concurrent reader must always see
/// them all equal, and at the revision the read reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_half_an_entry() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use rampart_storage::{RequestOp, TxnRequest};

    const KEYS: usize = 20;
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let mvcc = node.mvcc.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let (resp, rev) = mvcc.range(&range("k", "l")).unwrap();
                if let Some(first) = resp.kvs.first() {
                    assert_eq!(resp.kvs.len(), KEYS, "keys from different entries");
                    for kv in &resp.kvs {
                        assert_eq!(
                            (&kv.value, kv.mod_revision),
                            (&first.value, rev),
                            "a torn read"
                        );
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    for i in 0..500 {
        let v = i.to_string();
        let t = TxnRequest {
            compare: vec![],
            success: (0..KEYS)
                .map(|k| RequestOp::Put(put(&format!("k{k:02}"), &v)))
                .collect(),
            failure: vec![],
        };
        assert!(node.apply(Command::Txn(t)).await.result.is_ok());
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw only whole entries");
    assert!(reads > 0);
}
