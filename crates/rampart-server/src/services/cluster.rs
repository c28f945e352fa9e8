//! etcdserverpb.Cluster: the members, and changes of them (see `crate::membership`).

use std::collections::HashMap;
use std::sync::Arc;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::cluster_server::Cluster;
use rampart_network::{MemberChange, MemberInfo};
use tonic::{Request, Response, Status};

use crate::membership::Membership;
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
    membership: Arc<Membership>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>, membership: Arc<Membership>) -> Self {
        ClusterService { node, membership }
    }

    /// `members` as etcd lists them: with the name and client URLs each member published once
    /// it started (empty for a member not started yet).
    fn to_pb(&self, members: &[MemberInfo]) -> Vec<pb::Member> {
        let published: HashMap<_, _> = self
            .node
            .mvcc()
            .members()
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        members
            .iter()
            .map(|member| self.member_to_pb(member, published.get(&member.id)))
            .collect()
    }

    fn member_to_pb(
        &self,
        member: &MemberInfo,
        attributes: Option<&rampart_storage::MemberAttributes>,
    ) -> pb::Member {
        pb::Member {
            id: member.id,
            name: attributes.map_or_else(|| member.node.name.clone(), |a| a.name.clone()),
            peer_ur_ls: member.node.peer_urls.clone(),
            client_ur_ls: attributes
                .map(|a| a.client_urls.clone())
                .unwrap_or_default(),
            is_learner: member.is_learner,
        }
    }

    async fn change(
        &self,
        change: MemberChange,
    ) -> Result<(Option<pb::Member>, Vec<pb::Member>), Status> {
        let (member, members) = self.membership.change(change).await?;
        Ok((
            member.map(|m| self.member_to_pb(&m, None)),
            self.to_pb(&members),
        ))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let request = request.into_inner();
        let (member, members) = self
            .change(MemberChange::Add {
                peer_urls: request.peer_ur_ls,
                is_learner: request.is_learner,
            })
            .await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.node.current_header()),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let (_, members) = self.change(MemberChange::Remove { id }).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.node.current_header()),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let (_, members) = self
            .change(MemberChange::Update {
                id: request.id,
                peer_urls: request.peer_ur_ls,
            })
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.node.current_header()),
            members,
        }))
    }

    /// Members from this member's newest Raft membership, with the client URLs each member
    /// published.
    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.current_header()),
            members: self.to_pb(&self.membership.members()),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let (_, members) = self.change(MemberChange::Promote { id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.node.current_header()),
            members,
        }))
    }
}
