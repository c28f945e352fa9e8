//! Membership changes of a running cluster, in process: etcd's Cluster service (add, promote,
//! remove, update, list), learners' limits, MoveLeader, the strict reconfiguration checks and
//! their errors, a new member catching up by snapshot, and removed members stopping.

use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_tests::{get, put, unless_unhealthy, wait_until, TestCluster};
use tonic::transport::Channel;
use tonic::Code;
use tracing::info;

const WAIT: Duration = Duration::from_secs(30);

async fn maintenance(url: &str) -> anyhow::Result<MaintenanceClient<Channel>> {
    Ok(MaintenanceClient::new(
        Channel::from_shared(url.to_string())?.connect().await?,
    ))
}

/// The status of member `index`: its leader and whether it is a learner.
async fn status(cluster: &TestCluster, index: usize) -> anyhow::Result<pb::StatusResponse> {
    Ok(maintenance(&cluster.members[index].client_url)
        .await?
        .status(pb::StatusRequest {})
        .await?
        .into_inner())
}

async fn member_list(cluster: &TestCluster, index: usize) -> anyhow::Result<Vec<pb::Member>> {
    Ok(cluster
        .cluster_client(index)
        .await?
        .member_list(pb::MemberListRequest::default())
        .await?
        .into_inner()
        .members)
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, text: &str) {
    match result {
        Ok(response) => panic!("expected {code:?} {text:?}, got {response:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), text);
        }
    }
}

/// Removes member `id` through member `via` once the strict checks allow it: every voter must
/// have been reachable for etcd's health interval, which a cluster that just started has not.
async fn remove_when_healthy(
    cluster: &TestCluster,
    via: usize,
    id: u64,
) -> anyhow::Result<pb::MemberRemoveResponse> {
    wait_until("the member's removal", WAIT, || async move {
        let removed = cluster
            .cluster_client(via)
            .await?
            .member_remove(pb::MemberRemoveRequest { id })
            .await;
        unless_unhealthy(removed)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_serves_only_what_learners_serve_and_is_promoted() -> anyhow::Result<()>
{
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(cluster.index_of(leader)).await?;
    for i in 0..20 {
        put(&mut client, &format!("k{i}"), "before").await?;
    }

    info!("--- add a learner through a follower and start it");
    let via = (cluster.index_of(leader) + 1) % 3;
    let learner = cluster.add_member(via, true).await?;
    let learner_id = cluster.members[learner].id;
    put(&mut client, "after", "added").await?;
    let mut learner_client = cluster.client(learner).await?;
    wait_until("the learner to catch up", WAIT, || {
        let mut c = learner_client.clone();
        async move { Ok(get(&mut c, "after", true).await?.map(|_| ())) }
    })
    .await?;
    assert_eq!(
        get(&mut learner_client, "k7", true).await?.as_deref(),
        Some("before")
    );
    let members = member_list(&cluster, 0).await?;
    assert_eq!(members.len(), 4);
    let listed = members.iter().find(|m| m.id == learner_id).unwrap();
    assert!(listed.is_learner);
    assert!(status(&cluster, learner).await?.is_learner);

    info!("--- a learner refuses what etcd's learners refuse");
    let learner_only = "etcdserver: rpc not supported for learner";
    assert_status(
        get(&mut learner_client, "after", false)
            .await
            .map_err(|e| e.downcast::<tonic::Status>().unwrap()),
        Code::Unavailable,
        learner_only,
    );
    assert_status(
        learner_client
            .put(pb::PutRequest {
                key: b"x".to_vec(),
                value: b"y".to_vec(),
                ..Default::default()
            })
            .await,
        Code::Unavailable,
        learner_only,
    );
    assert_status(
        cluster
            .cluster_client(learner)
            .await?
            .member_list(pb::MemberListRequest::default())
            .await,
        Code::Unavailable,
        learner_only,
    );

    info!("--- one learner at a time");
    assert_status(
        cluster
            .cluster_client(0)
            .await?
            .member_add(pb::MemberAddRequest {
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                is_learner: true,
            })
            .await,
        Code::FailedPrecondition,
        "etcdserver: too many learner members in cluster",
    );

    info!("--- promote it once in sync");
    let promoted = wait_until("the learner's promotion", WAIT, || {
        let cluster = &cluster;
        async move {
            let result = cluster
                .cluster_client(0)
                .await?
                .member_promote(pb::MemberPromoteRequest { id: learner_id })
                .await;
            match result {
                Ok(response) => Ok(Some(response.into_inner())),
                Err(status) if status.message().contains("in sync with leader") => Ok(None),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await?;
    assert!(promoted.members.iter().all(|m| !m.is_learner));
    wait_until("the promoted member to serve writes", WAIT, || {
        let mut c = learner_client.clone();
        async move { Ok(put(&mut c, "from-new-voter", "v").await.ok().map(|_| ())) }
    })
    .await?;
    assert!(!status(&cluster, learner).await?.is_learner);
    assert_status(
        cluster
            .cluster_client(0)
            .await?
            .member_promote(pb::MemberPromoteRequest { id: learner_id })
            .await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_get_etcds_errors_and_change_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(WAIT).await?;
    let mut admin = cluster.cluster_client(1).await?;
    // Each member publishes its client URLs through Raft once it has started; a publish landing
    // during the bad requests would change the list, so the list is taken once all have landed.
    let members = &cluster;
    let before = wait_until(
        "every member to publish its client URLs",
        WAIT,
        || async move {
            let list = member_list(members, 1).await?;
            Ok(list
                .iter()
                .all(|m| !m.client_ur_ls.is_empty())
                .then_some(list))
        },
    )
    .await?;
    let add = |urls: &[&str]| pb::MemberAddRequest {
        peer_ur_ls: urls.iter().map(|u| u.to_string()).collect(),
        is_learner: false,
    };
    assert_status(
        admin.member_add(add(&["not-a-url"])).await,
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    assert_status(
        admin.member_add(add(&[])).await,
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    assert_status(
        admin
            .member_add(add(&[cluster.members[2].peer_url.as_str()]))
            .await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    assert_status(
        admin
            .member_remove(pb::MemberRemoveRequest { id: 42 })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        admin
            .member_promote(pb::MemberPromoteRequest { id: 42 })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        admin
            .member_update(pb::MemberUpdateRequest {
                id: 42,
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        admin
            .member_update(pb::MemberUpdateRequest {
                id: cluster.members[0].id,
                peer_ur_ls: vec![cluster.members[1].peer_url.clone()],
            })
            .await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    assert_status(
        admin
            .member_promote(pb::MemberPromoteRequest {
                id: cluster.members[0].id,
            })
            .await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    assert_eq!(member_list(&cluster, 1).await?, before);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfig_check_refuses_changes_that_could_lose_the_quorum() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let down = (leader_index + 1) % 3;
    let running = (leader_index + 2) % 3;

    info!("--- all three run: a voter is added once they have for the health interval");
    let unstarted = wait_until("a voter to be added", WAIT, || {
        let cluster = &cluster;
        async move {
            let added = cluster
                .cluster_client(leader_index)
                .await?
                .member_add(pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                    is_learner: false,
                })
                .await;
            Ok(unless_unhealthy(added)?.and_then(|response| response.member.map(|m| m.id)))
        }
    })
    .await?;
    info!("--- a voter that never started is down: removing it is safe");
    cluster
        .cluster_client(leader_index)
        .await?
        .member_remove(pb::MemberRemoveRequest { id: unstarted })
        .await?;

    cluster.stop(down).await;
    let down_id = cluster.members[down].id;
    wait_until(
        "the leader to find the stopped member unreachable",
        WAIT,
        || async {
            let leader = cluster.members[leader_index].running.as_ref().unwrap();
            Ok((!leader.node.peer_reachable(down_id)).then_some(()))
        },
    )
    .await?;
    let before = member_list(&cluster, leader_index).await?;

    info!("--- two of three run: no voter may be added");
    assert_status(
        cluster
            .cluster_client(leader_index)
            .await?
            .member_add(pb::MemberAddRequest {
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                is_learner: false,
            })
            .await,
        Code::Unavailable,
        "etcdserver: unhealthy cluster",
    );
    info!("--- nor a running member removed: one of two would be left running");
    assert_status(
        cluster
            .cluster_client(leader_index)
            .await?
            .member_remove(pb::MemberRemoveRequest {
                id: cluster.members[running].id,
            })
            .await,
        Code::Unavailable,
        "etcdserver: unhealthy cluster",
    );
    assert_eq!(member_list(&cluster, leader_index).await?, before);

    info!("--- removing the member that is down is safe");
    let removed = cluster
        .cluster_client(leader_index)
        .await?
        .member_remove(pb::MemberRemoveRequest {
            id: cluster.members[down].id,
        })
        .await?
        .into_inner();
    assert_eq!(removed.members.len(), 2);
    let mut client = cluster.client(running).await?;
    put(&mut client, "after-remove", "v").await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_and_the_rest_carry_on_even_without_the_old_leader(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let follower = (leader_index + 1) % 3;

    info!("--- remove a follower: it stops");
    let removed = remove_when_healthy(&cluster, leader_index, cluster.members[follower].id).await?;
    assert_eq!(removed.members.len(), 2);
    let stopped = cluster.members[follower].running.as_ref().unwrap();
    tokio::time::timeout(WAIT, stopped.stopped())
        .await
        .map_err(|_| anyhow::anyhow!("the removed member did not stop"))?;
    cluster.stop(follower).await;

    info!("--- grow back to three, then remove the leader");
    let added = cluster.add_member(leader_index, false).await?;
    let mut client = cluster.client(added).await?;
    put(&mut client, "three-again", "v").await?;
    let leader = cluster
        .wait_for_leader_among(
            &[
                cluster.members[leader_index].id,
                cluster.members[added].id,
                cluster.members[(leader_index + 2) % 3].id,
            ],
            WAIT,
        )
        .await?;
    let leader_index = cluster.index_of(leader);
    let removed = remove_when_healthy(&cluster, leader_index, leader).await?;
    assert_eq!(removed.members.len(), 2);
    assert!(removed.members.iter().all(|m| m.id != leader));
    let stopped = cluster.members[leader_index].running.as_ref().unwrap();
    tokio::time::timeout(WAIT, stopped.stopped())
        .await
        .map_err(|_| anyhow::anyhow!("the removed leader did not stop"))?;
    cluster.stop(leader_index).await;
    let rest: Vec<_> = removed.members.iter().map(|m| m.id).collect();
    let new_leader = cluster.wait_for_leader_among(&rest, WAIT).await?;
    assert_ne!(new_leader, leader);
    let mut client = cluster.client(cluster.index_of(new_leader)).await?;
    put(&mut client, "after-leader-removed", "v").await?;
    assert_eq!(
        get(&mut client, "three-again", false).await?.as_deref(),
        Some("v")
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_the_log_was_purged_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(3, |raw| {
        raw.snapshot_count = Some(50);
        raw.snapshot_catchup_entries = Some(5);
    })
    .await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(cluster.index_of(leader)).await?;
    for i in 0..300 {
        put(&mut client, &format!("key{i:03}"), &format!("v{i}")).await?;
    }
    let added = cluster.add_member(0, false).await?;
    let mut new_client = cluster.client(added).await?;
    wait_until("the new member to have every key", WAIT, || {
        let mut c = new_client.clone();
        async move { Ok(get(&mut c, "key299", true).await?.map(|_| ())) }
    })
    .await?;
    assert_eq!(
        get(&mut new_client, "key000", true).await?.as_deref(),
        Some("v0")
    );
    let snapshot = cluster.members[added]
        .running
        .as_ref()
        .unwrap()
        .node
        .metrics()
        .snapshot;
    assert!(
        snapshot.is_some(),
        "the new member should have installed a snapshot"
    );
    assert_eq!(member_list(&cluster, added).await?.len(), 4);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_leadership_to_the_target() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let target_index = (leader_index + 1) % 3;
    let target = cluster.members[target_index].id;
    let mut client = cluster.client(leader_index).await?;
    put(&mut client, "before-move", "v").await?;

    info!("--- only the leader moves leadership");
    assert_status(
        maintenance(&cluster.members[target_index].client_url)
            .await?
            .move_leader(pb::MoveLeaderRequest { target_id: leader })
            .await,
        Code::FailedPrecondition,
        "etcdserver: not leader",
    );
    assert_status(
        maintenance(&cluster.members[leader_index].client_url)
            .await?
            .move_leader(pb::MoveLeaderRequest { target_id: 42 })
            .await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );

    maintenance(&cluster.members[leader_index].client_url)
        .await?
        .move_leader(pb::MoveLeaderRequest { target_id: target })
        .await?;
    assert_eq!(status(&cluster, leader_index).await?.leader, target);
    assert_eq!(cluster.wait_for_leader(WAIT).await?, target);
    let mut client = cluster.client(target_index).await?;
    put(&mut client, "after-move", "v").await?;
    assert_eq!(
        get(&mut client, "before-move", false).await?.as_deref(),
        Some("v")
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_update_changes_a_members_peer_urls() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(WAIT).await?;
    let id = cluster.members[2].id;
    let new_url = "http://127.0.0.1:9".to_string();
    let updated = cluster
        .cluster_client(0)
        .await?
        .member_update(pb::MemberUpdateRequest {
            id,
            peer_ur_ls: vec![new_url.clone()],
        })
        .await?
        .into_inner();
    let member = updated.members.iter().find(|m| m.id == id).unwrap();
    assert_eq!(member.peer_ur_ls, vec![new_url.clone()]);
    info!("--- the members the leader still reaches list the new URL");
    let others = [0, 1];
    wait_until("the reachable members to list the new URL", WAIT, || {
        let cluster = &cluster;
        let new_url = new_url.clone();
        async move {
            for i in others {
                let members = member_list(cluster, i).await?;
                let member = members.iter().find(|m| m.id == id).unwrap();
                if member.peer_ur_ls != vec![new_url.clone()] {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await?;

    info!("--- back to the URL it listens on: it is reached again and hears of both updates");
    let old_url = cluster.members[2].peer_url.clone();
    cluster
        .cluster_client(0)
        .await?
        .member_update(pb::MemberUpdateRequest {
            id,
            peer_ur_ls: vec![old_url.clone()],
        })
        .await?;
    let mut client = cluster.client(0).await?;
    put(&mut client, "after-update", "v").await?;
    let updated_client = cluster.client(2).await?;
    wait_until("the updated member to catch up", WAIT, || {
        let mut c = updated_client.clone();
        async move { Ok(get(&mut c, "after-update", true).await?.map(|_| ())) }
    })
    .await?;
    let members = member_list(&cluster, 2).await?;
    let member = members.iter().find(|m| m.id == id).unwrap();
    assert_eq!(member.peer_ur_ls, vec![old_url]);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_to_five_and_shrinking_to_three_under_writes_loses_no_acknowledged_write(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(WAIT).await?;
    let writer_client = cluster.client(0).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        let mut client = writer_client;
        async move {
            let (mut acknowledged, mut failed) = (Vec::new(), 0usize);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("w{i:06}");
                match put(&mut client, &key, "v").await {
                    Ok(_) => acknowledged.push(key),
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (acknowledged, failed)
        }
    });

    info!("--- grow to five: two voters added one after the other");
    let fourth = cluster.add_member(1, false).await?;
    let fifth = cluster.add_member(2, false).await?;
    let five: Vec<_> = cluster.ids();
    assert_eq!(member_list(&cluster, 0).await?.len(), 5);
    cluster.wait_for_leader_among(&five, WAIT).await?;

    info!("--- shrink to three: remove two of the original members, the leader if it is one");
    for index in [1, 2] {
        let id = cluster.members[index].id;
        let via = if index == 1 { fourth } else { fifth };
        remove_when_healthy(&cluster, via, id).await?;
        let stopped = cluster.members[index].running.as_ref().unwrap();
        tokio::time::timeout(WAIT, stopped.stopped())
            .await
            .map_err(|_| anyhow::anyhow!("removed member {index} did not stop"))?;
        cluster.stop(index).await;
    }
    let three = [
        cluster.members[0].id,
        cluster.members[fourth].id,
        cluster.members[fifth].id,
    ];
    let leader = cluster.wait_for_leader_among(&three, WAIT).await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acknowledged, failed) = writer.await?;
    info!(
        acknowledged = acknowledged.len(),
        failed, "writes during the changes"
    );
    assert!(acknowledged.len() > 10, "too few writes went through");

    let mut reader = cluster.client(cluster.index_of(leader)).await?;
    let stored = reader
        .range(pb::RangeRequest {
            key: b"w".to_vec(),
            range_end: b"x".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let stored: std::collections::BTreeSet<_> = stored
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let members = member_list(&cluster, cluster.index_of(leader)).await?;
    assert_eq!(members.len(), 3);
    assert!(members
        .iter()
        .all(|m| three.contains(&m.id) && !m.is_learner));
    cluster.shutdown().await;
    Ok(())
}
