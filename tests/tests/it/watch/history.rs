//! Where a watch starts: replaying history from a past revision, waiting for a future one, and
//! refusing a compacted one with the compact revision.

use std::collections::HashMap;

use anyhow::Context;
use etcd_client::WatchOptions;
use rampart_api::etcdserverpb as pb;
use rampart_tests::put;
use tokio::time::Instant;
use tracing::info;

use super::{cluster, create, etcd, message, revision_of, summary, RawWatch, RESPONSE_WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revisions_replay_history_or_wait_for_the_future() -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let mut kv = cluster.client(leader).await?;
    let url = cluster.members[(leader + 2) % 3].client_url.clone();

    info!("--- five puts of one key make history");
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(put(&mut kv, "h/key", &format!("v{i}")).await?);
    }
    // The watching member may apply the last put a moment after the leader answered.
    let mut raw = RawWatch::open(&url).await?;

    info!("--- from the second put's revision: that put and the three after, in order");
    let id = raw
        .watch(pb::WatchCreateRequest {
            start_revision: revisions[1],
            ..create("h/key")
        })
        .await?;
    let events = raw.events(id, 4).await?;
    let replayed: Vec<i64> = events.iter().map(revision_of).collect();
    assert_eq!(replayed, revisions[1..]);
    let values: Vec<_> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.kv.as_ref().unwrap().value).into_owned())
        .collect();
    assert_eq!(values, ["v1", "v2", "v3", "v4"]);

    info!("--- start revision 0: only what comes next");
    let now = raw.watch(create("h/key")).await?;
    let next = put(&mut kv, "h/key", "v5").await?;
    // Both watches see it, each once.
    let mut seen = HashMap::new();
    while seen.len() < 2 {
        let response = raw.next().await?;
        assert_eq!(response.events.len(), 1, "{response:?}");
        assert_eq!(revision_of(&response.events[0]), next);
        assert!(
            seen.insert(response.watch_id, next).is_none(),
            "event twice: {response:?}"
        );
    }
    assert!(seen.contains_key(&id) && seen.contains_key(&now));

    info!("--- a future start revision: nothing until it, then from it on");
    let future = raw
        .watch(pb::WatchCreateRequest {
            start_revision: next + 3,
            ..create("h/other")
        })
        .await?;
    put(&mut kv, "h/other", "a").await?; // next + 1: too early
    put(&mut kv, "h/other", "b").await?; // next + 2: too early
    let wanted = put(&mut kv, "h/other", "c").await?;
    assert_eq!(wanted, next + 3);
    let response = raw.next().await?;
    assert_eq!(response.watch_id, future, "{response:?}");
    assert_eq!(response.events.len(), 1);
    assert_eq!(revision_of(&response.events[0]), wanted);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_compacted_revision_is_canceled_with_the_compact_revision(
) -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let mut writer = etcd(&cluster.members[leader].client_url).await?;
    let mut revisions = Vec::new();
    for i in 0..4 {
        let put = writer.put("c/key", format!("v{i}"), None).await?;
        revisions.push(put.header().unwrap().revision());
    }
    writer.compact(revisions[2], None).await?;
    let url = cluster.members[(leader + 1) % 3].client_url.clone();
    let mut watcher = etcd(&url).await?;

    info!("--- below the compact revision: created, then canceled with compact_revision");
    // The follower may apply the compaction a moment after the leader answered.
    let mut canceled = None;
    let deadline = Instant::now() + RESPONSE_WAIT;
    while canceled.is_none() && Instant::now() < deadline {
        let mut stream = watcher
            .watch(
                "c/key",
                Some(WatchOptions::new().with_start_revision(revisions[1])),
            )
            .await?;
        let created = message(&mut stream).await?;
        assert!(created.created() && !created.canceled());
        let next = message(&mut stream).await?;
        if next.canceled() {
            canceled = Some(next);
        }
    }
    let canceled = canceled.context("the watch was never canceled as compacted")?;
    assert_eq!(canceled.compact_revision(), revisions[2]);
    assert!(canceled.events().is_empty());

    info!("--- at the compact revision itself: the history from there");
    let mut stream = watcher
        .watch(
            "c/key",
            Some(WatchOptions::new().with_start_revision(revisions[2])),
        )
        .await?;
    assert!(message(&mut stream).await?.created());
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        replayed.extend(summary(&message(&mut stream).await?));
    }
    let replayed: Vec<_> = replayed.into_iter().map(|(_, _, v, r)| (v, r)).collect();
    assert_eq!(
        replayed,
        [
            ("v2".to_string(), revisions[2]),
            ("v3".to_string(), revisions[3])
        ]
    );

    info!("--- a negative start revision is refused as compacted (current etcd)");
    let mut raw = RawWatch::open(&url).await?;
    raw.create(pb::WatchCreateRequest {
        start_revision: -1,
        ..create("c/key")
    })
    .await?;
    let refused = raw.next().await?;
    assert!(refused.created && refused.canceled && refused.watch_id == -1);
    assert_eq!(
        refused.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_comes_many_revisions_to_a_response() -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let mut kv = cluster.client(leader).await?;
    let url = cluster.members[leader].client_url.clone();
    let writes = 1500;
    let mut first = 0;
    for i in 0..writes {
        let revision = put(&mut kv, &format!("batch/{}", i % 10), "v").await?;
        if i == 0 {
            first = revision;
        }
    }
    let mut raw = RawWatch::open(&url).await?;
    let id = raw
        .watch(pb::WatchCreateRequest {
            start_revision: first,
            range_end: b"batch0".to_vec(),
            ..create("batch/")
        })
        .await?;
    let (mut responses, mut revisions) = (0, Vec::new());
    while revisions.len() < writes {
        let response = raw.next().await?;
        assert_eq!(response.watch_id, id, "{response:?}");
        responses += 1;
        revisions.extend(response.events.iter().map(revision_of));
    }
    let expected: Vec<i64> = (first..first + writes as i64).collect();
    assert_eq!(revisions, expected, "every revision once, in order");
    // etcd sends up to 1,000 revisions a response; so does a replay here.
    assert!(
        responses <= 2,
        "{writes} revisions came in {responses} responses"
    );
    cluster.shutdown().await;
    Ok(())
}
