//! etcdserverpb.Lease: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive and
//! LeaseLeases.
//!
//! Grants and revokes go through Raft like any write. Keep-alives and TimeToLive are answered by
//! the leader's lessor, wherever the client asks (see `crate::lessor`).

use std::sync::Arc;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::lease_server::Lease;
use rampart_storage::{ApplyError, Command, CommandResult};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::kv::mismatch;
use crate::error::ServerError;
use crate::lessor::Lessor;
use crate::node::Node;

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

pub struct LeaseService {
    node: Arc<Node>,
    lessor: Arc<Lessor>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>, lessor: Arc<Lessor>) -> Self {
        LeaseService { node, lessor }
    }

    /// A positive lease id that this node does not know to be in use. Another member may have
    /// granted it meanwhile; the grant then fails with `LeaseExists` and a new id is drawn.
    fn unused_id(&self) -> Result<i64, ServerError> {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && self.node.mvcc.lease(id)?.is_none() {
                return Ok(id);
            }
        }
    }

    async fn grant(
        &self,
        request: pb::LeaseGrantRequest,
    ) -> Result<pb::LeaseGrantResponse, Status> {
        if request.ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge.into());
        }
        // As etcd, a shorter TTL is raised to the minimum, so a lease outlives an election.
        let ttl = request.ttl.max(self.node.config.min_lease_ttl());
        loop {
            let id = match request.id {
                0 => self.unused_id()?,
                chosen => chosen,
            };
            let response = self.node.write(Command::LeaseGrant { id, ttl }).await?;
            match response.result {
                Ok(CommandResult::LeaseGrant { id, ttl }) => {
                    return Ok(pb::LeaseGrantResponse {
                        header: Some(self.node.header(response.revision)),
                        id,
                        ttl,
                        error: String::new(),
                    })
                }
                // The id we drew was taken by another grant: the failed grant changed nothing.
                Err(ApplyError::LeaseExists) if request.id == 0 => continue,
                Err(e) => return Err(ServerError::from(e).into()),
                Ok(other) => return Err(mismatch(other)),
            }
        }
    }

    async fn time_to_live(
        &self,
        request: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, ServerError> {
        let id = request.id;
        let status = self.lessor.time_to_live(id).await?;
        let mut keys = Vec::new();
        if status.remaining_ttl >= 0 && request.keys {
            // The leader knows the lease; read its keys here once this node has caught up.
            self.node.read_barrier().await?;
            keys = self.node.mvcc.lease_keys(id)?;
        }
        Ok(pb::LeaseTimeToLiveResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            id,
            ttl: status.remaining_ttl,
            granted_ttl: status.granted_ttl,
            keys,
        })
    }

    async fn leases(&self) -> Result<pb::LeaseLeasesResponse, ServerError> {
        self.node.read_barrier().await?;
        let leases = self.node.mvcc.leases()?;
        Ok(pb::LeaseLeasesResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            leases: leases
                .iter()
                .map(|lease| pb::LeaseStatus { id: lease.id })
                .collect(),
        })
    }
}

/// Answers the keep-alives of one stream in order, until the client closes it, an error ends it
/// (as etcd, which returns the error and ends the stream), or the node stops.
async fn keep_alive_stream(
    node: Arc<Node>,
    lessor: Arc<Lessor>,
    mut requests: Streaming<pb::LeaseKeepAliveRequest>,
    responses: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
) {
    loop {
        let request = tokio::select! {
            _ = lessor.stopped() => return,
            request = requests.message() => match request {
                Ok(Some(request)) => request,
                // Closed or broken by the client: nobody to answer.
                Ok(None) | Err(_) => return,
            },
        };
        // The header is taken before the renewal, as etcd does, so a revoke the client sees
        // later never has a revision below it.
        let header = node.header(node.mvcc.revision());
        let renewed = tokio::select! {
            _ = lessor.stopped() => return,
            renewed = lessor.keep_alive(request.id) => renewed,
        };
        let (response, last) = match renewed {
            Ok(ttl) => (
                Ok(pb::LeaseKeepAliveResponse {
                    header: Some(header),
                    id: request.id,
                    ttl,
                }),
                false,
            ),
            Err(e) => (Err(Status::from(e)), true),
        };
        if responses.send(response).await.is_err() || last {
            return;
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        Ok(Response::new(self.grant(request.into_inner()).await?))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let response = self.node.write(Command::LeaseRevoke { id }).await?;
        match response.result.map_err(ServerError::from)? {
            CommandResult::LeaseRevoke => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(self.node.header(response.revision)),
            })),
            other => Err(mismatch(other)),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(keep_alive_stream(
            self.node.clone(),
            self.lessor.clone(),
            request.into_inner(),
            sender,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(
            self.time_to_live(request.into_inner()).await?,
        ))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.leases().await?))
    }
}
