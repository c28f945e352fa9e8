//! Corruption detection (`--experimental-initial-corrupt-check`,
//! `--experimental-corrupt-check-time`): one member's stored value is changed behind Raft's
//! back while it is stopped (`Store::corrupt_value_for_tests`), and it is restarted. The
//! start-up check keeps it from ever serving a client; the periodic check finds it within a few
//! intervals. Either way its CORRUPT alarm is raised through Raft, it refuses clients with
//! etcd's "etcdserver: corrupt cluster" (code DataLoss), and the healthy majority goes on
//! serving.

use std::time::Duration;

use anyhow::{ensure, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_server::RawConfig;
use rampart_storage::Store;
use rampart_tests::{get, put, wait_until, TestCluster};
use tonic::Code;
use tracing::info;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const DETECTION_WAIT: Duration = Duration::from_secs(30);
const CORRUPT: &str = "etcdserver: corrupt cluster";

/// Starts three members with `adjust`ed settings, writes a few keys, and stops a follower once
/// every member holds them; returns the cluster, the leader's index and the follower's.
async fn written_cluster(
    adjust: impl Fn(&mut RawConfig),
) -> anyhow::Result<(TestCluster, usize, usize)> {
    let mut cluster = TestCluster::start_with(3, adjust).await?;
    let leader = cluster.index_of(cluster.wait_for_leader(LEADER_WAIT).await?);
    let victim = (leader + 1) % 3;
    let mut client = cluster.client(leader).await?;
    for i in 0..10 {
        put(&mut client, &format!("key-{i}"), "right").await?;
    }
    let last = put(&mut client, "k", "right").await?;
    wait_until("every member to hold the keys", DETECTION_WAIT, || {
        let cluster = &cluster;
        async move {
            let revisions: Vec<i64> = cluster
                .members
                .iter()
                .filter_map(|m| m.running.as_ref().map(|r| r.node.mvcc().revision()))
                .collect();
            Ok(revisions.iter().all(|&r| r == last).then_some(()))
        }
    })
    .await?;
    info!(
        victim,
        "--- stop a follower and change one of its values behind Raft's back"
    );
    cluster.stop(victim).await;
    {
        let store = Store::open(&cluster.data_dir(victim))?;
        ensure!(
            store.corrupt_value_for_tests(b"k", b"wrong")?,
            "no value of k stored"
        );
    }
    Ok((cluster, leader, victim))
}

/// Member `index`'s answer to a serializable read of `k`.
async fn read_k(
    cluster: &TestCluster,
    index: usize,
) -> anyhow::Result<Result<pb::RangeResponse, tonic::Status>> {
    let mut client = cluster.client(index).await?;
    let request = pb::RangeRequest {
        key: b"k".to_vec(),
        serializable: true,
        ..Default::default()
    };
    Ok(client.range(request).await.map(|r| r.into_inner()))
}

/// Waits until member `at` lists exactly the CORRUPT alarm of `victim`'s id.
async fn wait_alarm(cluster: &TestCluster, at: usize, victim: usize) -> anyhow::Result<()> {
    let url = cluster.client_urls()[at].clone();
    let expected = vec![pb::AlarmMember {
        member_id: cluster.members[victim].id,
        alarm: pb::AlarmType::Corrupt as i32,
    }];
    wait_until("the CORRUPT alarm", DETECTION_WAIT, || {
        let (url, expected) = (url.clone(), expected.clone());
        async move {
            let listed = MaintenanceClient::connect(url)
                .await?
                .alarm(pb::AlarmRequest::default())
                .await?
                .into_inner()
                .alarms;
            Ok((listed == expected).then_some(()))
        }
    })
    .await
}

/// Checks that the corrupt member refuses a read with etcd's error, and the others serve the
/// right value.
async fn only_the_victim_refuses(cluster: &TestCluster, victim: usize) -> anyhow::Result<()> {
    let answer = read_k(cluster, victim).await?;
    match answer {
        Err(status) => ensure!(
            status.code() == Code::DataLoss && status.message() == CORRUPT,
            "the corrupt member answered {status:?}"
        ),
        Ok(served) => anyhow::bail!("the corrupt member served {served:?}"),
    }
    for index in (0..3).filter(|&i| i != victim) {
        let mut client = cluster.client(index).await?;
        let value = get(&mut client, "k", false).await?;
        ensure!(
            value.as_deref() == Some("right"),
            "member {index} read {value:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_check_keeps_a_corrupt_member_from_serving() -> anyhow::Result<()> {
    let (mut cluster, leader, victim) =
        written_cluster(|raw| raw.experimental_initial_corrupt_check = Some(true)).await?;
    cluster.restart(victim).await?;
    info!("--- restarted: it refuses clients from its first call on");
    only_the_victim_refuses(&cluster, victim).await?;
    wait_alarm(&cluster, leader, victim).await?;
    wait_alarm(&cluster, victim, victim).await?;
    only_the_victim_refuses(&cluster, victim).await?;
    let status = MaintenanceClient::connect(cluster.client_urls()[victim].clone())
        .await?
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    ensure!(
        status.errors
            == [format!(
                "memberID:{} alarm:CORRUPT ",
                cluster.members[victim].id
            )],
        "Status of the corrupt member: {:?}",
        status.errors
    );
    let urls = cluster.client_urls();
    let list = crate::alarms::etcdctl(&urls[leader..=leader], &["alarm", "list"]).await?;
    let id = cluster.members[victim].id;
    ensure!(
        list.trim() == format!("memberID:{id} alarm:CORRUPT"),
        "etcdctl alarm list: {list:?}"
    );
    let table = crate::alarms::etcdctl(&urls, &["endpoint", "status", "-w", "table"]).await?;
    ensure!(
        table.contains("alarm:CORRUPT"),
        "etcdctl endpoint status: {table}"
    );
    let get = crate::alarms::etcdctl(&urls[victim..=victim], &["get", "k"]).await;
    ensure!(
        get.as_ref().is_err_and(|e| e.to_string().contains(CORRUPT)),
        "etcdctl get on the corrupt member: {get:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_finds_a_corrupt_member() -> anyhow::Result<()> {
    let (mut cluster, leader, victim) = written_cluster(|raw| {
        raw.experimental_corrupt_check_time = Some("300ms".into());
    })
    .await?;
    cluster.restart(victim).await?;
    info!("--- restarted without the start-up check: the leader's periodic check finds it");
    wait_alarm(&cluster, leader, victim).await?;
    wait_until(
        "the corrupt member to refuse reads",
        DETECTION_WAIT,
        || async { Ok(read_k(&cluster, victim).await?.is_err().then_some(())) },
    )
    .await?;
    only_the_victim_refuses(&cluster, victim).await?;
    let mut client = cluster.client(leader).await?;
    put(&mut client, "after", "detection")
        .await
        .context("the healthy majority takes writes")?;
    cluster.shutdown().await;
    Ok(())
}
