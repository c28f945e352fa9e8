//! The checks every client call passes before its service: etcd's require-leader metadata.

use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_tests::{get, put, wait_until, TestCluster};
use tonic::metadata::MetadataValue;
use tracing::info;

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// A serializable read of `key` carrying etcd's `hasleader: true` metadata
/// (clientv3's `WithRequireLeader`).
fn require_leader_read(key: &str) -> tonic::Request<pb::RangeRequest> {
    let mut request = tonic::Request::new(pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable: true,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("hasleader", MetadataValue::from_static("true"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_requires_a_leader_fails_on_a_member_without_one() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let minority = (leader_index + 1) % 3;
    let mut leader_client = cluster.client(leader_index).await?;
    let mut minority_client = cluster.client(minority).await?;
    put(&mut leader_client, "k", "v").await?;

    info!("--- with a leader, a call that requires one is served");
    wait_until("the follower to serve k", LEADER_WAIT, || {
        let mut client = minority_client.clone();
        async move {
            let response = client.range(require_leader_read("k")).await?.into_inner();
            Ok((response.kvs.len() == 1).then_some(()))
        }
    })
    .await?;

    info!("--- isolate the follower until it knows no leader");
    cluster
        .faults
        .isolate(cluster.members[minority].id, &cluster.ids());
    let refused = wait_until("the isolated member to refuse", LEADER_WAIT, || {
        let mut client = minority_client.clone();
        async move {
            match client.range(require_leader_read("k")).await {
                Ok(_) => Ok(None),
                Err(status) => Ok(Some(status)),
            }
        }
    })
    .await?;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: no leader");

    info!("--- the same read without the metadata is still served from local state");
    assert_eq!(
        get(&mut minority_client, "k", true).await?.as_deref(),
        Some("v")
    );

    cluster.faults.heal();
    cluster.shutdown().await;
    Ok(())
}
