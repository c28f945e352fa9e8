//! The Cluster and Maintenance services: MemberList names every member with its URLs, and
//! Status agrees on the leader, through every member.

use anyhow::Context;
use tracing::info;

use super::{Fixture, LEADER_WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_names_every_member_with_its_urls() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let cluster_id = f.cluster_id();

    for i in 0..3 {
        info!("--- member list through member {i}");
        let response = f.members[i].member_list().await?;
        let header = response.header().context("no header")?;
        assert_eq!(header.cluster_id(), cluster_id);
        assert_eq!(header.member_id(), f.cluster.members[i].id);
        let mut listed: Vec<_> = response
            .members()
            .iter()
            .map(|m| {
                (
                    m.name().to_string(),
                    m.id(),
                    m.peer_urls().to_vec(),
                    m.client_urls().to_vec(),
                    m.is_learner(),
                )
            })
            .collect();
        listed.sort();
        let expected: Vec<_> = f
            .cluster
            .members
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.id,
                    vec![m.peer_url.clone()],
                    vec![m.client_url.clone()],
                    false,
                )
            })
            .collect();
        assert_eq!(listed, expected, "member list through member {i}");
    }
    let names: Vec<_> = f
        .all
        .member_list()
        .await?
        .members()
        .iter()
        .map(|m| m.name().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["m0", "m1", "m2"]);

    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_status_agrees_on_the_leader() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let leader = f.cluster.wait_for_leader(LEADER_WAIT).await?;
    let cluster_id = f.cluster_id();

    info!("--- status from every member names the same, non-zero leader");
    for i in 0..3 {
        let member_id = f.cluster.members[i].id;
        let status = f.members[i].status().await?;
        assert_ne!(status.leader(), 0, "member {i} reports no leader");
        assert_eq!(status.leader(), leader, "member {i} names another leader");
        assert!(status.raft_term() > 0, "member {i}: raft term 0");
        assert!(status.raft_index() > 0, "member {i}: raft index 0");
        assert!(
            status.raft_applied_index() <= status.raft_index(),
            "member {i}: applied {} beyond the log {}",
            status.raft_applied_index(),
            status.raft_index()
        );
        assert!(!status.version().is_empty(), "member {i}: no version");
        assert!(!status.is_learner(), "member {i} is a voter");
        let header = status.header().context("no header")?;
        assert_eq!(header.member_id(), member_id);
        assert_eq!(header.cluster_id(), cluster_id);
        assert!(
            header.revision() >= 1,
            "member {i}: revision {}",
            header.revision()
        );
    }

    f.shutdown().await;
    Ok(())
}
