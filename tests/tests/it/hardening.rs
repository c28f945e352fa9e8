//! Faults at the edges of the consensus paths, in process: a leader whose appends cannot
//! commit, and peer calls that carry commands no client could have sent.

use std::time::Duration;

use anyhow::Context;
use rampart_network::{
    AdminAnswer, AdminRequest, CallError, ForwardError, LinkFaults, PeerNetwork,
};
use rampart_storage::{Command, LeaseCheckpoint, PeerNode, PutRequest, RequestOp, TxnRequest};
use rampart_tests::{get, put, wait_until, TestCluster};
use tracing::info;

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// A linearizable read is answered from the commit index the leader confirms with a quorum; it
/// does not wait for entries the leader has appended but not committed. Those may never commit
/// (a later leader can truncate them), and waiting for them would hold every read behind every
/// write in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_does_not_wait_for_uncommitted_entries() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let mut client = cluster.client(leader_index).await?;
    put(&mut client, "k", "committed").await?;

    info!("--- the leader's appends stop reaching the followers; its heartbeats still do");
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        cluster.faults.hold_entries(leader, id);
    }
    let mut writer = client.clone();
    let write = tokio::spawn(async move { put(&mut writer, "k", "in flight").await });
    let node = cluster.members[leader_index]
        .running
        .as_ref()
        .context("the leader is running")?
        .node
        .clone();
    wait_until(
        "an entry appended on the leader and not committed",
        LEADER_WAIT,
        || {
            let metrics = node.metrics();
            let appended = metrics.last_log_index.unwrap_or(0);
            let applied = metrics.last_applied.map_or(0, |id| id.index);
            async move { Ok((appended > applied).then_some(())) }
        },
    )
    .await?;

    info!("--- a linearizable read on the leader and on a follower answers at once");
    // Well within the followers' election timeout, so the leader still leads; a read that
    // waited for the held entry could not finish before the links heal.
    let patience = Duration::from_millis(600);
    let follower_index = (leader_index + 1) % 3;
    for index in [leader_index, follower_index] {
        let mut reader = cluster.client(index).await?;
        let value = tokio::time::timeout(patience, get(&mut reader, "k", false))
            .await
            .with_context(|| format!("linearizable read on member {index} waited"))??;
        assert_eq!(value.as_deref(), Some("committed"), "member {index}");
    }

    info!("--- healed, the write in flight commits");
    cluster.faults.heal();
    write.await??;
    assert_eq!(
        get(&mut client, "k", false).await?.as_deref(),
        Some("in flight")
    );
    cluster.shutdown().await;
    Ok(())
}

/// The leader checks what other members forward before it proposes it, as the member that took
/// the client request did: a peer cannot put into the log what no client could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_forwarded_commands_no_client_could_send() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let mut client = cluster.client(leader_index).await?;
    let revision = put(&mut client, "k", "v").await?;
    let leader_node = PeerNode {
        peer_urls: vec![cluster.members[leader_index].peer_url.clone()],
        ..Default::default()
    };
    // A member's own identity: the leader takes the calls, and judges each command.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .context("a follower")?;
    let peer = PeerNetwork::new(
        follower,
        LinkFaults::default(),
        rampart_network::max_peer_message_bytes(1536 * 1024),
    )
    .with_cluster(cluster.cluster_id);
    let timeout = Duration::from_secs(10);
    let put_op = |key: &str| {
        RequestOp::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    };
    let too_many = TxnRequest {
        success: (0..200).map(|i| put_op(&format!("k{i}"))).collect(),
        ..Default::default()
    };
    let refused = [
        ("an empty key", Command::Put(PutRequest::default())),
        ("too many ops", Command::Txn(too_many)),
        (
            "a duplicate key",
            Command::Txn(TxnRequest {
                success: vec![put_op("a"), put_op("a")],
                ..Default::default()
            }),
        ),
        (
            "an oversized value",
            Command::Put(PutRequest {
                key: b"big".to_vec(),
                value: vec![0; 4 * 1024 * 1024],
                ..Default::default()
            }),
        ),
        (
            "a lease checkpoint",
            Command::LeaseCheckpoint {
                checkpoints: vec![LeaseCheckpoint {
                    id: 7,
                    remaining_ttl: 1,
                }],
            },
        ),
        (
            "a batch",
            Command::Batch(vec![Command::Compact { revision: 1 }]),
        ),
    ];

    info!("--- one forwarded at a time, and all in one batch call: each refused");
    for (what, command) in &refused {
        let reply = peer.forward(leader, &leader_node, command, timeout).await?;
        assert!(
            matches!(reply, Err(ForwardError::Rejected(_))),
            "{what}: expected a refusal, got {reply:?}"
        );
    }
    let commands: Vec<Command> = refused.iter().map(|(_, c)| c.clone()).collect();
    let replies = peer
        .forward_batch(leader, &leader_node, &commands, timeout)
        .await?;
    assert_eq!(replies.len(), commands.len());
    for ((what, _), reply) in refused.iter().zip(&replies) {
        assert!(
            matches!(reply, Err(ForwardError::Rejected(_))),
            "{what} in a batch: expected a refusal, got {reply:?}"
        );
    }

    info!("--- nothing was proposed; a good command in the same batch call still is");
    let good = Command::Put(PutRequest {
        key: b"good".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    });
    let mixed = vec![Command::Put(PutRequest::default()), good];
    let replies = peer
        .forward_batch(leader, &leader_node, &mixed, timeout)
        .await?;
    assert!(matches!(replies[0], Err(ForwardError::Rejected(_))));
    let (_, response) = replies[1].clone().context("the good put")?;
    assert_eq!(
        response.revision,
        revision + 1,
        "only the good put changed the store"
    );
    cluster.shutdown().await;
    Ok(())
}

/// The peer port takes calls from the members of its cluster only: a call naming another
/// cluster, a node that is no member, or nobody is refused before it is read, whatever it
/// carries; `ClusterInfo`, what a member joining asks before it knows who it is, is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_from_outside_the_cluster_are_refused() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader_index = cluster.index_of(leader);
    let mut client = cluster.client(leader_index).await?;
    put(&mut client, "k", "before").await?;
    let leader_node = PeerNode {
        peer_urls: vec![cluster.members[leader_index].peer_url.clone()],
        ..Default::default()
    };
    let bytes = rampart_network::max_peer_message_bytes(1536 * 1024);
    let member = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .context("a follower")?;
    let outsiders = [
        (
            "no identity",
            PeerNetwork::new(member, LinkFaults::default(), bytes),
        ),
        (
            "another cluster",
            PeerNetwork::new(member, LinkFaults::default(), bytes)
                .with_cluster(cluster.cluster_id ^ 1),
        ),
        (
            "a node that is no member",
            PeerNetwork::new(0x5eed, LinkFaults::default(), bytes).with_cluster(cluster.cluster_id),
        ),
    ];
    let timeout = Duration::from_secs(10);
    let write = Command::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"forged".to_vec(),
        ..Default::default()
    });
    for (who, peer) in &outsiders {
        info!("--- a forwarded write, a read index and a lease question from {who}");
        match peer.forward(leader, &leader_node, &write, timeout).await {
            Err(CallError::Status { status, .. }) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "{who}: {status:?}"
                )
            }
            other => panic!("{who}: a forwarded write was not refused: {other:?}"),
        }
        match peer.read_index(leader, &leader_node, timeout).await {
            Err(CallError::Status { status, .. }) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "{who}: {status:?}"
                )
            }
            other => panic!("{who}: a read index was not refused: {other:?}"),
        }
        match peer
            .admin(leader, &leader_node, &AdminRequest::TimeoutNow, timeout)
            .await
        {
            Err(CallError::Status { status, .. }) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "{who}: {status:?}"
                )
            }
            other => panic!("{who}: TimeoutNow was not refused: {other:?}"),
        }
        let info = peer
            .admin(leader, &leader_node, &AdminRequest::ClusterInfo, timeout)
            .await
            .with_context(|| format!("{who}: ClusterInfo"))?;
        assert!(
            matches!(info, Ok(AdminAnswer::ClusterInfo(_))),
            "{who}: ClusterInfo is answered: {info:?}"
        );
    }

    info!("--- nothing changed, and the leader still leads");
    assert_eq!(
        get(&mut client, "k", false).await?.as_deref(),
        Some("before")
    );
    assert_eq!(cluster.wait_for_leader(LEADER_WAIT).await?, leader);
    cluster.shutdown().await;
    Ok(())
}
