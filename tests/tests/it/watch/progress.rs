//! Progress notifications, periodic (`progress_notify`) and requested: each names a revision
//! whose watched events have all been sent before it.

use std::time::Duration;

use anyhow::ensure;
use rampart_api::etcdserverpb as pb;
use rampart_tests::put;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tracing::info;

use super::{
    cluster, cluster_with, create, current_revision, etcd, header_revision, message, prefix_create,
    revision_of, RawWatch, RESPONSE_WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_never_claim_undelivered_revisions() -> anyhow::Result<()> {
    let (cluster, leader) =
        cluster_with(|raw| raw.experimental_watch_progress_notify_interval = Some("500ms".into()))
            .await?;
    let watching = (leader + 1) % 3;
    let mut kv = cluster.client(leader).await?;
    let mut raw = RawWatch::open(&cluster.members[watching].client_url).await?;
    let mut plain = RawWatch::open(&cluster.members[watching].client_url).await?;

    info!("--- an idle watch with progress_notify hears the current revision");
    let current = put(&mut kv, "unwatched", "x").await?;
    let id = raw
        .watch(pb::WatchCreateRequest {
            progress_notify: true,
            ..prefix_create("p/")
        })
        .await?;
    plain.watch(prefix_create("p/")).await?;
    let started = Instant::now();
    // The follower may apply the put a moment after the leader answered: until then its
    // notifications name the revision before.
    loop {
        let notification = raw.next().await?;
        assert!(
            notification.events.is_empty() && !notification.created && !notification.canceled,
            "{notification:?}"
        );
        assert_eq!(notification.watch_id, id);
        let claimed = header_revision(&notification);
        assert!(
            claimed <= current,
            "a notification at {claimed}, past {current}"
        );
        if claimed == current {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "the notification took {elapsed:?}"
    );
    plain.expect_quiet().await?;

    info!("--- writes in and out of the watched prefix while notifications come");
    let seed: u64 = rand::random();
    info!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut watched_revisions = Vec::new();
    let mut writes = Some(tokio::spawn({
        let url = cluster.members[leader].client_url.clone();
        // Mostly unwatched keys, with pauses, so that some intervals have no watched event.
        let plan: Vec<(bool, u64)> = (0..80)
            .map(|_| (rng.gen_bool(0.1), rng.gen_range(0..150)))
            .collect();
        async move {
            let mut kv = rampart_tests::kv_client(&url).await?;
            let mut watched = Vec::new();
            for (i, (inside, pause_ms)) in plan.into_iter().enumerate() {
                let key = if inside {
                    format!("p/{i}")
                } else {
                    format!("q/{i}")
                };
                let revision = put(&mut kv, &key, "v").await?;
                if inside {
                    watched.push(revision);
                }
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            anyhow::Ok(watched)
        }
    }));
    // Read until the writes are done and one more notification has come after them.
    let mut log: Vec<pb::WatchResponse> = Vec::new();
    let mut done_at: Option<i64> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ensure!(Instant::now() < deadline, "the writes took too long");
        if let Some(finished) = writes.take_if(|w| w.is_finished()) {
            watched_revisions = finished.await??;
            done_at = Some(current_revision(&mut kv).await?);
        }
        let Some(response) = raw.next_within(Duration::from_millis(200)).await? else {
            continue;
        };
        let is_progress = response.events.is_empty();
        let revision = header_revision(&response);
        log.push(response);
        if is_progress && done_at.is_some_and(|done| revision >= done) {
            break;
        }
    }

    info!("--- every notification comes after every watched event at or below it");
    let mut delivered = Vec::new();
    let mut notifications = 0;
    for response in &log {
        assert_eq!(response.watch_id, id);
        if response.events.is_empty() {
            notifications += 1;
            let claimed = header_revision(response);
            let owed: Vec<_> = watched_revisions
                .iter()
                .filter(|&&r| r <= claimed && !delivered.contains(&r))
                .collect();
            assert!(
                owed.is_empty(),
                "a notification at {claimed} came before the events of {owed:?} (seed {seed})"
            );
        } else {
            delivered.extend(response.events.iter().map(revision_of));
        }
    }
    assert_eq!(delivered, watched_revisions, "seed {seed}");
    assert!(notifications >= 2, "only {notifications} notifications");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_request_is_answered_once_every_watch_is_synced() -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let mut kv = cluster.client(leader).await?;
    let url = cluster.members[leader].client_url.clone();

    info!("--- idle watches: watch id -1 at the current revision");
    let mut raw = RawWatch::open(&url).await?;
    raw.watch(create("r/a")).await?;
    raw.watch(create("r/b")).await?;
    let current = put(&mut kv, "elsewhere", "x").await?;
    // The put's feed message may still be on its way to the watchers: ask until they have it.
    let deadline = Instant::now() + RESPONSE_WAIT;
    loop {
        ensure!(
            Instant::now() < deadline,
            "no progress notification at {current}"
        );
        raw.request_progress().await?;
        let response = raw.next().await?;
        ensure!(
            response.watch_id == -1 && response.events.is_empty(),
            "{response:?}"
        );
        let claimed = header_revision(&response);
        assert!(
            claimed <= current,
            "a notification at {claimed}, past {current}"
        );
        if claimed == current {
            break;
        }
    }

    info!("--- a stream replaying history: the answer waits for the replay");
    let mut first = None;
    for i in 0..300 {
        let revision = put(&mut kv, &format!("r/h{i:03}"), "v").await?;
        first.get_or_insert(revision);
    }
    let last = current_revision(&mut kv).await?;
    let mut replaying = RawWatch::open(&url).await?;
    let id = replaying
        .watch(pb::WatchCreateRequest {
            start_revision: first.unwrap(),
            ..prefix_create("r/h")
        })
        .await?;
    replaying.request_progress().await?;
    let mut events = 0;
    loop {
        let response = replaying.next().await?;
        if response.watch_id == -1 {
            assert_eq!(events, 300, "the notification came before the replay ended");
            assert!(header_revision(&response) >= last);
            break;
        }
        assert_eq!(response.watch_id, id);
        events += response.events.len();
    }

    info!("--- etcd-client's request_progress");
    let mut client = etcd(&url).await?;
    let mut stream = client.watch("r/z", None).await?;
    assert!(message(&mut stream).await?.created());
    stream.request_progress().await?;
    let response = message(&mut stream).await?;
    assert_eq!(response.watch_id(), -1);
    assert!(response.header().unwrap().revision() >= last);
    cluster.shutdown().await;
    Ok(())
}
