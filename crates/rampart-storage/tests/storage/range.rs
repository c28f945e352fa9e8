//! Every Range option, against etcd's `executeRange`.

use rampart_storage::{RangeRequest, SortOrder, SortTarget};
use tempfile::TempDir;

use crate::common::{keys, range, strs, Node, RangeExt};

/// Five keys with distinct metadata:
///
/// | key | value | create | mod | version |
/// |-----|-------|--------|-----|---------|
/// | a   | 3     | 2      | 2   | 1       |
/// | b   | 4     | 3      | 5   | 2       |
/// | c   | 6     | 4      | 8   | 3       |
/// | d   | 0     | 6      | 6   | 1       |
/// | e   | 9     | 9      | 9   | 1       |
async fn fixture(node: &mut Node) {
    for (k, v) in [
        ("a", "3"),
        ("b", "1"),
        ("c", "2"),
        ("b", "4"),
        ("d", "0"),
        ("c", "5"),
        ("c", "6"),
        ("e", "9"),
    ] {
        node.put(k, v).await;
    }
    assert_eq!(node.mvcc.revision(), 9);
}

fn all() -> RangeRequest {
    range("\0", "\0")
}

fn sorted(target: SortTarget, order: SortOrder) -> RangeRequest {
    RangeRequest {
        sort_target: target,
        sort_order: order,
        ..all()
    }
}

#[tokio::test]
async fn limit_more_and_count() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    fixture(&mut node).await;

    let resp = node.range(&all()).unwrap();
    assert_eq!(
        (keys(&resp), resp.count, resp.more),
        (strs(&["a", "b", "c", "d", "e"]), 5, false)
    );
    for (limit, want, more) in [
        (1, &["a"][..], true),
        (2, &["a", "b"], true),
        (5, &["a", "b", "c", "d", "e"], false),
    ] {
        let resp = node.range(&all().with_limit(limit)).unwrap();
        assert_eq!(
            (keys(&resp), resp.count, resp.more),
            (strs(want), 5, more),
            "limit {limit}"
        );
    }
    let resp = node.range(&all().with_limit(6)).unwrap();
    assert_eq!((resp.kvs.len(), resp.more), (5, false));
}

#[tokio::test]
async fn sort_orders_and_targets() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    fixture(&mut node).await;

    use SortOrder::*;
    use SortTarget::*;
    let cases: &[(SortTarget, SortOrder, &[&str])] = &[
        (Key, None, &["a", "b", "c", "d", "e"]),
        (Key, Ascend, &["a", "b", "c", "d", "e"]),
        (Key, Descend, &["e", "d", "c", "b", "a"]),
        // Ties (a, d, e all at version 1) stay in key order.
        (Version, Ascend, &["a", "d", "e", "b", "c"]),
        (Version, Descend, &["c", "b", "a", "d", "e"]),
        (Version, None, &["a", "d", "e", "b", "c"]), // NONE with a non-key target is ASCEND
        (Create, Ascend, &["a", "b", "c", "d", "e"]),
        (Create, Descend, &["e", "d", "c", "b", "a"]),
        (Create, None, &["a", "b", "c", "d", "e"]),
        (Mod, Ascend, &["a", "b", "d", "c", "e"]),
        (Mod, Descend, &["e", "c", "d", "b", "a"]),
        (Mod, None, &["a", "b", "d", "c", "e"]),
        (Value, Ascend, &["d", "a", "b", "c", "e"]),
        (Value, Descend, &["e", "c", "b", "a", "d"]),
        (Value, None, &["d", "a", "b", "c", "e"]),
    ];
    for (target, order, want) in cases {
        let resp = node.range(&sorted(*target, *order)).unwrap();
        assert_eq!(keys(&resp), strs(want), "sort by {target:?} {order:?}");
        assert_eq!((resp.count, resp.more), (5, false));
    }
}

#[tokio::test]
async fn limit_applies_after_sorting() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    fixture(&mut node).await;

    let resp = node
        .range(&sorted(SortTarget::Key, SortOrder::Descend).with_limit(2))
        .unwrap();
    assert_eq!(
        (keys(&resp), resp.count, resp.more),
        (strs(&["e", "d"]), 5, true)
    );
    let resp = node
        .range(&sorted(SortTarget::Version, SortOrder::Descend).with_limit(2))
        .unwrap();
    assert_eq!(
        (keys(&resp), resp.count, resp.more),
        (strs(&["c", "b"]), 5, true)
    );
    let resp = node
        .range(&sorted(SortTarget::Version, SortOrder::Ascend).with_limit(2))
        .unwrap();
    assert_eq!(
        keys(&resp),
        strs(&["a", "d"]),
        "all matches sorted, then cut"
    );
    let resp = node
        .range(&sorted(SortTarget::Key, SortOrder::Ascend).with_limit(2))
        .unwrap();
    assert_eq!((keys(&resp), resp.more), (strs(&["a", "b"]), true));

    // etcd quirk kept for compatibility: with order NONE etcd fetches only `limit + 1` keys in
    // key order (a, b, c) *before* sorting them by the target (rangeLimit looks at the requested
    // order), so the answer differs from an explicit ASCEND.
    let resp = node
        .range(&sorted(SortTarget::Version, SortOrder::None).with_limit(2))
        .unwrap();
    assert_eq!(
        (keys(&resp), resp.count, resp.more),
        (strs(&["a", "b"]), 5, true)
    );
}

#[tokio::test]
async fn keys_only_and_count_only() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    fixture(&mut node).await;

    let resp = node
        .range(&RangeRequest {
            keys_only: true,
            ..range("b", "")
        })
        .unwrap();
    assert_eq!(resp.kvs.len(), 1);
    let b = &resp.kvs[0];
    assert!(b.value.is_empty(), "keys_only drops values");
    assert_eq!(
        (b.create_revision, b.mod_revision, b.version),
        (3, 5, 2),
        "but keeps metadata"
    );

    for limit in [0, 1] {
        let resp = node
            .range(&RangeRequest {
                count_only: true,
                ..all().with_limit(limit)
            })
            .unwrap();
        assert_eq!(
            (resp.kvs.len(), resp.count, resp.more),
            (0, 5, false),
            "count_only, limit {limit}"
        );
    }
    let resp = node
        .range(&RangeRequest {
            count_only: true,
            ..range("b", "d")
        })
        .unwrap();
    assert_eq!(resp.count, 2);
}

#[tokio::test]
async fn revision_filters() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    fixture(&mut node).await;

    let filtered = |f: fn(&mut RangeRequest)| {
        let mut req = all();
        f(&mut req);
        req
    };
    let cases: &[(RangeRequest, &[&str])] = &[
        (filtered(|r| r.min_mod_revision = 6), &["c", "d", "e"]),
        (filtered(|r| r.max_mod_revision = 5), &["a", "b"]),
        (filtered(|r| r.min_create_revision = 4), &["c", "d", "e"]),
        (filtered(|r| r.max_create_revision = 3), &["a", "b"]),
        (
            filtered(|r| {
                r.min_create_revision = 3;
                r.max_mod_revision = 6;
            }),
            &["b", "d"],
        ),
        (filtered(|r| r.min_mod_revision = 10), &[]),
    ];
    for (req, want) in cases {
        let resp = node.range(req).unwrap();
        assert_eq!(keys(&resp), strs(want), "{req:?}");
        // etcd counts the keys in the range before the filters (resp.Count = rr.Count).
        assert_eq!((resp.count, resp.more), (5, false), "{req:?}");
    }

    let resp = node
        .range(&filtered(|r| r.min_mod_revision = 6).with_limit(2))
        .unwrap();
    assert_eq!(
        (keys(&resp), resp.count, resp.more),
        (strs(&["c", "d"]), 5, true),
        "limit after filtering"
    );
}

#[tokio::test]
async fn range_end_conventions() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    fixture(&mut node).await;

    let cases: &[(&str, &str, &[&str])] = &[
        ("b", "", &["b"]),             // single key
        ("bb", "", &[]),               // single missing key
        ("b", "d", &["b", "c"]),       // [b, d)
        ("c", "\0", &["c", "d", "e"]), // every key >= c
        ("\0", "\0", &["a", "b", "c", "d", "e"]),
        ("a", "a", &[]), // range_end == key: nothing
        ("d", "b", &[]), // range_end < key: nothing
        ("0", "b", &["a"]),
        ("", "\0", &["a", "b", "c", "d", "e"]),
    ];
    for (key, end, want) in cases {
        let resp = node.range(&range(key, end)).unwrap();
        assert_eq!(keys(&resp), strs(want), "range {key:?}..{end:?}");
        assert_eq!(resp.count, want.len() as i64);
    }
}

#[tokio::test]
async fn binary_keys_and_prefixes_keep_byte_order() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    let keys_in_order: [&[u8]; 7] = [
        b"j\xff",
        b"k",
        b"k\0",
        b"k\0a",
        b"k\x01",
        b"k\xff\xff",
        b"l",
    ];
    // Insert out of order so the store, not the input, orders them.
    for k in keys_in_order.iter().rev() {
        let resp = node
            .apply(rampart_storage::Command::Put(rampart_storage::PutRequest {
                key: k.to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }))
            .await;
        assert!(resp.result.is_ok());
    }
    let raw = |key: &[u8], end: &[u8]| -> Vec<Vec<u8>> {
        let resp = node
            .range(&RangeRequest {
                key: key.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            })
            .unwrap();
        resp.kvs.into_iter().map(|kv| kv.key).collect()
    };
    assert_eq!(
        raw(b"\0", b"\0"),
        keys_in_order.map(|k| k.to_vec()).to_vec()
    );
    // Prefix "k": range_end is "l" (last byte incremented).
    assert_eq!(
        raw(b"k", b"l"),
        keys_in_order[1..6]
            .iter()
            .map(|k| k.to_vec())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        raw(b"k\0", b"k\x01"),
        vec![b"k\0".to_vec(), b"k\0a".to_vec()]
    );
    assert_eq!(
        raw(b"k\0", b""),
        vec![b"k\0".to_vec()],
        "a key with a zero byte is itself"
    );
    assert_eq!(
        raw(b"k\xff", b"\0"),
        vec![b"k\xff\xff".to_vec(), b"l".to_vec()]
    );

    tracing::info!("--- the same order in history");
    // One revision before the last put (of "j\xff"): every "k" key already exists.
    let at = node.mvcc.revision() - 1;
    let resp = node
        .range(&RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            revision: at,
            ..Default::default()
        })
        .unwrap();
    let got: Vec<Vec<u8>> = resp.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(
        got,
        keys_in_order[1..6]
            .iter()
            .map(|k| k.to_vec())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn historical_range_with_options() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    fixture(&mut node).await;

    // At revision 5: a (v1, "3"), b (v2, "4"), c (v1, "2").
    let resp = node
        .range(&sorted(SortTarget::Version, SortOrder::Descend).with_revision(5))
        .unwrap();
    assert_eq!(keys(&resp), strs(&["b", "a", "c"]));
    assert_eq!(resp.count, 3);
    let c = resp.kvs.iter().find(|kv| kv.key == b"c").unwrap();
    assert_eq!(
        (c.value.as_slice(), c.mod_revision, c.version),
        (&b"2"[..], 4, 1)
    );
    let resp = node
        .range(&RangeRequest {
            count_only: true,
            ..all().with_revision(3)
        })
        .unwrap();
    assert_eq!(resp.count, 2);
}
