//! What a watch response carries: `prev_kv` when asked, only the event types the filters let
//! through, every event of a txn together, and a large revision in fragments when asked.

use anyhow::{ensure, Context};
use etcd_client::{EventType, Txn, TxnOp, WatchFilterType, WatchOptions};
use rampart_api::etcdserverpb as pb;
use tracing::info;

use super::{
    cluster, cluster_with, delete, etcd, header_revision, key_of, message, prefix_create, summary,
    RawWatch, QUIET,
};

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

/// `prev_kv` watches created one after another while writes go on: whichever revision a
/// creation falls beside, every event it delivers carries its key's previous value. Each writer
/// overwrites its own key with its count, so the previous value is always the count before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_watches_created_during_writes_get_every_previous_value() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const WRITERS: usize = 8;
    const WATCHES: usize = 40;
    const EVENTS_PER_WATCH: usize = 10;
    let (cluster, leader) = cluster().await?;
    let follower = (leader + 1) % 3;

    info!("--- {WRITERS} writers, each overwriting its key with its count");
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = cluster.members[leader].client_url.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut kv = rampart_tests::kv_client(&url).await?;
            let mut count = 0u64;
            while !stop.load(Ordering::SeqCst) {
                rampart_tests::put(&mut kv, &format!("p/{w}"), &count.to_string()).await?;
                count += 1;
            }
            anyhow::Ok(count)
        }));
    }

    info!("--- {WATCHES} prev_kv watches on a follower, one after another");
    let mut stream = RawWatch::open(&cluster.members[follower].client_url).await?;
    for _ in 0..WATCHES {
        let id = stream
            .watch(pb::WatchCreateRequest {
                prev_kv: true,
                ..prefix_create("p/")
            })
            .await?;
        for event in stream.events(id, EVENTS_PER_WATCH).await? {
            let kv = event.kv.as_ref().context("an event has a kv")?;
            let count: u64 = String::from_utf8(kv.value.clone())?.parse()?;
            let prev = event.prev_kv.as_ref().map(|p| p.value.clone());
            let expected = count.checked_sub(1).map(|c| c.to_string().into_bytes());
            ensure!(
                prev == expected,
                "{}={count} at revision {}: prev_kv {prev:?}",
                key_of(&event),
                kv.mod_revision
            );
        }
        stream.cancel(id).await?;
        // Events of the watch may still come before its canceled response.
        loop {
            let response = stream.next().await?;
            if response.canceled {
                ensure!(response.watch_id == id, "{response:?}");
                break;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut writes = 0;
    for writer in writers {
        writes += writer.await??;
    }
    info!("{writes} writes beside {WATCHES} watches");
    cluster.shutdown().await;
    Ok(())
}
