//! The sending side: openraft's network factory and the follower-to-leader calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use rampart_api::peer::peer_client::PeerClient;
use rampart_api::peer::RaftRequest;
use rampart_storage::{Command, NodeId, PeerNode, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_rustls::rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use crate::batching::MAX_BATCH_BYTES;
use crate::faults::{LinkFaults, Verdict};
use crate::messages::{
    AdminError, AdminReply, AdminRequest, ForwardReply, LeaseReply, LeaseRequest, ReadIndexReply,
};
use crate::peer_tls::{TlsTarget, TCP_CONNECT_ERROR, TLS_HANDSHAKE_ERROR};
use crate::stats::{peer_label, NetworkStats};

/// openraft's snapshot chunk (`Config::snapshot_max_chunk_size`): a snapshot travels as
/// `InstallSnapshot` calls of this many bytes of its file, each read from the file and written
/// to the follower's as it comes.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// What a peer message holds besides its log entries or snapshot chunk (vote, log ids,
/// snapshot meta, bincode lengths), with room to spare.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// The largest reply a member accepts from a peer: replies are not replication, and the
/// responses to forwarded writes may hold many previous key-values (a delete with `prev_kv`).
pub(crate) const MAX_PEER_REPLY_BYTES: usize = 512 * 1024 * 1024;

/// The largest peer request, for members accepting client requests of up to
/// `max_request_bytes`: one snapshot chunk, or one log entry (a batch of commands closed once
/// past `MAX_BATCH_BYTES` by one more command, as large as a request, twice that for bincode's
/// fixed-size lengths) with its envelope. Appends of several entries are cut to fit
/// ([`PeerConnection::append_entries`]); a forwarded batch is gathered within the same bound.
pub fn max_peer_message_bytes(max_request_bytes: usize) -> usize {
    let entry = MAX_BATCH_BYTES as usize + 2 * max_request_bytes;
    entry.max(SNAPSHOT_CHUNK_BYTES as usize) + ENVELOPE_BYTES
}

/// HTTP/2 flow-control windows of peer connections, both ways. The default 64 KiB would make
/// the sender of a 1 MiB AppendEntries wait for the receiver's window updates some sixteen
/// times, each needing the receiver's runtime to run; these let a whole bounded batch
/// (`MAX_APPEND_BYTES` of the log store, plus a request's worth) go out at once.
pub const PEER_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// See [`PEER_STREAM_WINDOW_BYTES`]; shared by the calls in flight on one connection.
pub const PEER_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// How long a connection attempt to a peer may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How recently a peer must have answered to count as connected.
const ACTIVE_WITHIN: Duration = Duration::from_secs(2);

/// The RPCs of the `Peer` service.
#[derive(Clone, Copy, Debug)]
enum Method {
    AppendEntries,
    InstallSnapshot,
    Vote,
    Forward,
    ForwardBatch,
    ReadIndex,
    Lease,
    Admin,
}

/// Why a call to a peer produced no reply.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    /// The request certainly never left this node (bad address, refused connection, a cut
    /// outgoing link): sending it again cannot make it happen twice.
    #[error("peer {target} unreachable, request not sent: {reason}")]
    NotSent { target: NodeId, reason: String },
    /// The transport failed after the request may have been sent (connection broken mid-call,
    /// reply lost): the peer may have carried it out.
    #[error("peer {target} unreachable: {reason}")]
    Unreachable { target: NodeId, reason: String },
    #[error("call to peer {target} timed out after {timeout:?}")]
    Timeout { target: NodeId, timeout: Duration },
    #[error("peer {target} answered with an error: {status}")]
    Status {
        target: NodeId,
        #[source]
        status: tonic::Status,
    },
    #[error("bad message from or to peer {target}: {source}")]
    Codec {
        target: NodeId,
        #[source]
        source: Arc<bincode::Error>,
    },
}

/// openraft's network factory and the client side of the peer protocol for one node.
///
/// Cloning is cheap; clones share the channel cache.
#[derive(Clone)]
pub struct PeerNetwork {
    /// The node that sends: the `from` of every fault rule, and the caller its calls name.
    id: NodeId,
    /// The cluster this node belongs to, which its calls name with `id` (see
    /// [`crate::caller`]); 0 until it is known (a member joining asks `ClusterInfo` first).
    cluster_id: u64,
    faults: LinkFaults,
    /// One channel per peer, keyed by id and the URL it was built for, so a member whose URL
    /// changes gets a new channel. tonic channels reconnect by themselves after failures.
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    /// The largest request sent ([`max_peer_message_bytes`]); peers accept as much.
    max_message_bytes: usize,
    /// When each peer last answered, and since when it has answered without a break.
    health: Arc<Mutex<HashMap<NodeId, PeerHealth>>>,
    /// Set while this leader hands its leadership over: it sends no log entries and no
    /// heartbeats, so that the followers' leader lease runs out and they vote for the new one.
    replication_paused: Arc<AtomicBool>,
    /// Round trips and failures per peer, and the batching figures of this member.
    stats: Arc<NetworkStats>,
    /// How to dial `https://` peer URLs (the peer CA and this member's peer certificate);
    /// `None` without `--peer-cert-file`, when such URLs cannot be reached.
    tls: Option<Arc<ClientConfig>>,
}

/// A peer's connection history, as seen by the calls sent to it.
#[derive(Clone, Copy, Debug)]
struct PeerHealth {
    /// The first answer after the last failure; `None` right after a failure.
    active_since: Option<Instant>,
    last_answer: Instant,
}

impl PeerNetwork {
    /// `max_message_bytes`: see [`max_peer_message_bytes`].
    pub fn new(id: NodeId, faults: LinkFaults, max_message_bytes: usize) -> Self {
        PeerNetwork {
            id,
            cluster_id: 0,
            faults,
            channels: Arc::default(),
            max_message_bytes,
            health: Arc::default(),
            replication_paused: Arc::default(),
            stats: Arc::default(),
            tls: None,
        }
    }

    /// Names this node's cluster in every call, beside its member id: the receivers refuse
    /// calls from outside their cluster (see [`crate::caller`]).
    pub fn with_cluster(mut self, cluster_id: u64) -> Self {
        self.cluster_id = cluster_id;
        self
    }

    /// Dials `https://` peer URLs with `tls` (built by the server from the peer TLS flags).
    pub fn with_tls(mut self, tls: Option<Arc<ClientConfig>>) -> Self {
        self.tls = tls;
        self
    }

    /// This member's network and batching measurements.
    pub fn stats(&self) -> &Arc<NetworkStats> {
        &self.stats
    }

    /// Since when `target` has answered every call without a break, if it answers now (etcd's
    /// `ActiveSince`): what the leader's membership checks ask of the voters.
    pub fn active_since(&self, target: NodeId) -> Option<Instant> {
        let health = self.health.lock();
        let peer = health.get(&target)?;
        if peer.last_answer.elapsed() > ACTIVE_WITHIN {
            return None;
        }
        peer.active_since
    }

    /// Stops (or resumes) sending log entries and heartbeats: see `replication_paused`.
    pub fn pause_replication(&self, paused: bool) {
        self.replication_paused.store(paused, Ordering::SeqCst);
    }

    fn record_health(&self, target: NodeId, answered: bool) {
        let now = Instant::now();
        let mut health = self.health.lock();
        let peer = health.entry(target).or_insert(PeerHealth {
            active_since: None,
            last_answer: now,
        });
        if answered {
            if peer.active_since.is_none() || peer.last_answer.elapsed() > ACTIVE_WITHIN {
                peer.active_since = Some(now);
            }
            peer.last_answer = now;
        } else {
            peer.active_since = None;
            self.stats
                .peer_sent_failures
                .get_or_create(&peer_label(target))
                .inc();
        }
    }

    fn channel(&self, target: NodeId, node: &PeerNode) -> Result<Channel, CallError> {
        let unreachable = |reason: String| CallError::NotSent { target, reason };
        let url = node
            .peer_urls
            .first()
            .ok_or_else(|| unreachable("member has no peer URL".to_string()))?;
        let mut channels = self.channels.lock();
        if let Some((cached_url, channel)) = channels.get(&target) {
            if cached_url == url {
                return Ok(channel.clone());
            }
        }
        let endpoint = |endpoint_url: String| {
            Endpoint::from_shared(endpoint_url)
                .map_err(|e| unreachable(format!("invalid peer URL {url}: {e}")))
                .map(|endpoint| {
                    endpoint
                        .connect_timeout(CONNECT_TIMEOUT)
                        .tcp_nodelay(true)
                        .initial_stream_window_size(PEER_STREAM_WINDOW_BYTES)
                        .initial_connection_window_size(PEER_CONNECTION_WINDOW_BYTES)
                        .http2_keep_alive_interval(Duration::from_secs(10))
                        .keep_alive_while_idle(true)
                })
        };
        let channel = match url.strip_prefix("https://") {
            Some(host_port) => {
                let tls = self.tls.as_ref().ok_or_else(|| {
                    unreachable(format!(
                        "peer URL {url} needs TLS, but this member has no peer certificate \
                         (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file)"
                    ))
                })?;
                let target = TlsTarget::new(host_port, tls).map_err(unreachable)?;
                endpoint(target.endpoint_url)?.connect_with_connector_lazy(target.connector)
            }
            None => endpoint(url.clone())?.connect_lazy(),
        };
        channels.insert(target, (url.clone(), channel.clone()));
        Ok(channel)
    }

    /// Sends one request and returns the reply's bytes, applying the fault rules to both
    /// directions: a cut request link loses the request, a cut reply link loses the reply.
    async fn call(
        &self,
        target: NodeId,
        node: &PeerNode,
        method: Method,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.pass(self.id, target).await?;
        let channel = self.channel(target, node)?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_REPLY_BYTES)
            .max_encoding_message_size(self.max_message_bytes);
        let mut request = tonic::Request::new(RaftRequest { data });
        if self.cluster_id != 0 {
            crate::caller::name(request.metadata_mut(), self.cluster_id, self.id);
        }
        let reply = async {
            match method {
                Method::AppendEntries => client.append_entries(request).await,
                Method::InstallSnapshot => client.install_snapshot(request).await,
                Method::Vote => client.vote(request).await,
                Method::Forward => client.forward(request).await,
                Method::ForwardBatch => client.forward_batch(request).await,
                Method::ReadIndex => client.read_index(request).await,
                Method::Lease => client.lease(request).await,
                Method::Admin => client.admin(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, reply).await {
            Err(_) => return Err(CallError::Timeout { target, timeout }),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                let reason = status.message().to_string();
                // A failed connect or TLS handshake sent nothing; any other transport failure
                // may have come after the request was delivered.
                let not_sent =
                    reason.contains(TCP_CONNECT_ERROR) || reason.contains(TLS_HANDSHAKE_ERROR);
                return Err(if not_sent {
                    CallError::NotSent { target, reason }
                } else {
                    CallError::Unreachable { target, reason }
                });
            }
            Ok(Err(status)) => return Err(CallError::Status { target, status }),
            Ok(Ok(reply)) => reply.into_inner().data,
        };
        self.pass(target, self.id).await?;
        Ok(reply)
    }

    async fn pass(&self, from: NodeId, to: NodeId) -> Result<(), CallError> {
        match self.faults.verdict(from, to) {
            Verdict::Pass => Ok(()),
            Verdict::Delay(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            // A cut outgoing link loses the request; a cut return link loses only the reply.
            Verdict::Drop if from == self.id => Err(CallError::NotSent {
                target: to,
                reason: format!("link {from} -> {to} is cut"),
            }),
            Verdict::Drop => Err(CallError::Unreachable {
                target: from,
                reason: format!("link {from} -> {to} is cut, the reply was lost"),
            }),
        }
    }

    async fn call_typed<Req: Serialize, Reply: DeserializeOwned>(
        &self,
        target: NodeId,
        node: &PeerNode,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let codec = |source| CallError::Codec {
            target,
            source: Arc::new(source),
        };
        let data = bincode::serialize(request).map_err(codec)?;
        let reply = self.call(target, node, method, data, timeout).await?;
        crate::messages::decode(&reply).map_err(codec)
    }

    /// Asks the leader `target` to propose `command` and to answer once it is applied there.
    pub async fn forward(
        &self,
        target: NodeId,
        node: &PeerNode,
        command: &Command,
        timeout: Duration,
    ) -> Result<ForwardReply, CallError> {
        self.call_typed(target, node, Method::Forward, command, timeout)
            .await
    }

    /// Asks the leader `target` to propose each of `commands` and to answer, for each, once it
    /// is applied there: one reply per command, in order.
    pub async fn forward_batch(
        &self,
        target: NodeId,
        node: &PeerNode,
        commands: &[Command],
        timeout: Duration,
    ) -> Result<Vec<ForwardReply>, CallError> {
        self.call_typed(target, node, Method::ForwardBatch, &commands, timeout)
            .await
    }

    /// Asks the leader `target` for a read index confirmed by a quorum.
    pub async fn read_index(
        &self,
        target: NodeId,
        node: &PeerNode,
        timeout: Duration,
    ) -> Result<ReadIndexReply, CallError> {
        self.call_typed(target, node, Method::ReadIndex, &(), timeout)
            .await
    }
}

impl PeerNetwork {
    /// Asks the leader `target` a lease question.
    pub async fn lease(
        &self,
        target: NodeId,
        node: &PeerNode,
        request: LeaseRequest,
        timeout: Duration,
    ) -> Result<LeaseReply, CallError> {
        self.call_typed(target, node, Method::Lease, &request, timeout)
            .await
    }

    /// Asks `target` a question, or gives it an order, about the cluster itself.
    pub async fn admin(
        &self,
        target: NodeId,
        node: &PeerNode,
        request: &AdminRequest,
        timeout: Duration,
    ) -> Result<AdminReply, CallError> {
        let began = Instant::now();
        let reply: Result<AdminReply, CallError> = self
            .call_typed(target, node, Method::Admin, request, timeout)
            .await;
        let answered = matches!(reply, Ok(Ok(_)) | Ok(Err(AdminError::NotLeader { .. })));
        self.record_health(target, answered);
        // The probes' question is answered from memory: its time is the link's round trip.
        if answered && matches!(request, AdminRequest::ClusterInfo) {
            self.stats
                .peer_round_trip
                .get_or_create(&peer_label(target))
                .observe(began.elapsed().as_secs_f64());
        }
        reply
    }
}

impl PeerNetwork {
    /// The error of a replication call while replication is paused (a leader transfer), if it
    /// is.
    fn replication_paused<E: std::error::Error>(
        &self,
        target: NodeId,
    ) -> Option<RPCError<NodeId, PeerNode, E>> {
        if !self.replication_paused.load(Ordering::SeqCst) {
            return None;
        }
        let paused = CallError::NotSent {
            target,
            reason: "replication paused: leadership is being handed over".to_string(),
        };
        Some(RPCError::Unreachable(Unreachable::new(&paused)))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerConnection {
        PeerConnection {
            network: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerConnection {
    network: PeerNetwork,
    target: NodeId,
    node: PeerNode,
}

impl PeerConnection {
    /// Sends an openraft RPC whose reply is `Result<Reply, RaftError<NodeId, E>>` on the wire.
    async fn send<Req, Reply, E>(
        &self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Reply: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Result<Reply, RaftError<NodeId, E>>, CallError> = self
            .network
            .call_typed(self.target, &self.node, method, request, option.hard_ttl())
            .await;
        // The leader's health view of its peers comes from its Raft calls, which it makes to
        // each at least every heartbeat: a peer whose Raft has stopped is not running.
        let answered = matches!(reply, Ok(Ok(_)) | Ok(Err(RaftError::APIError(_))));
        self.network.record_health(self.target, answered);
        let reply = reply.map_err(|e| match e {
            CallError::NotSent { .. } | CallError::Unreachable { .. } => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        })?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let (from, to) = (self.network.id, self.target);
        if let Some(paused) = self.network.replication_paused(to) {
            return Err(paused);
        }
        if !rpc.entries.is_empty() && self.network.faults.holds_entries(from, to) {
            let held = CallError::NotSent {
                target: to,
                reason: format!("link {from} -> {to} holds back log entries"),
            };
            return Err(RPCError::Unreachable(Unreachable::new(&held)));
        }
        // The log store's reader already ends a batch at 1 MiB of records or one entry; this
        // keeps appends within the peers' message limit whatever openraft hands over: only the
        // entries that fit go, and the follower's success is reported for them alone (openraft
        // sends the rest next).
        let budget = self.network.max_message_bytes - ENVELOPE_BYTES;
        let mut rpc = rpc;
        let mut bytes = 0;
        let fit = rpc
            .entries
            .iter()
            .position(|entry| {
                bytes += bincode::serialized_size(entry).unwrap_or(u64::MAX) as usize;
                bytes > budget
            })
            .unwrap_or(rpc.entries.len())
            .max(1);
        if fit >= rpc.entries.len() {
            return self.send(Method::AppendEntries, &rpc, &option).await;
        }
        rpc.entries.truncate(fit);
        let last_sent = rpc.entries.last().map(|entry| entry.log_id);
        tracing::debug!(
            target = to,
            entries = fit,
            "append cut to fit a peer message"
        );
        let response = self.send(Method::AppendEntries, &rpc, &option).await?;
        Ok(match response {
            AppendEntriesResponse::Success => AppendEntriesResponse::PartialSuccess(last_sent),
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        if let Some(paused) = self.network.replication_paused(self.target) {
            return Err(paused);
        }
        self.send(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.send(Method::Vote, &rpc, &option).await
    }
}
