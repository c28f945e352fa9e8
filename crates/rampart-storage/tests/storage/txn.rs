//! Txn: compares, branches, nesting, read-your-writes, one revision, all-or-nothing.

use rampart_storage::{
    ApplyError, Command, CommandResponse, CommandResult, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use tempfile::TempDir;

use crate::common::{kv_str, put, range, strs, Node, RangeExt};

fn cmp(key: &str, range_end: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        range_end: range_end.into(),
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn txn_response(resp: &CommandResponse) -> &TxnResponse {
    match &resp.result {
        Ok(CommandResult::Txn(t)) => t,
        other => panic!("expected a txn response, got {other:?}"),
    }
}

fn range_response(op: &ResponseOp) -> Vec<String> {
    match op {
        ResponseOp::Range(r) => r.kvs.iter().map(kv_str).collect(),
        other => panic!("expected a range response, got {other:?}"),
    }
}

/// Runs a read-only txn with one compare; returns whether it succeeded, checking that the
/// revision did not move.
async fn holds(node: &mut Node, c: Compare) -> bool {
    let before = node.mvcc.revision();
    let resp = node.apply(Command::Txn(txn(vec![c], vec![], vec![]))).await;
    assert_eq!(
        resp.revision, before,
        "a txn without writes makes no revision"
    );
    txn_response(&resp).succeeded
}

#[tokio::test]
async fn compare_each_target_and_result() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("k", "v1").await; // rev 2
    node.put("k", "v2").await; // rev 3: version 2, create 2, mod 3, value v2, lease 0

    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        (Version(2), Equal, true),
        (Version(2), NotEqual, false),
        (Version(1), Greater, true),
        (Version(2), Greater, false),
        (Version(3), Less, true),
        (Version(2), Less, false),
        (Create(2), Equal, true),
        (Create(1), Less, false),
        (Create(3), Less, true),
        (Mod(3), Equal, true),
        (Mod(2), Greater, true),
        (Mod(3), NotEqual, false),
        (Value(b"v2".to_vec()), Equal, true),
        (Value(b"v1".to_vec()), Greater, true),
        (Value(b"v3".to_vec()), Less, true),
        (Value(b"v2".to_vec()), NotEqual, false),
        (Lease(0), Equal, true),
        (Lease(1), Less, true),
        (Lease(0), Greater, false),
    ];
    for (target, result, want) in cases {
        let c = cmp("k", "", target.clone(), result);
        assert_eq!(holds(&mut node, c).await, want, "k {target:?} {result:?}");
    }
}

#[tokio::test]
async fn compare_on_missing_keys_and_ranges() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("r1", "x").await;
    node.put("r2", "x").await;
    node.put("r2", "y").await; // r2 at version 2

    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        // A missing key compares as zero...
        ("nope", "", Version(0), Equal, true),
        ("nope", "", Create(0), Equal, true),
        ("nope", "", Mod(0), Equal, true),
        ("nope", "", Lease(0), Equal, true),
        ("nope", "", Version(0), Greater, false),
        // ...except on its value, where any compare fails.
        ("nope", "", Value(vec![]), Equal, false),
        ("nope", "", Value(b"x".to_vec()), NotEqual, false),
        // A range holds only if every key in it does.
        ("r1", "r3", Version(0), Greater, true),
        ("r1", "r3", Version(1), Equal, false),
        ("r1", "r3", Create(1), Greater, true),
        ("r1", "r3", Value(b"x".to_vec()), Equal, false),
        ("r1", "r3", Value(b"z".to_vec()), Less, true),
        ("r", "\0", Version(3), Less, true),
        // An empty range: zero for numbers, false for values.
        ("s1", "s9", Version(0), Equal, true),
        ("s1", "s9", Mod(0), Greater, false),
        ("s1", "s9", Value(vec![]), Equal, false),
    ];
    for (key, end, target, result, want) in cases {
        let c = cmp(key, end, target.clone(), result);
        assert_eq!(
            holds(&mut node, c).await,
            want,
            "{key}..{end} {target:?} {result:?}"
        );
    }
}

#[tokio::test]
async fn branches_make_one_revision_and_read_their_own_writes() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("a", "old").await; // rev 2
    node.put("gone", "x").await; // rev 3

    tracing::info!("--- success branch: writes, then reads that see them");
    let t = txn(
        vec![cmp(
            "a",
            "",
            CompareTarget::Value(b"old".to_vec()),
            CompareResult::Equal,
        )],
        vec![
            RequestOp::Put(put("a", "new")),
            RequestOp::Put(put("b", "1")),
            RequestOp::Range(range("a", "")),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: "gone".into(),
                range_end: vec![],
                prev_kv: true,
            }),
            RequestOp::Range(range("\0", "\0")),
            // An explicit revision reads the state before the txn.
            RequestOp::Range(range("\0", "\0").with_revision(3)),
        ],
        vec![RequestOp::Put(put("failure", "ran"))],
    );
    let resp = node.apply(Command::Txn(t)).await;
    assert_eq!(resp.revision, 4, "all writes of a txn share one revision");
    let t = txn_response(&resp);
    assert!(t.succeeded);
    assert_eq!(t.responses.len(), 6);
    assert!(matches!(t.responses[0], ResponseOp::Put(_)));
    assert_eq!(range_response(&t.responses[2]), strs(&["a=new"]));
    match &t.responses[3] {
        ResponseOp::DeleteRange(d) => {
            assert_eq!(d.deleted, 1);
            assert_eq!(d.prev_kvs.len(), 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(range_response(&t.responses[4]), strs(&["a=new", "b=1"]));
    assert_eq!(range_response(&t.responses[5]), strs(&["a=old", "gone=x"]));
    if let ResponseOp::Range(r) = &t.responses[2] {
        assert_eq!(
            (r.kvs[0].mod_revision, r.kvs[0].version),
            (4, 2),
            "the txn's own write, at its revision"
        );
    }

    assert_eq!(node.dump_at(0).unwrap(), strs(&["a=new", "b=1"]));
    assert_eq!(node.get("a").unwrap().mod_revision, 4);
    assert_eq!(node.get("b").unwrap().mod_revision, 4);
    assert_eq!(node.dump_at(3).unwrap(), strs(&["a=old", "gone=x"]));

    tracing::info!("--- failure branch");
    let t = txn(
        vec![cmp(
            "a",
            "",
            CompareTarget::Value(b"old".to_vec()),
            CompareResult::Equal,
        )],
        vec![RequestOp::Put(put("success", "ran"))],
        vec![
            RequestOp::Put(put("failure", "ran")),
            RequestOp::Range(range("failure", "")),
        ],
    );
    let resp = node.apply(Command::Txn(t)).await;
    assert_eq!(resp.revision, 5);
    let t = txn_response(&resp);
    assert!(!t.succeeded);
    assert_eq!(range_response(&t.responses[1]), strs(&["failure=ran"]));
    assert_eq!(node.get("success"), None);

    tracing::info!("--- a txn whose only write deletes nothing makes no revision");
    let t = txn(
        vec![],
        vec![RequestOp::DeleteRange(DeleteRangeRequest::default())],
        vec![],
    );
    let resp = node.apply(Command::Txn(t)).await;
    assert_eq!(resp.revision, 5);
    assert_eq!(node.mvcc.revision(), 5);
}

#[tokio::test]
async fn nested_compares_see_the_state_before_the_txn() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("x", "1").await; // rev 2

    // The outer txn writes "n" before the nested one runs, yet the nested compare (n missing,
    // version 0) is decided against the state before the outer txn, as etcd's compareToPath does.
    let nested = txn(
        vec![cmp(
            "n",
            "",
            CompareTarget::Version(0),
            CompareResult::Equal,
        )],
        vec![
            RequestOp::Put(put("m", "nested-success")),
            RequestOp::Range(range("n", "")),
        ],
        vec![RequestOp::Put(put("m", "nested-failure"))],
    );
    let outer = txn(
        vec![cmp(
            "x",
            "",
            CompareTarget::Version(1),
            CompareResult::Equal,
        )],
        vec![
            RequestOp::Put(put("n", "1")),
            RequestOp::Txn(nested.clone()),
            RequestOp::Put(put("z", "1")),
        ],
        vec![],
    );
    let resp = node.apply(Command::Txn(outer)).await;
    assert_eq!(resp.revision, 3);
    let t = txn_response(&resp);
    assert!(t.succeeded);
    assert_eq!(t.responses.len(), 3);
    match &t.responses[1] {
        ResponseOp::Txn(inner) => {
            assert!(
                inner.succeeded,
                "nested compare evaluated before the outer put"
            );
            assert_eq!(inner.responses.len(), 2);
            assert_eq!(
                range_response(&inner.responses[1]),
                strs(&["n=1"]),
                "but its reads see it"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        node.dump_at(0).unwrap(),
        strs(&["m=nested-success", "n=1", "x=1", "z=1"])
    );

    tracing::info!("--- the nested failure branch");
    let outer = txn(vec![], vec![RequestOp::Txn(nested)], vec![]);
    let resp = node.apply(Command::Txn(outer)).await; // n exists now
    match &txn_response(&resp).responses[0] {
        ResponseOp::Txn(inner) => assert!(!inner.succeeded),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        node.get("m").map(|kv| kv_str(&kv)),
        Some("m=nested-failure".to_string())
    );
}

#[tokio::test]
async fn a_failing_txn_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("a", "1").await; // rev 2

    let bad_ops: Vec<(RequestOp, ApplyError)> = vec![
        (
            RequestOp::Put(PutRequest {
                ignore_value: true,
                ..put("missing", "")
            }),
            ApplyError::KeyNotFound,
        ),
        (
            RequestOp::Put(PutRequest {
                lease: 9,
                ..put("b", "")
            }),
            ApplyError::LeaseNotFound,
        ),
        (
            RequestOp::Range(range("a", "").with_revision(3)),
            ApplyError::FutureRevision,
        ),
        (
            RequestOp::Txn(txn(
                vec![],
                vec![RequestOp::Put(PutRequest {
                    ignore_lease: true,
                    ..put("missing", "")
                })],
                vec![],
            )),
            ApplyError::KeyNotFound,
        ),
    ];
    for (bad, err) in bad_ops {
        // The bad op comes last: the puts before it must not survive.
        let t = txn(
            vec![],
            vec![
                RequestOp::Put(put("a", "2")),
                RequestOp::Put(put("c", "1")),
                bad.clone(),
            ],
            vec![],
        );
        let resp = node.apply(Command::Txn(t)).await;
        assert_eq!(resp.result, Err(err), "{bad:?}");
        assert_eq!(resp.revision, 2, "{bad:?}");
        assert_eq!(node.mvcc.revision(), 2);
        assert_eq!(node.dump_at(0).unwrap(), strs(&["a=1"]), "{bad:?}");
    }

    tracing::info!("--- a bad op on the branch not taken does not matter");
    let t = txn(
        vec![cmp(
            "a",
            "",
            CompareTarget::Version(1),
            CompareResult::Equal,
        )],
        vec![RequestOp::Put(put("a", "2"))],
        vec![RequestOp::Put(PutRequest {
            lease: 9,
            ..put("b", "")
        })],
    );
    let resp = node.apply(Command::Txn(t)).await;
    assert!(txn_response(&resp).succeeded);
    assert_eq!(resp.revision, 3);

    tracing::info!("--- reads at compacted revisions fail the txn too");
    node.apply(Command::Compact { revision: 3 }).await;
    let t = txn(
        vec![],
        vec![
            RequestOp::Put(put("c", "1")),
            RequestOp::Range(RangeRequest {
                revision: 2,
                ..range("a", "")
            }),
        ],
        vec![],
    );
    let resp = node.apply(Command::Txn(t)).await;
    assert_eq!(resp.result, Err(ApplyError::Compacted));
    assert_eq!(node.get("c"), None);
}
