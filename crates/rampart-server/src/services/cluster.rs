//! etcdserverpb.Cluster: MemberList so far.

use std::collections::HashMap;
use std::sync::Arc;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(ServerError::Unimplemented("adding members").into())
    }

    async fn member_remove(
        &self,
        _request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(ServerError::Unimplemented("removing members").into())
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(ServerError::Unimplemented("updating members").into())
    }

    /// Members from the Raft membership, with the client URLs each member published.
    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.read_barrier().await?;
        }
        let metrics = self.node.metrics();
        let membership = metrics.membership_config.membership();
        let published: HashMap<_, _> = self
            .node
            .mvcc()
            .members()
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let members = membership
            .nodes()
            .map(|(&id, node)| {
                let attributes = published.get(&id);
                pb::Member {
                    id,
                    name: attributes.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: attributes
                        .map(|a| a.client_urls.clone())
                        .unwrap_or_default(),
                    is_learner: !membership.voter_ids().any(|voter| voter == id),
                }
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.current_header()),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(ServerError::Unimplemented("promoting members").into())
    }
}
