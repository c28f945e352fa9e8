//! Creating and canceling watches: on a key, a range and a prefix through `etcd-client`, and
//! many on one raw stream, with automatic and chosen ids and etcd's reasons for refusing one.

use etcd_client::{EventType, WatchOptions};
use rampart_api::etcdserverpb as pb;
use rampart_tests::put;
use tracing::info;

use super::{cluster, create, etcd, key_of, message, prefix_create, summary, RawWatch, QUIET};

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
