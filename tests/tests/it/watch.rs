//! The etcd v3 Watch service against a 3-member in-process cluster (and, for `etcdctl watch`,
//! against three `rampart` processes).
//!
//! Tests speak through the `etcd-client` crate where it exposes what they check, and through the
//! raw generated `WatchClient` where they need a field or a request it hides (ids, fragments,
//! progress requests, a stream that is not read). Every wait has a deadline; randomized tests
//! print their seed.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use etcd_client::{Client, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchStream};
use parking_lot::Mutex;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::watch_client::WatchClient;
use rampart_api::mvccpb;
use rampart_tests::{put, wait_until, ProcessCluster, TestCluster};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::info;

use crate::common::{connect, etcdctl_path};

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// How long a test waits for a response it expects.
const RESPONSE_WAIT: Duration = Duration::from_secs(20);
/// How long a test listens to be sure a response does not come.
const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Helpers

/// An etcd-client `Client` talking to `url` only.
async fn etcd(url: &str) -> anyhow::Result<Client> {
    connect(&[url.to_string()]).await
}

/// The next message of an etcd-client watch stream, within [`RESPONSE_WAIT`].
async fn message(stream: &mut WatchStream) -> anyhow::Result<etcd_client::WatchResponse> {
    tokio::time::timeout(RESPONSE_WAIT, stream.message())
        .await
        .context("no watch response in time")??
        .context("the watch stream ended")
}

/// `(type, key, value, mod_revision)` of each event of an etcd-client response.
fn summary(response: &etcd_client::WatchResponse) -> Vec<(EventType, String, String, i64)> {
    response
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("an event has a kv");
            (
                e.event_type(),
                kv.key_str().unwrap_or("?").to_string(),
                kv.value_str().unwrap_or("?").to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

/// A watch stream through the generated client: every field and request of the protocol.
struct RawWatch {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl RawWatch {
    async fn open(url: &str) -> anyhow::Result<RawWatch> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?;
        RawWatch::open_on(channel).await
    }

    async fn open_on(channel: Channel) -> anyhow::Result<RawWatch> {
        let (requests, receiver) = mpsc::channel(16);
        let responses = WatchClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .watch(futures::stream::unfold(
                receiver,
                |mut receiver| async move {
                    let request = receiver.recv().await?;
                    Some((request, receiver))
                },
            ))
            .await?
            .into_inner();
        Ok(RawWatch {
            requests,
            responses,
        })
    }

    async fn send(&self, request: pb::watch_request::RequestUnion) -> anyhow::Result<()> {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .context("the request stream is closed")
    }

    async fn create(&self, create: pb::WatchCreateRequest) -> anyhow::Result<()> {
        self.send(pb::watch_request::RequestUnion::CreateRequest(create))
            .await
    }

    async fn cancel(&self, watch_id: i64) -> anyhow::Result<()> {
        self.send(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id },
        ))
        .await
    }

    async fn request_progress(&self) -> anyhow::Result<()> {
        self.send(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        ))
        .await
    }

    async fn next_within(&mut self, wait: Duration) -> anyhow::Result<Option<pb::WatchResponse>> {
        match tokio::time::timeout(wait, self.responses.message()).await {
            Err(_) => Ok(None),
            Ok(message) => Ok(Some(message?.context("the watch stream ended")?)),
        }
    }

    async fn next(&mut self) -> anyhow::Result<pb::WatchResponse> {
        self.next_within(RESPONSE_WAIT)
            .await?
            .context("no watch response in time")
    }

    /// Reads the created response of a successful create and returns its watch id.
    async fn created(&mut self) -> anyhow::Result<i64> {
        let response = self.next().await?;
        ensure!(
            response.created && !response.canceled,
            "expected a created response, got {response:?}"
        );
        Ok(response.watch_id)
    }

    /// Creates a watch and returns its id.
    async fn watch(&mut self, create: pb::WatchCreateRequest) -> anyhow::Result<i64> {
        self.create(create).await?;
        self.created().await
    }

    /// Reads event responses of watch `id` until `count` events came; fails on anything else.
    async fn events(&mut self, id: i64, count: usize) -> anyhow::Result<Vec<mvccpb::Event>> {
        let mut events = Vec::new();
        while events.len() < count {
            let response = self.next().await?;
            ensure!(
                response.watch_id == id && !response.events.is_empty() && !response.canceled,
                "expected events of watch {id}, got {response:?} after {} events",
                events.len()
            );
            events.extend(response.events);
        }
        ensure!(
            events.len() == count,
            "got {} events, not {count}",
            events.len()
        );
        Ok(events)
    }

    /// Checks that nothing arrives for a while.
    async fn expect_quiet(&mut self) -> anyhow::Result<()> {
        if let Some(response) = self.next_within(QUIET).await? {
            bail!("expected no response, got {response:?}");
        }
        Ok(())
    }
}

fn create(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix_create(prefix: &str) -> pb::WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    pb::WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    }
}

fn key_of(event: &mvccpb::Event) -> String {
    String::from_utf8_lossy(&event.kv.as_ref().expect("a kv").key).into_owned()
}

fn revision_of(event: &mvccpb::Event) -> i64 {
    event.kv.as_ref().expect("a kv").mod_revision
}

fn header_revision(response: &pb::WatchResponse) -> i64 {
    response.header.as_ref().map_or(0, |h| h.revision)
}

async fn delete(client: &mut KvClient<Channel>, key: &str, range_end: &str) -> anyhow::Result<i64> {
    let response = client
        .delete_range(pb::DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.header.context("no header")?.revision)
}

/// The current revision as member `client` serves it (linearizable).
async fn current_revision(client: &mut KvClient<Channel>) -> anyhow::Result<i64> {
    let response = client
        .range(pb::RangeRequest {
            key: b"-".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.header.context("no header")?.revision)
}

/// A started cluster with a leader.
async fn cluster() -> anyhow::Result<(TestCluster, usize)> {
    cluster_with(|_| {}).await
}

async fn cluster_with(
    adjust: impl Fn(&mut rampart_server::RawConfig),
) -> anyhow::Result<(TestCluster, usize)> {
    let cluster = TestCluster::start_with(3, adjust).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader = cluster.index_of(leader);
    Ok((cluster, leader))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_receive_and_cancel_on_a_key_a_range_and_a_prefix() -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let follower = (leader + 1) % 3;
    let mut writer = etcd(&cluster.members[leader].client_url).await?;
    let mut watcher = etcd(&cluster.members[follower].client_url).await?;

    info!("--- a single key: created first, then each put and delete of that key only");
    let mut single = watcher.watch("fruit/apple", None).await?;
    let created = message(&mut single).await?;
    assert!(created.created() && !created.canceled());
    let current = writer
        .get("fruit", None)
        .await?
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        created.header().unwrap().revision(),
        current,
        "created at the current revision"
    );
    let id = created.watch_id();
    writer.put("fruit/banana", "yellow", None).await?;
    let put = writer.put("fruit/apple", "red", None).await?;
    let put_revision = put.header().unwrap().revision();
    let deleted = writer.delete("fruit/apple", None).await?;
    let delete_revision = deleted.header().unwrap().revision();
    let first = message(&mut single).await?;
    assert_eq!(first.watch_id(), id);
    assert_eq!(
        summary(&first),
        vec![(
            EventType::Put,
            "fruit/apple".into(),
            "red".into(),
            put_revision
        )]
    );
    assert_eq!(first.header().unwrap().revision(), put_revision);
    let second = message(&mut single).await?;
    assert_eq!(
        summary(&second),
        vec![(
            EventType::Delete,
            "fruit/apple".into(),
            String::new(),
            delete_revision
        )]
    );

    info!("--- cancel: a canceled response for the id, then nothing more");
    single.cancel(id).await?;
    let canceled = message(&mut single).await?;
    assert!(canceled.canceled(), "{canceled:?}");
    assert_eq!(canceled.watch_id(), id);
    writer.put("fruit/apple", "green", None).await?;
    if let Ok(Ok(Some(late))) = tokio::time::timeout(QUIET, single.message()).await {
        panic!("an event after cancel: {late:?}");
    }

    info!("--- a range [b, d) and a prefix");
    let mut range = watcher
        .watch("b", Some(WatchOptions::new().with_range("d")))
        .await?;
    assert!(message(&mut range).await?.created());
    let mut prefix = watcher
        .watch("veg/", Some(WatchOptions::new().with_prefix()))
        .await?;
    assert!(message(&mut prefix).await?.created());
    for key in ["a", "b", "c", "cz", "d", "veg", "veg/leek", "veh"] {
        writer.put(key, "v", None).await?;
    }
    let keys = |r: &etcd_client::WatchResponse| -> Vec<String> {
        summary(r).into_iter().map(|(_, k, _, _)| k).collect()
    };
    let mut in_range = Vec::new();
    while in_range.len() < 3 {
        in_range.extend(keys(&message(&mut range).await?));
    }
    assert_eq!(in_range, ["b", "c", "cz"]);
    assert_eq!(keys(&message(&mut prefix).await?), ["veg/leek"]);
    cluster.shutdown().await;
    Ok(())
}

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
async fn prev_kv_and_filters() -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let mut writer = etcd(&cluster.members[leader].client_url).await?;
    let mut watcher = etcd(&cluster.members[(leader + 1) % 3].client_url).await?;
    let mut with_prev = watcher
        .watch("k", Some(WatchOptions::new().with_prev_key()))
        .await?;
    let mut without_prev = watcher.watch("k", None).await?;
    let mut no_put = watcher
        .watch(
            "k",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        )
        .await?;
    let mut no_delete = watcher
        .watch(
            "k",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])),
        )
        .await?;
    for stream in [
        &mut with_prev,
        &mut without_prev,
        &mut no_put,
        &mut no_delete,
    ] {
        assert!(message(stream).await?.created());
    }

    info!("--- put, overwrite, delete");
    writer.put("k", "one", None).await?;
    writer.put("k", "two", None).await?;
    writer.delete("k", None).await?;

    info!("--- prev_kv: none for the creation, the old value for the overwrite and the delete");
    let mut prevs = Vec::new();
    while prevs.len() < 3 {
        let response = message(&mut with_prev).await?;
        prevs.extend(
            response
                .events()
                .iter()
                .map(|e| e.prev_kv().map(|kv| kv.value_str().unwrap().to_string())),
        );
    }
    assert_eq!(prevs, [None, Some("one".into()), Some("two".into())]);
    let mut plain = Vec::new();
    while plain.len() < 3 {
        let response = message(&mut without_prev).await?;
        plain.extend(response.events().iter().map(|e| e.prev_kv().is_some()));
    }
    assert_eq!(plain, [false, false, false], "prev_kv only when asked");

    info!("--- NOPUT sees only the delete, NODELETE only the puts");
    let deletes = message(&mut no_put).await?;
    assert_eq!(
        summary(&deletes)
            .into_iter()
            .map(|(t, ..)| t)
            .collect::<Vec<_>>(),
        [EventType::Delete]
    );
    let mut puts = Vec::new();
    while puts.len() < 2 {
        puts.extend(summary(&message(&mut no_delete).await?));
    }
    assert!(puts.iter().all(|(t, ..)| *t == EventType::Put), "{puts:?}");
    // Nothing more for either: the filtered revisions send nothing at all.
    writer.put("other", "x", None).await?;
    for stream in [&mut no_put, &mut no_delete] {
        if let Ok(Ok(Some(late))) = tokio::time::timeout(QUIET, stream.message()).await {
            panic!("unexpected response: {late:?}");
        }
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txns_events_arrive_in_one_response() -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let mut writer = etcd(&cluster.members[leader].client_url).await?;
    let old = writer.put("t/old", "x", None).await?;
    let mut watcher = etcd(&cluster.members[(leader + 1) % 3].client_url).await?;
    // From the next revision explicitly: the follower may not have applied the put yet.
    let after_old = old.header().unwrap().revision() + 1;
    let mut stream = watcher
        .watch(
            "t/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(after_old),
            ),
        )
        .await?;
    assert!(message(&mut stream).await?.created());

    let txn = Txn::new().and_then([
        TxnOp::put("t/a", "1", None),
        TxnOp::put("t/b", "2", None),
        TxnOp::delete("t/old", None),
        TxnOp::put("t/c", "3", None),
    ]);
    let revision = writer.txn(txn).await?.header().unwrap().revision();
    let response = message(&mut stream).await?;
    assert_eq!(
        summary(&response),
        vec![
            (EventType::Put, "t/a".into(), "1".into(), revision),
            (EventType::Put, "t/b".into(), "2".into(), revision),
            (EventType::Delete, "t/old".into(), String::new(), revision),
            (EventType::Put, "t/c".into(), "3".into(), revision),
        ],
        "every event of the txn, in op order, in one response"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_on_one_stream_with_automatic_and_chosen_ids() -> anyhow::Result<()> {
    let (cluster, leader) = cluster().await?;
    let mut kv = cluster.client(leader).await?;
    let mut raw = RawWatch::open(&cluster.members[(leader + 1) % 3].client_url).await?;

    info!("--- automatic ids count from 0; a chosen id is used as given");
    let a = raw.watch(create("m/a")).await?;
    let b = raw.watch(create("m/b")).await?;
    let chosen = raw
        .watch(pb::WatchCreateRequest {
            watch_id: 100,
            ..prefix_create("m/")
        })
        .await?;
    assert_eq!((a, b, chosen), (0, 1, 100));

    info!("--- a duplicate id and an empty range are refused with etcd's reasons");
    raw.create(pb::WatchCreateRequest {
        watch_id: 100,
        ..create("m/x")
    })
    .await?;
    let refused = raw.next().await?;
    assert!(refused.created && refused.canceled, "{refused:?}");
    assert_eq!(refused.watch_id, -1);
    assert_eq!(
        refused.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    raw.create(pb::WatchCreateRequest {
        range_end: b"a".to_vec(),
        ..create("m/z")
    })
    .await?;
    let refused = raw.next().await?;
    assert!(refused.created && refused.canceled && refused.watch_id == -1);
    assert_eq!(refused.cancel_reason, "mvcc: watcher range is empty");

    info!("--- an unknown id's cancel gets no answer; the next create still gets 2");
    raw.cancel(555).await?;
    let c = raw.watch(create("m/c")).await?;
    assert_eq!(c, 2);

    info!("--- each event goes to every watch it matches, once");
    put(&mut kv, "m/a", "1").await?;
    put(&mut kv, "m/c", "3").await?;
    let mut got: Vec<(i64, String)> = Vec::new();
    while got.len() < 4 {
        let response = raw.next().await?;
        for event in &response.events {
            got.push((response.watch_id, key_of(event)));
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            (a, "m/a".to_string()),
            (c, "m/c".to_string()),
            (chosen, "m/a".to_string()),
            (chosen, "m/c".to_string()),
        ]
    );
    raw.expect_quiet().await?;

    info!("--- cancel one; the others go on");
    raw.cancel(chosen).await?;
    let canceled = raw.next().await?;
    assert!(canceled.canceled && canceled.watch_id == chosen);
    put(&mut kv, "m/b", "2").await?;
    let response = raw.next().await?;
    assert_eq!(response.watch_id, b);
    raw.expect_quiet().await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_are_fragmented_when_asked() -> anyhow::Result<()> {
    // Values stay small: sled stores large pages as separate blob files, and the harness removes
    // a stopped cluster's directory while openraft may still be dropping the last database
    // handle, whose final flush then waits forever on a blob it cannot write.
    const MAX_REQUEST: usize = 16 * 1024;
    const KEYS: usize = 280;
    let (cluster, leader) = cluster_with(|raw| raw.max_request_bytes = Some(MAX_REQUEST)).await?;
    let mut kv = cluster.client(leader).await?;
    let url = cluster.members[(leader + 1) % 3].client_url.clone();
    let mut fragmented = RawWatch::open(&url).await?;
    let mut whole = RawWatch::open(&url).await?;
    let with_prev = pb::WatchCreateRequest {
        prev_kv: true,
        ..prefix_create("f/")
    };
    let fragmented_id = fragmented
        .watch(pb::WatchCreateRequest {
            fragment: true,
            ..with_prev.clone()
        })
        .await?;
    let whole_id = whole.watch(with_prev).await?;

    info!("--- {KEYS} keys of 4 KiB, then one delete of them all (with prev_kv: ~1.1 MiB)");
    let value = vec![b'x'; 4 * 1024];
    let keys: Vec<String> = (0..KEYS).map(|i| format!("f/{i:03}")).collect();
    for batch in keys.chunks(3) {
        let puts = batch
            .iter()
            .map(|key| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(pb::TxnRequest {
            success: puts,
            ..Default::default()
        })
        .await?;
    }
    fragmented.events(fragmented_id, KEYS).await?;
    whole.events(whole_id, KEYS).await?;
    let revision = delete(&mut kv, "f/", "f0").await?;

    info!("--- etcd splits at --max-request-bytes plus its 512 KiB gRPC allowance");
    let limit = MAX_REQUEST + 512 * 1024;
    let mut parts = Vec::new();
    loop {
        let response = fragmented.next().await?;
        assert_eq!(response.watch_id, fragmented_id);
        let more = response.fragment;
        parts.push(response);
        if !more {
            break;
        }
    }
    assert!(parts.len() >= 2, "expected fragments, got {}", parts.len());
    for part in &parts {
        assert!(
            part.events.len() == 1 || prost::Message::encoded_len(part) < limit,
            "a fragment of {} bytes",
            prost::Message::encoded_len(part)
        );
        assert_eq!(header_revision(part), revision);
    }
    let deleted: Vec<String> = parts.iter().flat_map(|p| &p.events).map(key_of).collect();
    assert_eq!(deleted, keys);

    info!("--- without fragment: one response with every event");
    let response = whole.next().await?;
    assert!(!response.fragment);
    assert_eq!(response.events.len(), KEYS);
    assert!(response.events.iter().all(|e| e.prev_kv.is_some()));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_watch_sees_every_write_once_across_the_loss_of_the_leader() -> anyhow::Result<()>
{
    let (mut cluster, leader) = cluster().await?;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let urls: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.client_url.clone())
        .collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_each_event() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let etcdctl = etcdctl_path()?;
    let cluster = ProcessCluster::start(3).await?;
    let urls: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.client_url.clone())
        .collect();

    info!("--- etcdctl watch --prefix foo over all three endpoints");
    let mut child = tokio::process::Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", urls.join(",")))
        .arg("--dial-timeout=5s")
        .args(["watch", "--prefix", "foo"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning etcdctl watch")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();

    info!("--- put keys until the watch prints the first one (it may start after it)");
    let mut kv = rampart_tests::kv_client(&urls[0]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        ensure!(Instant::now() < deadline, "etcdctl watch printed nothing");
        put(&mut kv, "foo/ready", "yes").await?;
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        {
            break line?.context("etcdctl watch exited")?;
        }
    };
    assert_eq!(first, "PUT");
    // Drain what the readiness puts printed, up to the next quiet moment.
    let mut rest = vec![first];
    while let Ok(line) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
        rest.push(line?.context("etcdctl watch exited")?);
    }
    ensure!(
        rest.chunks(3).all(|c| c == ["PUT", "foo/ready", "yes"]),
        "unexpected output: {rest:?}"
    );

    info!("--- a put, an unwatched put, and a delete");
    put(&mut kv, "foo1", "bar1").await?;
    put(&mut kv, "other", "x").await?;
    delete(&mut kv, "foo1", "").await?;
    let mut printed = Vec::new();
    for _ in 0..5 {
        let line = tokio::time::timeout(RESPONSE_WAIT, lines.next_line())
            .await
            .context("etcdctl watch printed nothing")??
            .context("etcdctl watch exited")?;
        printed.push(line);
    }
    assert_eq!(printed, ["PUT", "foo1", "bar1", "DELETE", "foo1"]);
    child.kill().await?;
    Ok(())
}
