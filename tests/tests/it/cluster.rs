//! In-process cluster tests: leader loss, partitions, healing and catch-up by snapshot, with the
//! peer links cut and delayed through the harness's `LinkFaults`.

use std::time::Duration;

use anyhow::Context;
use rampart_api::etcdserverpb as pb;
use rampart_tests::{get, put, wait_until, TestCluster};
use tracing::info;

const LEADER_WAIT: Duration = Duration::from_secs(20);
const CATCH_UP: Duration = Duration::from_secs(30);

/// Waits until member `index` serves `key = value` from its own state.
async fn wait_value(
    cluster: &TestCluster,
    index: usize,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let url = cluster.members[index].client_url.clone();
    wait_until(
        &format!("member {index} to hold {key}={value}"),
        CATCH_UP,
        || {
            let url = url.clone();
            async move {
                let mut client = rampart_tests::kv_client(&url).await?;
                Ok((get(&mut client, key, true).await?.as_deref() == Some(value)).then_some(()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_the_loss_of_the_leader() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let follower = (leader_index + 1) % 3;

    info!("--- write through a follower, read linearizably from every member");
    let mut client = cluster.client(follower).await?;
    put(&mut client, "before", "1").await?;
    for i in 0..3 {
        let mut c = cluster.client(i).await?;
        assert_eq!(
            get(&mut c, "before", false).await?.as_deref(),
            Some("1"),
            "member {i}"
        );
    }

    info!("--- stop the leader; the other two elect a new one and keep writing");
    cluster.stop(leader_index).await;
    let survivors: Vec<_> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let new_leader = cluster
        .wait_for_leader_among(&survivors, LEADER_WAIT)
        .await?;
    assert_ne!(new_leader, leader);
    let mut client = cluster.client(follower).await?;
    wait_until("a write to succeed after the election", LEADER_WAIT, || {
        let mut client = client.clone();
        async move { Ok(put(&mut client, "after", "2").await.ok().map(|_| ())) }
    })
    .await?;
    assert_eq!(
        get(&mut client, "before", false).await?.as_deref(),
        Some("1")
    );

    info!("--- restart the old leader; it catches up by itself");
    cluster.restart(leader_index).await?;
    wait_value(&cluster, leader_index, "after", "2").await?;
    wait_value(&cluster, leader_index, "before", "1").await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer() -> anyhow::Result<()> {
    const WRITES: usize = 64;
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let follower = (cluster.index_of(leader) + 1) % 3;
    let client = cluster.client(follower).await?;
    let base = put(&mut client.clone(), "base", "0").await?;

    info!("--- {WRITES} puts and one put that must fail, all at once through a follower");
    let puts = (0..WRITES).map(|i| {
        let mut client = client.clone();
        async move { put(&mut client, &format!("k{i}"), &format!("v{i}")).await }
    });
    let failing = {
        let mut client = client.clone();
        async move {
            client
                .put(pb::PutRequest {
                    key: b"missing".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                })
                .await
        }
    };
    let (revisions, failed) = tokio::join!(futures::future::join_all(puts), failing);
    let status = failed.expect_err("a put with ignore_value on a missing key must fail");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "etcdserver: key not found");

    // Each write has a revision of its own, and together they are the next WRITES revisions.
    let mut revisions = revisions
        .into_iter()
        .collect::<anyhow::Result<Vec<i64>>>()?;
    revisions.sort_unstable();
    let expected: Vec<i64> = (base + 1..=base + WRITES as i64).collect();
    assert_eq!(revisions, expected);
    for i in (0..WRITES).step_by(7) {
        for member in 0..3 {
            let mut c = cluster.client(member).await?;
            let value = get(&mut c, &format!("k{i}"), false).await?;
            assert_eq!(value, Some(format!("v{i}")), "k{i} on member {member}");
        }
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_serves_stale_reads_and_refuses_writes() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let minority = (leader_index + 1) % 3;
    let majority: Vec<_> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != cluster.members[minority].id)
        .collect();
    let mut minority_client = cluster.client(minority).await?;
    let mut leader_client = cluster.client(leader_index).await?;
    put(&mut leader_client, "k", "old").await?;
    wait_value(&cluster, minority, "k", "old").await?;

    info!("--- isolate one follower");
    cluster
        .faults
        .isolate(cluster.members[minority].id, &cluster.ids());

    info!("--- the majority keeps writing");
    put(&mut leader_client, "k", "new").await?;
    assert_eq!(
        get(&mut leader_client, "k", false).await?.as_deref(),
        Some("new")
    );

    info!("--- the minority answers serializable reads from its own, stale state");
    assert_eq!(
        get(&mut minority_client, "k", true).await?.as_deref(),
        Some("old")
    );

    info!("--- the minority refuses writes and linearizable reads with an Unavailable error");
    let write = minority_client
        .put(pb::PutRequest {
            key: b"k".to_vec(),
            value: b"minority".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("a write on a minority must fail");
    assert_eq!(write.code(), tonic::Code::Unavailable, "{write:?}");
    assert!(write.message().starts_with("etcdserver: "), "{write:?}");
    let read = get(&mut minority_client, "k", false)
        .await
        .expect_err("a linearizable read on a minority must fail");
    let status = read
        .downcast_ref::<tonic::Status>()
        .context("not a gRPC status")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    info!("--- heal: the minority catches up and the refused write is nowhere");
    cluster.faults.heal();
    wait_value(&cluster, minority, "k", "new").await?;
    let leader_now = cluster.wait_for_leader(LEADER_WAIT).await?;
    assert!(majority.contains(&leader_now) || leader_now == cluster.members[minority].id);
    assert_eq!(
        get(&mut minority_client, "k", false).await?.as_deref(),
        Some("new")
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_its_writes_fail() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let old_leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let old_index = cluster.index_of(old_leader);
    let mut old_client = cluster.client(old_index).await?;
    put(&mut old_client, "k", "v1").await?;

    info!("--- cut the leader off; the other two elect a new leader");
    cluster.faults.isolate(old_leader, &cluster.ids());
    let others: Vec<_> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != old_leader)
        .collect();
    let new_leader = cluster.wait_for_leader_among(&others, LEADER_WAIT).await?;
    let mut new_client = cluster.client(cluster.index_of(new_leader)).await?;
    wait_until("a write on the new leader", LEADER_WAIT, || {
        let mut client = new_client.clone();
        async move { Ok(put(&mut client, "k", "v2").await.ok().map(|_| ())) }
    })
    .await?;

    info!("--- the old leader cannot commit: its write fails and changes nothing");
    let err = put(&mut old_client, "k", "stale-leader")
        .await
        .expect_err("the isolated leader must not acknowledge a write");
    let status = err
        .downcast_ref::<tonic::Status>()
        .context("not a gRPC status")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    info!("--- heal: everyone converges on the new leader's value");
    cluster.faults.heal();
    wait_value(&cluster, old_index, "k", "v2").await?;
    assert_eq!(
        get(&mut new_client, "k", false).await?.as_deref(),
        Some("v2")
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_is_caught_up_by_snapshot() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(3, |raw| {
        raw.snapshot_count = Some(20);
        raw.snapshot_catchup_entries = Some(5);
    })
    .await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let lagging = (leader_index + 1) % 3;
    let mut client = cluster.client(leader_index).await?;
    put(&mut client, "first", "1").await?;
    wait_value(&cluster, lagging, "first", "1").await?;

    info!("--- cut a follower off while the others write past several snapshots");
    cluster
        .faults
        .isolate(cluster.members[lagging].id, &cluster.ids());
    for i in 0..150 {
        put(&mut client, &format!("key-{i:03}"), &format!("value-{i}")).await?;
    }
    let lagging_applied = cluster.applied_index(lagging);
    let leader_metrics = cluster.members[leader_index]
        .running
        .as_ref()
        .context("leader stopped")?
        .node
        .metrics();
    let purged = wait_until("the leader to purge its log", CATCH_UP, || {
        let purged = cluster.members[leader_index]
            .running
            .as_ref()
            .and_then(|r| r.node.metrics().purged)
            .map_or(0, |id| id.index);
        async move { Ok((purged > lagging_applied + 1).then_some(purged)) }
    })
    .await?;
    info!(
        purged,
        lagging_applied,
        leader_applied = ?leader_metrics.last_applied,
        "--- the entries the follower misses are gone from the leader's log"
    );

    info!("--- heal: the follower must install a snapshot to catch up");
    cluster.faults.heal();
    wait_value(&cluster, lagging, "key-149", "value-149").await?;
    wait_value(&cluster, lagging, "first", "1").await?;
    // The state machine holds the snapshot's data before openraft publishes
    // the snapshot in the member's metrics, so wait for the metrics too.
    let follower = cluster.members[lagging]
        .running
        .as_ref()
        .context("follower stopped")?;
    let snapshot = wait_until("the follower to report its snapshot", CATCH_UP, || {
        let snapshot = follower.node.metrics().snapshot;
        async move { Ok(snapshot) }
    })
    .await?;
    assert!(
        snapshot.index > lagging_applied,
        "snapshot {snapshot:?} is older than the gap"
    );

    info!("--- the follower's whole keyspace equals the leader's");
    let all = pb::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        serializable: true,
        ..Default::default()
    };
    let mut lagging_client = cluster.client(lagging).await?;
    let theirs = lagging_client.range(all.clone()).await?.into_inner();
    let ours = client.range(all).await?.into_inner();
    assert_eq!(theirs.kvs, ours.kvs);
    assert_eq!(theirs.count, 151);
    cluster.shutdown().await;
    Ok(())
}

/// `--snapshot-count` and `--snapshot-catchup-entries` count requests, as etcd's do, though a
/// Rampart log entry may batch many: concurrent puts fill few entries, and the log is still
/// snapshotted and purged after that many requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_snapshotted_and_purged_by_requests_not_entries() -> anyhow::Result<()> {
    const SNAPSHOT_COUNT: u64 = 300;
    const CATCHUP: u64 = 50;
    let cluster = TestCluster::start_with(3, |raw| {
        raw.snapshot_count = Some(SNAPSHOT_COUNT);
        raw.snapshot_catchup_entries = Some(CATCHUP);
    })
    .await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let client = cluster.client(leader_index).await?;
    let node = &cluster.members[leader_index]
        .running
        .as_ref()
        .context("leader stopped")?
        .node;

    info!("--- snapshot-count puts, from 64 clients at once");
    let mut written = 0;
    while written < SNAPSHOT_COUNT {
        let mut round = tokio::task::JoinSet::new();
        for i in 0..64 {
            let mut client = client.clone();
            let key = format!("key-{:05}", written + i);
            round.spawn(async move { put(&mut client, &key, "v").await });
        }
        while let Some(done) = round.join_next().await {
            done??;
        }
        written += 64;
    }
    wait_until("the leader to snapshot", CATCH_UP, || async {
        Ok(node.metrics().snapshot)
    })
    .await?;
    let snapshot = node.metrics().snapshot.context("no snapshot")?;
    info!(written, ?snapshot, "--- the first snapshot");
    assert!(
        snapshot.index + 1 < SNAPSHOT_COUNT,
        "the snapshot at entry {} came from openraft's count of entries",
        snapshot.index
    );

    info!("--- the purge keeps the last catch-up requests, fewer entries than that");
    let purged = wait_until("the leader to purge its log", CATCH_UP, || async {
        Ok(node.metrics().purged)
    })
    .await?;
    assert!(
        snapshot.index - purged.index < CATCHUP,
        "purged up to {} behind a snapshot at {}: openraft's count of entries",
        purged.index,
        snapshot.index
    );

    info!("--- every put is still there");
    let mut client = client;
    let all = pb::RangeRequest {
        key: b"key-".to_vec(),
        range_end: b"key.".to_vec(),
        count_only: true,
        ..Default::default()
    };
    assert_eq!(client.range(all).await?.into_inner().count, written as i64);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_links_delay_but_do_not_break_the_cluster() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(LEADER_WAIT).await?;
    info!("--- delay every link by 30 ms");
    for &a in &cluster.ids() {
        for &b in &cluster.ids() {
            if a != b {
                cluster.faults.delay(a, b, Duration::from_millis(30));
            }
        }
    }
    for i in 0..3 {
        let mut client = cluster.client(i).await?;
        put(&mut client, &format!("slow-{i}"), "v").await?;
    }
    for i in 0..3 {
        let mut client = cluster.client(i).await?;
        for j in 0..3 {
            assert_eq!(
                get(&mut client, &format!("slow-{j}"), false)
                    .await?
                    .as_deref(),
                Some("v")
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_data_directory_stops_the_member_at_start() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(1).await?;
    cluster.wait_for_leader(LEADER_WAIT).await?;
    let mut client = cluster.client(0).await?;
    for i in 0..20 {
        put(&mut client, &format!("k{i}"), "v").await?;
    }
    cluster.stop(0).await;

    info!("--- flip bytes all over the member's database file");
    let db_file = cluster.data_dir(0).join("db").join("db");
    let mut bytes = std::fs::read(&db_file).context("reading the sled file")?;
    anyhow::ensure!(bytes.len() > 200, "database file unexpectedly small");
    for i in (64..bytes.len()).step_by(61) {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(&db_file, bytes)?;

    info!("--- the member refuses to start and names its data directory");
    let error = match cluster.restart(0).await {
        Ok(()) => anyhow::bail!("a member started on a corrupt data directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("data directory"), "{error}");
    Ok(())
}

/// A follower that missed many large writes catches up by the log. The leader sends a lagging
/// follower its entries in messages bounded in bytes: one message of every missed entry would
/// take longer to deliver and store than openraft lets an AppendEntries call run (one heartbeat
/// interval), fail, and be sent again whole, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_many_large_writes_catches_up_by_the_log() -> anyhow::Result<()> {
    const VALUES: usize = 40;
    const VALUE_BYTES: usize = 1 << 20;
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let lagging = (leader_index + 1) % 3;
    let mut client = cluster.client(leader_index).await?;
    put(&mut client, "first", "1").await?;
    wait_value(&cluster, lagging, "first", "1").await?;

    info!("--- cut a follower off while the others write {VALUES} values of {VALUE_BYTES} bytes");
    cluster
        .faults
        .isolate(cluster.members[lagging].id, &cluster.ids());
    for i in 0..VALUES {
        client
            .put(pb::PutRequest {
                key: format!("big-{i:03}").into_bytes(),
                value: vec![b'v'; VALUE_BYTES],
                ..Default::default()
            })
            .await
            .with_context(|| format!("writing big-{i:03}"))?;
    }
    put(&mut client, "last", "1").await?;

    info!("--- heal: the follower receives what it missed from the leader's log");
    cluster.faults.heal();
    wait_value(&cluster, lagging, "last", "1").await?;
    let follower = cluster.members[lagging]
        .running
        .as_ref()
        .context("follower stopped")?;
    assert!(
        follower.node.metrics().snapshot.is_none(),
        "the follower caught up by snapshot, not by the log"
    );
    cluster.shutdown().await;
    Ok(())
}
