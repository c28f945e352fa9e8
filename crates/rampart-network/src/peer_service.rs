//! The receiving side of the peer protocol: Raft's RPCs, and the writes, read-index rounds and
//! lease questions other members send this one when it leads, and questions about the cluster.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use rampart_api::peer::peer_server::{Peer, PeerServer};
use rampart_api::peer::{RaftReply, RaftRequest};
use rampart_storage::{Command, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::caller;
use crate::messages::{
    self, AdminReply, AdminRequest, ForwardError, ForwardReply, LeaseReply, LeaseRequest,
};
use crate::peer_network::MAX_PEER_REPLY_BYTES;
use crate::proposer::Proposer;
use crate::read_index::ReadIndexer;

/// Answers lease questions on the node that receives them: the server's lessor.
#[tonic::async_trait]
pub trait LeaseHandler: Send + Sync + 'static {
    /// Answers `request` if this node is the leader, `ForwardError::NotLeader` otherwise.
    async fn handle(&self, request: LeaseRequest) -> LeaseReply;
}

/// Answers questions and orders about the cluster itself: the server's membership manager.
#[tonic::async_trait]
pub trait AdminHandler: Send + Sync + 'static {
    async fn handle(&self, request: AdminRequest) -> AdminReply;
}

/// Checks a command another member forwards before this leader proposes it: the checks the
/// member that took the client request made, made again where the command enters the log.
pub trait ForwardCheck: Send + Sync + 'static {
    /// `Err` with the reason if `command` must not be proposed.
    fn check(&self, command: &Command) -> Result<(), String>;
}

/// What the server answers for the peer service: lease questions, questions about the cluster,
/// and the checks of forwarded commands.
#[derive(Clone)]
pub struct PeerHandlers {
    pub leases: Arc<dyn LeaseHandler>,
    pub admin: Arc<dyn AdminHandler>,
    pub checks: Arc<dyn ForwardCheck>,
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
    handlers: PeerHandlers,
    /// The largest request accepted: see [`crate::max_peer_message_bytes`].
    max_message_bytes: usize,
    /// This member's cluster: calls from any other are refused (see [`crate::caller`]).
    cluster_id: u64,
}

impl PeerService {
    pub fn new(
        raft: Raft<TypeConfig>,
        proposer: Proposer,
        read_indexer: ReadIndexer,
        request_timeout: Duration,
        handlers: PeerHandlers,
        max_message_bytes: usize,
        cluster_id: u64,
    ) -> Self {
        PeerService {
            raft,
            proposer,
            read_indexer,
            request_timeout,
            handlers,
            max_message_bytes,
            cluster_id,
        }
    }

    /// Refuses `request` unless it comes from a member of this cluster ([`crate::caller`]).
    fn check_caller(&self, request: &Request<RaftRequest>) -> Result<(), Status> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        caller::check(request.metadata(), self.cluster_id, |member| {
            caller::in_membership(membership, member)
        })
    }

    /// Refuses a Raft RPC unless it names this cluster. Its sender need not be in this
    /// member's membership: a follower that lags learns of a member added since (that member
    /// now leading, say) only through the entries that member sends; Raft's terms and logs
    /// decide what the call may do.
    fn check_raft_caller(&self, request: &Request<RaftRequest>) -> Result<(), Status> {
        caller::check(request.metadata(), self.cluster_id, |_| true)
    }

    /// Proposes a forwarded command if it passes the checks.
    async fn propose_checked(&self, command: Command) -> ForwardReply {
        self.handlers
            .checks
            .check(&command)
            .map_err(ForwardError::Rejected)?;
        self.proposer.propose(command, self.request_timeout).await
    }

    /// The tonic service: requests bounded as replication messages are, replies as large as
    /// the answers to forwarded writes may be.
    pub fn into_server(self) -> PeerServer<Self> {
        let max_request = self.max_message_bytes;
        PeerServer::new(self)
            .max_decoding_message_size(max_request)
            .max_encoding_message_size(MAX_PEER_REPLY_BYTES)
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftRequest>) -> Result<T, Status> {
    messages::decode(&request.into_inner().data)
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
        self.check_raft_caller(&request)?;
        let reply = self.raft.append_entries(decode(request)?).await;
        encode(&reply)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.check_raft_caller(&request)?;
        let reply = self.raft.install_snapshot(decode(request)?).await;
        encode(&reply)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check_raft_caller(&request)?;
        let reply = self.raft.vote(decode(request)?).await;
        encode(&reply)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check_caller(&request)?;
        let command: Command = decode(request)?;
        encode(&self.propose_checked(command).await)
    }

    async fn forward_batch(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.check_caller(&request)?;
        let commands: Vec<Command> = decode(request)?;
        // Each command is checked alone: one refused fails no other, as it would not have if
        // they had been forwarded one by one.
        let checked: Vec<Result<(), String>> = commands
            .iter()
            .map(|c| self.handlers.checks.check(c))
            .collect();
        let passed = commands
            .into_iter()
            .zip(&checked)
            .filter_map(|(command, check)| check.is_ok().then_some(command))
            .collect();
        let mut proposed = self
            .proposer
            .propose_many(passed, self.request_timeout)
            .await
            .into_iter();
        let replies: Vec<ForwardReply> = checked
            .into_iter()
            .map(|check| match check {
                Err(reason) => Err(ForwardError::Rejected(reason)),
                Ok(()) => proposed.next().unwrap_or_else(|| {
                    Err(ForwardError::Unavailable(
                        "the proposer gave no answer".into(),
                    ))
                }),
            })
            .collect();
        encode(&replies)
    }

    async fn read_index(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.check_caller(&request)?;
        let () = decode(request)?;
        encode(&self.read_indexer.local(self.request_timeout).await)
    }

    async fn lease(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.check_caller(&request)?;
        let request: LeaseRequest = decode(request)?;
        encode(&self.handlers.leases.handle(request).await)
    }

    async fn admin(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let caller = self.check_caller(&request);
        let request: AdminRequest = decode(request)?;
        // A member joining asks ClusterInfo before it knows who it is; a removed member asks
        // whether it is still a member. Everything else comes from members only.
        if !matches!(
            request,
            AdminRequest::ClusterInfo | AdminRequest::IsMember { .. }
        ) {
            caller?;
        }
        encode(&self.handlers.admin.handle(request).await)
    }
}
