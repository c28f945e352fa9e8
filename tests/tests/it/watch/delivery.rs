//! Delivery whatever the cluster and the reader do: every event once and in order across the
//! loss of the leader, a slow reader that holds back no one and later gets everything, and a
//! stopped member that ends its streams.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use parking_lot::Mutex;
use rampart_api::etcdserverpb as pb;
use rampart_tests::{put, wait_until};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tracing::info;

use super::{
    cluster, create, current_revision, etcd, key_of, prefix_create, revision_of, RawWatch,
    RESPONSE_WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_watch_sees_every_write_once_across_the_loss_of_the_leader() -> anyhow::Result<()>
{
    let (mut cluster, leader) = cluster().await?;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let urls = cluster.client_urls();
    let start = current_revision(&mut cluster.client(leader).await?).await? + 1;

    info!("--- watch the prefix on a follower from revision {start}");
    let received: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn({
        let received = received.clone();
        let mut stopped = stopped.clone();
        let urls = [urls[follower].clone(), urls[other].clone()];
        async move {
            // If the stream breaks, resume on the next member from the last revision + 1.
            let mut next = start;
            for attempt in 0.. {
                let url = &urls[attempt % urls.len()];
                let Ok(mut raw) = RawWatch::open(url).await else {
                    continue;
                };
                raw.watch(pb::WatchCreateRequest {
                    start_revision: next,
                    ..prefix_create("w/")
                })
                .await?;
                loop {
                    let response = tokio::select! {
                        _ = stopped.changed() => return anyhow::Ok(()),
                        response = raw.responses.message() => response,
                    };
                    let Ok(Some(response)) = response else {
                        info!("watch stream on {url} broke; resuming at {next}");
                        break;
                    };
                    let mut received = received.lock();
                    for event in &response.events {
                        received.push((key_of(event), revision_of(event)));
                        next = revision_of(event) + 1;
                    }
                }
            }
            Ok(())
        }
    });

    info!("--- write through the survivors while the leader stops");
    let mut acknowledged: Vec<(String, i64)> = Vec::new();
    let mut survivors = [etcd(&urls[follower]).await?, etcd(&urls[other]).await?];
    let mut stopped = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    while acknowledged.len() < 60 {
        ensure!(
            Instant::now() < deadline,
            "writes did not go through in time"
        );
        if i == 20 && !stopped {
            info!("--- stop the leader (member {leader})");
            cluster.stop(leader).await;
            stopped = true;
        }
        let key = format!("w/{i:03}");
        match survivors[i % 2].put(key.as_str(), "v", None).await {
            Ok(response) => acknowledged.push((key, response.header().unwrap().revision())),
            // An unknown outcome: the write may or may not show up; only acknowledged
            // writes are checked.
            Err(e) => info!("write {key} failed: {e}"),
        }
        i += 1;
    }

    info!("--- every acknowledged write arrives exactly once, in revision order");
    let last = acknowledged.last().unwrap().1;
    wait_until("the watcher to reach the last write", RESPONSE_WAIT, || {
        let received = received.clone();
        async move {
            Ok(received
                .lock()
                .last()
                .is_some_and(|(_, r)| *r >= last)
                .then_some(()))
        }
    })
    .await?;
    stop.send(true)?;
    reader.await??;
    let received = received.lock().clone();
    for pair in received.windows(2) {
        assert!(pair[0].1 < pair[1].1, "out of order or twice: {pair:?}");
    }
    for write in &acknowledged {
        assert!(received.contains(write), "{write:?} never arrived");
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_back_nobody_and_later_gets_everything() -> anyhow::Result<()> {
    // Enough revisions that the slow stream's watcher falls out of the store's feed ring and
    // must replay from history.
    const WRITES: usize = rampart_storage::WATCH_FEED_CAPACITY + 1500;
    const WRITERS: usize = 16;
    let (cluster, leader) = cluster().await?;
    let watching = (leader + 1) % 3;
    let url = cluster.members[watching].client_url.clone();

    info!("--- a slow stream with small HTTP/2 windows that it does not read, and a fast one");
    let small_windows = Endpoint::from_shared(url.clone())?
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await?;
    let mut slow = RawWatch::open_on(small_windows).await?;
    let slow_id = slow.watch(prefix_create("s/")).await?;
    let mut fast = RawWatch::open(&url).await?;
    let fast_id = fast.watch(prefix_create("s/")).await?;

    info!("--- {WRITES} writes from {WRITERS} writers; the fast stream keeps up");
    let value = "v".repeat(200);
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = cluster.members[leader].client_url.clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            let mut kv = rampart_tests::kv_client(&url).await?;
            let mut revisions = Vec::new();
            for i in (w..WRITES).step_by(WRITERS) {
                revisions.push(put(&mut kv, &format!("s/{i:05}"), &value).await?);
            }
            anyhow::Ok(revisions)
        }));
    }
    let mut fast_revisions = Vec::new();
    let mut writers_done = None;
    let mut last_revision = 0;
    while writers_done.is_none() || fast_revisions.len() < WRITES {
        if writers_done.is_none() && writers.iter().all(|w| w.is_finished()) {
            let mut all = Vec::new();
            for writer in writers.drain(..) {
                all.extend(writer.await??);
            }
            last_revision = all.iter().copied().max().unwrap_or(0);
            writers_done = Some(Instant::now());
            info!(
                "writes done after {:?}; fast watcher has {} events",
                started.elapsed(),
                fast_revisions.len()
            );
        }
        if let Some(done) = writers_done {
            ensure!(
                done.elapsed() < Duration::from_secs(10),
                "the fast watcher lagged: {} of {WRITES} events 10 s after the writes",
                fast_revisions.len()
            );
        }
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the writes took too long"
        );
        if let Some(response) = fast.next_within(Duration::from_millis(100)).await? {
            assert_eq!(response.watch_id, fast_id);
            fast_revisions.extend(response.events.iter().map(revision_of));
        }
    }
    assert!(fast_revisions.windows(2).all(|p| p[0] < p[1]));
    assert_eq!(fast_revisions.last(), Some(&last_revision));

    info!("--- the slow stream now reads: everything, in order, once");
    let mut slow_revisions = Vec::new();
    while slow_revisions.len() < WRITES {
        let response = slow.next().await?;
        assert_eq!(response.watch_id, slow_id, "{response:?}");
        slow_revisions.extend(response.events.iter().map(revision_of));
    }
    assert_eq!(slow_revisions, fast_revisions);
    slow.expect_quiet().await?;
    cluster.shutdown().await;
    Ok(())
}

/// A slow reader of large values costs its member's watch feed no more than the feed's byte
/// budget: past it the feed drops the oldest revisions' events, and the watcher, once its client
/// reads, finds them in history: everything, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_large_values_costs_the_feed_only_its_budget() -> anyhow::Result<()> {
    // A budget of 16 values; the writes fill the slow stream's queue (256 revisions), then
    // pass the budget many times over.
    const BUDGET: usize = 256 * 1024;
    const VALUE: usize = 16 * 1024;
    const WRITES: usize = 600;
    let (cluster, leader) = cluster().await?;
    let watching = (leader + 1) % 3;
    let url = cluster.members[watching].client_url.clone();
    let mvcc = cluster.members[watching]
        .running
        .as_ref()
        .context("the member runs")?
        .node
        .mvcc()
        .clone();
    mvcc.set_watch_feed_budget(BUDGET);

    info!("--- a stream with small HTTP/2 windows that it does not read");
    let small_windows = Endpoint::from_shared(url.clone())?
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await?;
    let mut slow = RawWatch::open_on(small_windows).await?;
    let slow_id = slow.watch(prefix_create("s/")).await?;

    info!("--- {WRITES} writes of 16 KiB; the feed never holds more than its budget");
    // Each value starts with its key's number, so that a mix-up shows.
    let value = |i: usize| format!("{i:05}{}", "v".repeat(VALUE - 5));
    let mut kv = rampart_tests::kv_client(&cluster.members[leader].client_url).await?;
    let mut revisions = Vec::new();
    let mut most_held = 0;
    for i in 0..WRITES {
        revisions.push(put(&mut kv, &format!("s/{i:05}"), &value(i)).await?);
        let held = mvcc.watch_feed_stats().held_bytes;
        ensure!(
            held <= BUDGET,
            "after {i} writes the feed holds {held} bytes"
        );
        most_held = most_held.max(held);
    }
    let last = *revisions.last().context("writes")?;
    wait_until("the member applies every write", RESPONSE_WAIT, || {
        let applied = mvcc.revision() >= last;
        async move { Ok(applied.then_some(())) }
    })
    .await?;
    let stats = mvcc.watch_feed_stats();
    info!("the feed held at most {most_held} bytes; {stats:?}");
    ensure!(stats.held_bytes <= BUDGET, "{stats:?}");
    ensure!(
        stats.revisions_dropped > 0,
        "the slow watcher never fell behind the budget: {stats:?}"
    );

    info!("--- the slow stream now reads: everything, in order, once");
    let mut received = Vec::new();
    while received.len() < WRITES {
        let response = slow.next().await?;
        ensure!(
            response.watch_id == slow_id && !response.canceled,
            "{response:?}"
        );
        received.extend(response.events);
    }
    ensure!(received.len() == WRITES, "{} events", received.len());
    for (i, event) in received.iter().enumerate() {
        let kv = event.kv.as_ref().context("an event has a kv")?;
        ensure!(
            kv.mod_revision == revisions[i] && key_of(event) == format!("s/{i:05}"),
            "event {i}: {} at {}, expected s/{i:05} at {}",
            key_of(event),
            kv.mod_revision,
            revisions[i]
        );
        ensure!(
            kv.value == value(i).into_bytes(),
            "event {i}: another value"
        );
    }
    slow.expect_quiet().await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_member_ends_its_watch_streams() -> anyhow::Result<()> {
    let (mut cluster, leader) = cluster().await?;
    let member = (leader + 1) % 3;
    let mut raw = RawWatch::open(&cluster.members[member].client_url).await?;
    raw.watch(create("anything")).await?;

    info!("--- stop the member while its watch stream is open and unread");
    tokio::time::timeout(Duration::from_secs(20), cluster.stop(member))
        .await
        .context("stopping a member with an open watch stream hung")?;
    match raw.responses.message().await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert_eq!(status.message(), "etcdserver: server stopped");
        }
        Ok(None) => {}
        Ok(Some(response)) => bail!("unexpected response {response:?}"),
    }
    cluster.shutdown().await;
    Ok(())
}
