//! The receiving side of the peer protocol.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::Raft;
use rampart_api::peer::peer_server::{Peer, PeerServer};
use rampart_api::peer::{RaftReply, RaftRequest};
use rampart_storage::{Command, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::client::MAX_PEER_MESSAGE_BYTES;
use crate::messages::{ForwardError, ForwardReply, LeaseReply, LeaseRequest, ReadIndexReply};
use crate::proposer::Proposer;
use crate::read_index::ReadIndexer;

/// Answers lease questions on the node that receives them: the server's lessor.
#[tonic::async_trait]
pub trait LeaseHandler: Send + Sync + 'static {
    /// Answers `request` if this node is the leader, `ForwardError::NotLeader` otherwise.
    async fn handle(&self, request: LeaseRequest) -> LeaseReply;
}

/// Proposes `command` on this node, which must be the leader, and waits until it is applied.
///
/// Returns [`ForwardError::NotLeader`] when the command was not appended here or its entry was
/// overwritten by a newer leader: either way it was never committed and the caller may safely
/// send it again. A timeout leaves the outcome unknown.
pub async fn propose(raft: &Raft<TypeConfig>, command: Command, timeout: Duration) -> ForwardReply {
    match tokio::time::timeout(timeout, raft.client_write(command)).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(Ok(reply)) => Ok((reply.log_id.index, reply.data)),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ForwardError::Unavailable(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(fatal))) => Err(ForwardError::Unavailable(fatal.to_string())),
    }
}

/// Confirms with a quorum that this node is still the leader and returns the log id a
/// linearizable read must wait for (Raft thesis §6.4, "read index").
///
/// The index is the leader's whole log, not only what openraft reports committed: a leader
/// restarted without losing its term keeps its commit index only as recently as it was saved,
/// and may not know yet that later entries of its log were committed (and acknowledged) before
/// the restart. Every entry of a leader's log gets committed while it leads, so waiting for all of
/// them is safe, and it covers those.
pub async fn read_index(raft: &Raft<TypeConfig>, timeout: Duration) -> ReadIndexReply {
    match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(Ok((read_log_id, _applied))) => {
            let last_log_index = raft.metrics().borrow().last_log_index;
            Ok(read_log_id
                .map_or(0, |id| id.index)
                .max(last_log_index.unwrap_or(0)))
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
            Err(ForwardError::LeaderChanged)
        }
        Ok(Err(RaftError::Fatal(fatal))) => Err(ForwardError::Unavailable(fatal.to_string())),
    }
}

/// Serves the `Peer` service for one node.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft<TypeConfig>,
    /// Forwarded writes go through the same batching as this node's own.
    proposer: Proposer,
    /// Forwarded read-index requests share rounds with this node's own.
    read_indexer: ReadIndexer,
    /// Upper bound for a forwarded write or read-index request; the caller has its own deadline.
    request_timeout: Duration,
    leases: std::sync::Arc<dyn LeaseHandler>,
}

impl PeerService {
    pub fn new(
        raft: Raft<TypeConfig>,
        proposer: Proposer,
        read_indexer: ReadIndexer,
        request_timeout: Duration,
        leases: std::sync::Arc<dyn LeaseHandler>,
    ) -> Self {
        PeerService {
            raft,
            proposer,
            read_indexer,
            request_timeout,
            leases,
        }
    }

    /// The tonic service, with message limits large enough for log batches and snapshot chunks.
    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftRequest>) -> Result<T, Status> {
    bincode::deserialize(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer message: {e}")))
}

fn encode<T: Serialize>(reply: &T) -> Result<Response<RaftReply>, Status> {
    let data = bincode::serialize(reply)
        .map_err(|e| Status::internal(format!("unencodable peer reply: {e}")))?;
    Ok(Response::new(RaftReply { data }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let reply = self.raft.append_entries(decode(request)?).await;
        encode(&reply)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let reply = self.raft.install_snapshot(decode(request)?).await;
        encode(&reply)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let reply = self.raft.vote(decode(request)?).await;
        encode(&reply)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let command: Command = decode(request)?;
        encode(&self.proposer.propose(command, self.request_timeout).await)
    }

    async fn forward_batch(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let commands: Vec<Command> = decode(request)?;
        encode(
            &self
                .proposer
                .propose_many(commands, self.request_timeout)
                .await,
        )
    }

    async fn read_index(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let () = decode(request)?;
        encode(&self.read_indexer.local(self.request_timeout).await)
    }

    async fn lease(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request: LeaseRequest = decode(request)?;
        encode(&self.leases.handle(request).await)
    }
}
