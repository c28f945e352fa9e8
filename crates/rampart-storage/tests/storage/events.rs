//! Watch events: replay from history (order, prev_kv, key filters, paging, compaction) and the live
//! feed (same events as the replay, resets, lagging).

use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use rampart_storage::{
    ApplyError, Command, DeleteRangeRequest, Event, EventKind, KeyValue, MvccError, RequestOp,
    RevisionEvents, TxnRequest, WatchFeed, WATCH_FEED_CAPACITY,
};
use tempfile::TempDir;
use tokio::sync::broadcast::error::TryRecvError;

use crate::common::{events_str, put, strs, Node};

fn txn(ops: Vec<RequestOp>) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![],
        success: ops,
        failure: vec![],
    })
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(put(key, value))
}

fn delete_op(key: &str, range_end: &str) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: false,
    })
}

/// Replays `[start, end]` on `(key, range_end)`, at most `max` events; `"@rev: ..."` lines and the
/// revision examined through.
fn replay(
    node: &Node,
    start: i64,
    end: i64,
    key: &str,
    range_end: &str,
    max: usize,
) -> (Vec<String>, i64) {
    let (events, last) = node
        .mvcc
        .events(start, end, key.as_bytes(), range_end.as_bytes(), max)
        .expect("replay succeeds");
    (events_str(&events), last)
}

/// Takes every message waiting on `feed`, which must all be revisions.
fn drain(feed: &mut tokio::sync::broadcast::Receiver<WatchFeed>) -> Vec<RevisionEvents> {
    let mut out = Vec::new();
    loop {
        match feed.try_recv() {
            Ok(WatchFeed::Revision(r)) => {
                let events = r.events().expect("the feed kept the revision's events");
                out.push(RevisionEvents::clone(&events));
            }
            Ok(other) => panic!("expected revisions only, got {other:?}"),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("feed failed: {e:?}"),
        }
    }
}

#[tokio::test]
async fn replay_lists_each_revision_once_in_op_order() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("b", "1").await; // 2
    node.put("a", "1").await; // 3
    let resp = node
        .apply(txn(vec![
            put_op("z", "1"),
            delete_op("b", ""),
            put_op("a", "2"),
        ]))
        .await;
    assert_eq!(resp.revision, 4);
    node.delete("a", "c").await; // 5: only a is left in [a, c)
    let resp = node
        .apply(txn(vec![
            put_op("y", "1"),
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![put_op("x", "1")],
                failure: vec![],
            }),
            put_op("w", "1"),
        ]))
        .await;
    assert_eq!(resp.revision, 6);

    let events = node.all_events();
    assert_eq!(
        events_str(&events),
        strs(&[
            "@2: PUT b=1",
            "@3: PUT a=1",
            "@4: PUT z=1, DELETE b (was b=1), PUT a=2 (was a=1)",
            "@5: DELETE a (was a=2)",
            "@6: PUT y=1, PUT x=1, PUT w=1",
        ]),
        "op order within a revision, nested txns included, not key order"
    );

    tracing::info!("--- the events in full");
    let at4 = &events[2];
    assert_eq!(
        at4.events[1],
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: "b".into(),
                mod_revision: 4,
                ..KeyValue::default()
            },
            prev_kv: Some(KeyValue {
                key: "b".into(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: "1".into(),
                lease: 0,
            }),
        }
    );
    assert_eq!(
        at4.events[2].kv,
        KeyValue {
            key: "a".into(),
            create_revision: 3,
            mod_revision: 4,
            version: 2,
            value: "2".into(),
            lease: 0,
        },
        "a PUT carries the whole record"
    );
}

#[tokio::test]
async fn prev_kv_follows_incarnations() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("k", "v1").await; // 2
    node.put("k", "v2").await; // 3
    node.delete("k", "").await; // 4
    node.put("k", "v3").await; // 5

    let events = node.all_events();
    assert_eq!(
        events_str(&events),
        strs(&[
            "@2: PUT k=v1",
            "@3: PUT k=v2 (was k=v1)",
            "@4: DELETE k (was k=v2)",
            "@5: PUT k=v3",
        ]),
        "no prev_kv after a delete: the key did not exist"
    );
    let recreated = &events[3].events[0].kv;
    assert_eq!(
        (recreated.create_revision, recreated.version),
        (5, 1),
        "a new incarnation"
    );
    assert_eq!(
        events[1].events[0].prev_kv.as_ref().unwrap().mod_revision,
        2
    );
}

#[tokio::test]
async fn key_filters_follow_etcd_range_conventions() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    for k in ["a", "ab", "abc", "b", "ac"] {
        node.put(k, "1").await; // 2..=6
    }
    node.apply(txn(vec![put_op("a", "2"), put_op("b", "2")]))
        .await; // 7

    let keys = |key: &str, range_end: &str| replay(&node, 1, i64::MAX, key, range_end, 0).0;
    assert_eq!(
        keys("ab", ""),
        strs(&["@3: PUT ab=1"]),
        "an empty range_end is one key"
    );
    assert_eq!(
        keys("b", ""),
        strs(&["@5: PUT b=1", "@7: PUT b=2 (was b=1)"]),
        "a revision keeps only its matching events"
    );
    assert_eq!(
        keys("a", "b"),
        strs(&[
            "@2: PUT a=1",
            "@3: PUT ab=1",
            "@4: PUT abc=1",
            "@6: PUT ac=1",
            "@7: PUT a=2 (was a=1)",
        ])
    );
    assert_eq!(
        keys("ab", "ac"),
        strs(&["@3: PUT ab=1", "@4: PUT abc=1"]),
        "a prefix"
    );
    assert_eq!(
        keys("ab", "\0"),
        strs(&[
            "@3: PUT ab=1",
            "@4: PUT abc=1",
            "@5: PUT b=1",
            "@6: PUT ac=1",
            "@7: PUT b=2 (was b=1)",
        ]),
        "\\0 is every key from there on"
    );
    assert_eq!(keys("\0", "\0").len(), 6, "every revision");
    assert!(keys("b", "a").is_empty(), "an empty range matches nothing");
    assert!(keys("zzz", "").is_empty());
}

#[tokio::test]
async fn max_events_cuts_only_between_revisions() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("a", "1").await; // 2
    node.apply(txn(vec![
        put_op("b", "1"),
        put_op("c", "1"),
        put_op("d", "1"),
    ]))
    .await; // 3
    node.put("e", "1").await; // 4
    node.put("f", "1").await; // 5

    let all = |start: i64, max: usize| replay(&node, start, i64::MAX, "\0", "\0", max);
    let revs = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| l.split(':').next().unwrap().to_string())
            .collect()
    };

    tracing::info!("--- stop after the revision that reaches the limit");
    let (page, last) = all(1, 2);
    assert_eq!((revs(&page), last), (strs(&["@2", "@3"]), 3));
    let (page, last) = all(4, 2);
    assert_eq!(
        (revs(&page), last),
        (strs(&["@4", "@5"]), 5),
        "the end: examined through the current revision"
    );
    let (page, last) = all(3, 1);
    assert_eq!(
        (revs(&page), last),
        (strs(&["@3"]), 3),
        "a revision larger than the limit still comes whole"
    );
    assert_eq!(page[0], "@3: PUT b=1, PUT c=1, PUT d=1");

    tracing::info!("--- paging one event at a time gives the full replay");
    let mut paged = Vec::new();
    let mut next = 1;
    while next <= node.mvcc.revision() {
        let (page, last) = all(next, 1);
        assert!(last >= next, "progress from {next}");
        paged.extend(page);
        next = last + 1;
    }
    assert_eq!(paged, all(1, 0).0);

    tracing::info!("--- with a filter, the returned revision is where the scan stopped");
    assert_eq!(
        replay(&node, 1, i64::MAX, "e", "", 1),
        (strs(&["@4: PUT e=1"]), 4)
    );
    assert_eq!(
        replay(&node, 1, i64::MAX, "f", "", 1),
        (strs(&["@5: PUT f=1"]), 5)
    );
    assert_eq!(
        replay(&node, 1, i64::MAX, "nope", "", 1),
        (vec![], 5),
        "nothing matched: examined through the end"
    );

    tracing::info!("--- end is inclusive, and clamped to the current revision");
    assert_eq!(
        revs(&replay(&node, 2, 3, "\0", "\0", 0).0),
        strs(&["@2", "@3"])
    );
    assert_eq!(replay(&node, 2, 3, "\0", "\0", 0).1, 3);
    assert_eq!(replay(&node, 5, 100, "\0", "\0", 0).1, 5);
    assert_eq!(replay(&node, 6, 100, "\0", "\0", 0), (vec![], 5));
}

#[tokio::test]
async fn compaction_bounds_the_replay() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    assert_eq!(
        replay(&node, 0, 10, "\0", "\0", 0),
        (vec![], 1),
        "an empty, never compacted store replays from anywhere"
    );
    node.put("a", "1").await; // 2
    node.put("b", "1").await; // 3
    node.put("a", "2").await; // 4
    node.delete("b", "").await; // 5
    node.put("c", "1").await; // 6
    assert_eq!(replay(&node, 0, 10, "\0", "\0", 0).0.len(), 5);

    tracing::info!("--- compact at 4");
    node.apply(Command::Compact { revision: 4 }).await;
    for start in [0, 1, 3] {
        let err = node.mvcc.events(start, 10, b"\0", b"\0", 0).unwrap_err();
        assert!(
            matches!(err, MvccError::Apply(ApplyError::Compacted)),
            "start {start}: {err:?}"
        );
    }
    assert_eq!(
        replay(&node, 4, 10, "\0", "\0", 0),
        (
            strs(&["@4: PUT a=2", "@5: DELETE b (was b=1)", "@6: PUT c=1",]),
            6
        ),
        "from the compact revision on; a's version before 4 is gone, so no prev_kv at 4"
    );

    tracing::info!("--- compact at 5, b's delete: it goes with its tombstone");
    node.apply(Command::Compact { revision: 5 }).await;
    assert_eq!(
        replay(&node, 5, 10, "\0", "\0", 0),
        (strs(&["@6: PUT c=1"]), 6)
    );
    assert!(node.mvcc.events(4, 10, b"\0", b"\0", 0).is_err());

    tracing::info!("--- new revisions after compaction replay as usual");
    node.put("c", "2").await; // 7
    assert_eq!(
        replay(&node, 7, 7, "\0", "\0", 0).0,
        strs(&["@7: PUT c=2 (was c=1)"])
    );
}

#[tokio::test]
async fn the_live_feed_sends_what_the_replay_finds() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    let (mut feed, _every_prev_kv) = node.mvcc.subscribe_with_prev_kv(b"\0", b"\0");

    tracing::info!("--- every kind of entry, some making no revision");
    node.grant(1, 10).await;
    node.put_lease("a", "1", 1).await; // 2
    node.put("b", "1").await; // 3
    node.apply(txn(vec![
        put_op("c", "1"),
        delete_op("b", ""),
        put_op("a", "2"),
    ]))
    .await; // 4
    node.delete("nothing", "").await;
    node.put_lease("x", "1", 99).await; // fails: unknown lease
    node.apply_payload(EntryPayload::Blank).await;
    node.put_lease("d", "1", 1).await; // 5
    node.put_lease("a", "3", 1).await; // 6
    node.apply(Command::LeaseRevoke { id: 1 }).await; // 7: a, d
    node.apply(Command::Compact { revision: 3 }).await;
    node.apply(Command::Publish(Default::default())).await;
    node.apply(txn(vec![put_op("e", "1"), put_op("e2", "1")]))
        .await; // 8
    assert_eq!(node.mvcc.revision(), 8);

    let live = drain(&mut feed);
    assert_eq!(
        live.iter().map(|r| r.revision).collect::<Vec<_>>(),
        (2..=8).collect::<Vec<_>>(),
        "one message per revision, in order, none for the other entries"
    );
    assert_eq!(
        events_str(&live[5..6]),
        strs(&["@7: DELETE a (was a=3), DELETE d (was d=1)"])
    );
    let (replayed, last) = node.mvcc.events(4, 100, b"\0", b"\0", 0).unwrap();
    assert_eq!(last, 8);
    assert_eq!(
        replayed,
        live[2..].to_vec(),
        "identical events, prev_kv included, above the compact revision"
    );
}

#[tokio::test]
async fn the_feed_is_reset_by_a_snapshot_install() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let mut leader = Node::open(leader_dir.path());
    for i in 0..5 {
        leader.put(&format!("k{i}"), "v").await;
    }
    let snap = leader.snapshot().await;

    let mut follower = Node::open(follower_dir.path());
    let mut feed = follower.mvcc.subscribe();
    follower.put("mine", "1").await;
    follower
        .sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();

    match feed.try_recv() {
        Ok(WatchFeed::Revision(r)) => assert_eq!(r.revision(), 2),
        other => panic!("expected the follower's own revision first, got {other:?}"),
    }
    match feed.try_recv() {
        Ok(WatchFeed::Reset { revision }) => assert_eq!(revision, 6),
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(matches!(feed.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(
        follower.all_events(),
        leader.all_events(),
        "the installed history replays as the leader's"
    );
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_and_catches_up_from_history() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    let mut feed = node.mvcc.subscribe();
    let extra = 10;
    for i in 0..WATCH_FEED_CAPACITY + extra {
        node.put("k", &i.to_string()).await;
    }
    assert_eq!(
        feed.try_recv().unwrap_err(),
        TryRecvError::Lagged(extra as u64)
    );
    let first_kept = 2 + extra as i64;
    match feed.try_recv() {
        Ok(WatchFeed::Revision(r)) => assert_eq!(r.revision(), first_kept),
        other => panic!("expected revision {first_kept}, got {other:?}"),
    }
    let (missed, last) = node.mvcc.events(2, first_kept - 1, b"k", b"", 0).unwrap();
    assert_eq!(last, first_kept - 1);
    assert_eq!(
        missed.iter().map(|r| r.revision).collect::<Vec<_>>(),
        (2..first_kept).collect::<Vec<_>>()
    );
}

/// A subscriber joining while entries are applied: subscribe, read the revision, replay up to it,
/// then follow the feed. It must see every revision exactly once. The writer keeps writing until
/// the subscriber has subscribed, so the subscription always races with writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_then_replay_misses_nothing_under_concurrent_writes() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;

    const MIN_PUTS: i64 = 1000;
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    let subscribed = Arc::new(AtomicBool::new(false));
    // The writer's last revision, once it has stopped; 0 until then.
    let final_revision = Arc::new(AtomicI64::new(0));
    let watcher = {
        let mvcc = node.mvcc.clone();
        let subscribed = subscribed.clone();
        let final_revision = final_revision.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while mvcc.revision() < MIN_PUTS / 4 {
                assert!(Instant::now() < deadline, "writes never started");
                std::thread::yield_now();
            }
            let mut feed = mvcc.subscribe();
            subscribed.store(true, Ordering::SeqCst);
            let joined_at = mvcc.revision();
            let (history, last) = mvcc.events(1, joined_at, b"\0", b"\0", 0).unwrap();
            assert_eq!(last, joined_at);
            let mut seen: Vec<i64> = history.iter().map(|r| r.revision).collect();
            loop {
                let done = final_revision.load(Ordering::SeqCst);
                if done != 0 && seen.last() == Some(&done) {
                    return (joined_at, seen);
                }
                match feed.try_recv() {
                    Ok(WatchFeed::Revision(r)) if r.revision() <= joined_at => {} // replayed already
                    Ok(WatchFeed::Revision(r)) => seen.push(r.revision()),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(TryRecvError::Empty) => {
                        assert!(
                            Instant::now() < deadline,
                            "stuck after revision {:?} (joined at {joined_at})",
                            seen.last()
                        );
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("feed failed: {e:?}"),
                }
            }
        })
    };
    let mut i = 0;
    while i < MIN_PUTS || !subscribed.load(Ordering::SeqCst) {
        node.put(&format!("k{}", i % 7), &i.to_string()).await;
        i += 1;
    }
    let last = node.mvcc.revision();
    final_revision.store(last, Ordering::SeqCst);
    let (joined_at, seen) = watcher.join().expect("the watcher saw every revision");
    eprintln!("watcher joined at revision {joined_at} of {last}");
    assert_eq!(
        seen,
        (2..=last).collect::<Vec<_>>(),
        "joined at {joined_at}"
    );
}

/// Previous values cost a history read under the write lock: the feed reads them only for the
/// keys of subscribers that asked, and only while they are subscribed.
#[tokio::test]
async fn the_feed_reads_previous_values_only_for_keys_a_subscriber_wants_them_for() {
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    node.put("a", "1").await; // 2
    node.put("b", "1").await; // 3
    node.put("x", "1").await; // 4
    let mut plain = node.mvcc.subscribe();

    tracing::info!("--- no one wants previous values: overwrites and deletes read none");
    node.put("a", "2").await; // 5
    node.apply(txn(vec![put_op("b", "2"), put_op("x", "2")]))
        .await; // 6
    node.delete("x", "").await; // 7
    assert_eq!(
        events_str(&drain(&mut plain)),
        strs(&["@5: PUT a=2", "@6: PUT b=2, PUT x=2", "@7: DELETE x"])
    );
    assert_eq!(node.mvcc.watch_feed_stats().prev_values_read, 0);

    tracing::info!("--- a subscriber wants them on [a, b): a's are read, b's are not");
    let (mut with_prev, interest) = node.mvcc.subscribe_with_prev_kv(b"a", b"b");
    node.put("a", "3").await; // 8
    node.put("b", "3").await; // 9
    node.apply(txn(vec![put_op("a", "4"), put_op("b", "4")]))
        .await; // 10
    let expected = strs(&[
        "@8: PUT a=3 (was a=2)",
        "@9: PUT b=3",
        "@10: PUT a=4 (was a=3), PUT b=4",
    ]);
    assert_eq!(events_str(&drain(&mut with_prev)), expected);
    assert_eq!(events_str(&drain(&mut plain)), expected, "one feed for all");
    assert_eq!(node.mvcc.watch_feed_stats().prev_values_read, 2);

    tracing::info!("--- the interest withdrawn: none read again");
    drop(interest);
    node.put("a", "5").await; // 11
    assert_eq!(events_str(&drain(&mut with_prev)), strs(&["@11: PUT a=5"]));
    assert_eq!(node.mvcc.watch_feed_stats().prev_values_read, 2);
}

/// A subscriber asking for previous values while entries are applied: every revision it
/// receives carries them, whichever entry its subscription fell beside. Each txn puts every
/// `k` key with the txn's number, so each event's `prev_kv` must hold the number before. The
/// txns also overwrite `o` keys that another subscriber wants previous values of, so building
/// each revision's events takes a while, and each subscription waits a random part of a txn's
/// time first: some registrations fall in the middle of building a revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prev_kv_subscription_racing_writes_gets_every_previous_value() {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    const KEYS: usize = 100;
    const SUBSCRIPTIONS: usize = 200;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    let put_all = |n: usize| {
        let keys = (0..KEYS).flat_map(|k| [format!("k{k:03}"), format!("o{k:03}")]);
        txn(keys.map(|key| put_op(&key, &n.to_string())).collect())
    };
    let (_other_feed, _other) = node.mvcc.subscribe_with_prev_kv(b"o", b"p");
    let first = node.apply(put_all(0)).await.revision;
    let done = Arc::new(AtomicBool::new(false));
    // How long the last txn took to apply, in microseconds.
    let txn_micros = Arc::new(AtomicU64::new(1000));
    let subscriber = {
        let mvcc = node.mvcc.clone();
        let (done, txn_micros) = (done.clone(), txn_micros.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let deadline = Instant::now() + Duration::from_secs(120);
            for _ in 0..SUBSCRIPTIONS {
                // Not a wait for anything: it spreads the subscriptions over the txns' time.
                let jitter = rng.gen_range(0..=txn_micros.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_micros(jitter));
                let (mut feed, _interest) = mvcc.subscribe_with_prev_kv(b"k", b"l");
                let received = loop {
                    match feed.try_recv() {
                        Ok(WatchFeed::Revision(r)) => break r,
                        Err(TryRecvError::Empty) => {
                            assert!(Instant::now() < deadline, "no revision came");
                            std::thread::yield_now();
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                };
                let events = received.events().expect("small revisions stay in the feed");
                let number = events.revision - first;
                assert_eq!(events.events.len(), 2 * KEYS);
                for event in events.events.iter().filter(|e| e.kv.key.starts_with(b"k")) {
                    let prev = event.prev_kv.as_ref().unwrap_or_else(|| {
                        panic!(
                            "revision {}: no prev_kv on {:?} (seed {seed})",
                            events.revision,
                            String::from_utf8_lossy(&event.kv.key)
                        )
                    });
                    assert_eq!(prev.value, (number - 1).to_string().into_bytes());
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut n = 1;
    while !done.load(Ordering::SeqCst) && !subscriber.is_finished() {
        let started = Instant::now();
        node.apply(put_all(n)).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        txn_micros.store(micros, Ordering::Relaxed);
        n += 1;
    }
    subscriber
        .join()
        .expect("every revision carried its previous values");
    eprintln!(
        "{n} txns of {} puts beside {SUBSCRIPTIONS} subscriptions",
        2 * KEYS
    );
}

/// A subscriber that reads nothing while large values are written costs the feed no more than
/// its budget: the oldest revisions give up their events. Once it reads, it finds those in
/// history, and gets every revision, in order, once. A revision larger than the whole budget
/// goes out as a notice at once. (A budget of 4 MiB rather than the default 64 MiB keeps the
/// test quick; the rule is the same.)
#[tokio::test]
async fn a_subscriber_that_does_not_read_holds_no_more_than_the_feed_budget() {
    const VALUE: usize = 512 * 1024;
    const BUDGET: usize = 4 * 1024 * 1024;
    const REVISIONS: usize = 16; // twice the budget
    const BIG: usize = 5; // values in one revision larger than the budget
    let dir = TempDir::new().unwrap();
    let mut node = Node::open(dir.path());
    assert_eq!(node.mvcc.watch_feed_stats().held_bytes, 0);
    node.mvcc.set_watch_feed_budget(BUDGET);
    let mut feed = node.mvcc.subscribe();
    // Each value starts with the number of its put, so that a mix-up shows.
    let value = |n: usize| format!("{n:08}{}", "v".repeat(VALUE - 8));

    tracing::info!("--- {REVISIONS} puts of 512 KiB, unread");
    let mut most_held = 0;
    for n in 0..REVISIONS {
        node.put(&format!("k{}", n % 4), &value(n)).await;
        let held = node.mvcc.watch_feed_stats().held_bytes;
        assert!(
            held <= BUDGET,
            "after {} puts the feed holds {held} bytes, over its budget",
            n + 1
        );
        most_held = most_held.max(held);
    }
    assert!(most_held > BUDGET - 2 * VALUE, "held at most {most_held}");

    tracing::info!("--- a revision of {BIG} such values, over the budget on its own");
    let puts = (0..BIG).map(|i| put_op(&format!("big{i}"), &value(REVISIONS + i)));
    node.apply(txn(puts.collect())).await;
    assert!(node.mvcc.watch_feed_stats().held_bytes <= BUDGET);
    let last = node.mvcc.revision();
    assert_eq!(last, 2 + REVISIONS as i64);

    tracing::info!("--- the subscriber reads: what the feed kept, and history for the rest");
    let (mut kept, mut notices) = (0, 0);
    let mut received: Vec<RevisionEvents> = Vec::new();
    loop {
        let revision = match feed.try_recv() {
            Ok(WatchFeed::Revision(r)) => r,
            Err(TryRecvError::Empty) => break,
            other => panic!("unexpected {other:?}"),
        };
        let number = revision.revision();
        assert_eq!(number, received.last().map_or(2, |r| r.revision + 1));
        match revision.events() {
            Some(events) => {
                kept += 1;
                received.push(RevisionEvents::clone(&events));
            }
            None => {
                notices += 1;
                let (replayed, end) = node.mvcc.events(number, number, b"\0", b"\0", 0).unwrap();
                assert_eq!(end, number);
                received.extend(replayed);
            }
        }
    }
    eprintln!("{kept} revisions kept by the feed, {notices} notices");
    assert!(kept > 0 && notices > 0);
    assert_eq!(node.mvcc.watch_feed_stats().revisions_dropped, notices);
    drop(feed);
    assert_eq!(
        node.mvcc.watch_feed_stats().held_bytes,
        0,
        "read by everyone: no longer held"
    );
    assert_eq!(
        received.iter().map(|r| r.revision).collect::<Vec<_>>(),
        (2..=last).collect::<Vec<_>>(),
        "every revision once, in order"
    );
    for (n, revision) in received.iter().enumerate() {
        let number = |e: &Event| String::from_utf8_lossy(&e.kv.value[..8]).into_owned();
        let numbers: Vec<String> = revision.events.iter().map(number).collect();
        let expected: Vec<String> = if n < REVISIONS {
            vec![format!("{n:08}")]
        } else {
            (0..BIG).map(|i| format!("{:08}", REVISIONS + i)).collect()
        };
        assert_eq!(numbers, expected, "revision {}", revision.revision);
    }
}
