//! A running member: Raft, storage and network wired together, and the paths every client
//! request takes through them (writes forwarded to the leader, linearizable reads through a
//! read index).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, RaftMetrics, SnapshotPolicy};
use rampart_api::etcdserverpb::ResponseHeader;
use rampart_network::{
    CallError, ForwardError, Forwarder, LeaseHandler, LeaseRequest, LeaseStatus, LinkFaults,
    PeerNetwork, PeerService, Proposer, ReadIndexer,
};
use rampart_storage::{
    ClusterIdentity, Command, CommandResponse, MemberAttributes, Mvcc, NodeId, PeerNode, Store,
    TypeConfig,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClusterState, Config};
use crate::error::ServerError;
use crate::fault_control::FaultControl;
use crate::lessor::Lessor;
use crate::services;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open data directory {dir}")]
    Storage {
        dir: String,
        #[source]
        source: rampart_storage::StoreError,
    },
    #[error(
        "data directory {dir} belongs to cluster {found_cluster:016x} as member \
         {found_member:016x}, but this configuration makes cluster {want_cluster:016x} member \
         {want_member:016x}; check --data-dir, --initial-cluster and --initial-cluster-token"
    )]
    WrongCluster {
        dir: String,
        found_cluster: u64,
        found_member: u64,
        want_cluster: u64,
        want_member: u64,
    },
    #[error("--initial-cluster-state existing needs a data directory that already holds this member (joining a running cluster is not supported yet)")]
    JoinUnsupported,
    #[error("invalid Raft configuration: {0}")]
    Raft(String),
    #[error("cannot serve: {0}")]
    Serve(String),
}

/// The listeners a node serves on, bound by the caller so that tests can use port 0.
pub struct Listeners {
    pub client: Vec<TcpListener>,
    pub peer: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every listen URL of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        async fn bind_all(urls: &[String]) -> Result<Vec<TcpListener>, StartError> {
            let mut listeners = Vec::new();
            for url in urls {
                let addr = crate::config::socket_addr(url).map_err(StartError::Serve)?;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartError::Serve(format!("cannot listen on {url}: {e}")))?;
                listeners.push(listener);
            }
            Ok(listeners)
        }
        Ok(Listeners {
            client: bind_all(&config.listen_client_urls).await?,
            peer: bind_all(&config.listen_peer_urls).await?,
        })
    }
}

/// The state every client service shares: one per member.
pub struct Node {
    pub config: Config,
    pub raft: Raft<TypeConfig>,
    pub mvcc: Mvcc,
    pub store: Store,
    network: PeerNetwork,
    /// Batches this node's proposals when it leads (and forwarded ones, through the peer service).
    proposer: Proposer,
    /// Batches the writes this node forwards to the leader.
    forwarder: Forwarder,
    /// Batches the read-index rounds of linearizable reads (this node's and, when it leads,
    /// forwarded ones).
    read_indexer: ReadIndexer,
    metrics: watch::Receiver<RaftMetrics<NodeId, PeerNode>>,
}

impl Node {
    pub fn id(&self) -> NodeId {
        self.config.member_id
    }

    /// This member's validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The read handle of this member's MVCC store (its applied state).
    pub fn mvcc(&self) -> &Mvcc {
        &self.mvcc
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, PeerNode> {
        self.metrics.borrow().clone()
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.config.member_id,
            revision,
            raft_term: self.metrics.borrow().current_term,
        }
    }

    /// The leader this node knows of. A leader that has not heard from a quorum for an
    /// election timeout does not count: it is cut off and cannot commit, so requests on it fail
    /// fast with "no leader" instead of waiting for a timeout (etcd's check-quorum).
    fn leader(&self) -> Option<(NodeId, PeerNode)> {
        let metrics = self.metrics.borrow();
        let leader = metrics.current_leader?;
        let election_ms = self.config.election_timeout.as_millis() as u64;
        if leader == self.id()
            && metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| ms > election_ms)
        {
            return None;
        }
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()?;
        Some((leader, node))
    }

    /// The current term if this node leads it and has heard from a quorum within an election
    /// timeout (the same check as [`Node::leader`]); `None` otherwise.
    pub(crate) fn leading_term(&self) -> Option<u64> {
        let metrics = self.metrics.borrow();
        let election_ms = self.config.election_timeout.as_millis() as u64;
        let leads = metrics.state == openraft::ServerState::Leader
            && metrics.current_leader == Some(self.id())
            && metrics
                .millis_since_quorum_ack
                .is_none_or(|ms| ms <= election_ms);
        leads.then_some(metrics.current_term)
    }

    /// Waits, at most until `deadline`, for a leader this node can reach; `NoLeader` if none.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<(NodeId, PeerNode), ServerError> {
        let mut metrics = self.metrics.clone();
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Err(_) => return Err(ServerError::NoLeader),
                Ok(Err(_)) => return Err(ServerError::Stopped),
                Ok(Ok(())) => {}
            }
        }
    }

    /// How long a request waits for a leader to appear before it fails with "no leader": long
    /// enough for one election, short enough that a node cut off from the quorum fails fast.
    fn leader_wait(&self) -> Duration {
        2 * self.config.election_timeout
    }

    /// Proposes `command` through Raft, on the leader wherever it is, and returns once this
    /// node has applied it, so a later serializable read here sees it. The entry is on the disks
    /// of a quorum when the leader answers.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, ServerError> {
        let deadline = Instant::now() + self.config.request_timeout();
        let mut leader_deadline = Instant::now() + self.leader_wait();
        loop {
            let (leader, node) = self.wait_for_leader(leader_deadline.min(deadline)).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let reply = if leader == self.id() {
                self.proposer.propose(command.clone(), remaining).await
            } else {
                match self
                    .forwarder
                    .forward(leader, node, command.clone(), remaining)
                    .await
                {
                    Ok(reply) => reply,
                    // Never sent: safe to send again once a leader is reachable.
                    Err(CallError::NotSent { .. }) => {
                        if Instant::now() >= leader_deadline {
                            return Err(ServerError::NoLeader);
                        }
                        tokio::time::sleep(self.config.heartbeat_interval).await;
                        continue;
                    }
                    Err(CallError::Timeout { .. }) => return Err(ServerError::Timeout),
                    // Perhaps delivered and carried out (its reply lost, say): sending it
                    // again could apply it twice, so the outcome is reported unknown.
                    Err(
                        CallError::Unreachable { .. }
                        | CallError::Status { .. }
                        | CallError::Codec { .. },
                    ) => return Err(ServerError::LeaderChanged),
                }
            };
            match reply {
                Ok((index, response)) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(response);
                }
                // The entry was never committed: send it to the new leader.
                Err(ForwardError::NotLeader { .. }) => {
                    leader_deadline = Instant::now() + self.leader_wait();
                    self.wait_leader_change(leader, leader_deadline.min(deadline))
                        .await;
                    continue;
                }
                Err(ForwardError::Timeout) => return Err(ServerError::Timeout),
                Err(ForwardError::LeaderChanged) => return Err(ServerError::LeaderChanged),
                Err(ForwardError::Unavailable(_)) => return Err(ServerError::LeaderChanged),
            }
        }
    }

    /// Waits until this node no longer believes `old` leads, or until `deadline`.
    async fn wait_leader_change(&self, old: NodeId, deadline: Instant) {
        let mut metrics = self.metrics.clone();
        while metrics.borrow().current_leader == Some(old) {
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// Waits until the local state machine has applied log index `index`.
    pub(crate) async fn wait_applied(
        &self,
        index: u64,
        deadline: Instant,
    ) -> Result<(), ServerError> {
        match tokio::time::timeout_at(deadline, self.mvcc.wait_applied(index)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::TimeoutWaitAppliedIndex),
        }
    }

    /// The read barrier of a linearizable read: the leader confirms with a quorum that it still
    /// leads and names its commit index (the read index), and this node waits until it has
    /// applied that far. Anything acknowledged before the read began is then visible here.
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.config.request_timeout();
        let index = self
            .ask_leader(
                deadline,
                |timeout| self.read_indexer.local(timeout),
                |leader, node, timeout| async move {
                    Ok(self.read_indexer.remote(leader, node, timeout).await)
                },
            )
            .await?;
        self.wait_applied(index, deadline).await
    }

    /// Asks the leader a lease question: `local` (this node's lessor) answers it when this node
    /// leads, the leader's lessor otherwise. Only the leader knows when leases expire.
    pub(crate) async fn ask_leader_lease(
        &self,
        request: LeaseRequest,
        local: &dyn LeaseHandler,
    ) -> Result<LeaseStatus, ServerError> {
        let deadline = Instant::now() + self.config.request_timeout();
        self.ask_leader(
            deadline,
            |_| local.handle(request),
            |leader, node, timeout| async move {
                self.network.lease(leader, &node, request, timeout).await
            },
        )
        .await
    }

    /// Asks the leader, wherever it is, something that does no harm when asked twice (a read
    /// index; a lease question, where a keep-alive only moves an expiry later): `local` answers
    /// it when this node leads, `remote` sends it to the leader otherwise. After a leader change
    /// it is asked again, until `deadline`.
    async fn ask_leader<T, Local, LocalFut, Remote, RemoteFut>(
        &self,
        deadline: Instant,
        local: Local,
        remote: Remote,
    ) -> Result<T, ServerError>
    where
        Local: Fn(Duration) -> LocalFut,
        LocalFut: Future<Output = Result<T, ForwardError>>,
        Remote: Fn(NodeId, PeerNode, Duration) -> RemoteFut,
        RemoteFut: Future<Output = Result<Result<T, ForwardError>, CallError>>,
    {
        let mut leader_deadline = Instant::now() + self.leader_wait();
        loop {
            let (leader, node) = self.wait_for_leader(leader_deadline.min(deadline)).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let reply = if leader == self.id() {
                local(remaining).await
            } else {
                match remote(leader, node, remaining).await {
                    Ok(reply) => reply,
                    Err(CallError::Timeout { .. }) => return Err(ServerError::Timeout),
                    Err(_) => Err(ForwardError::LeaderChanged),
                }
            };
            match reply {
                Ok(answer) => return Ok(answer),
                Err(ForwardError::Timeout) => return Err(ServerError::Timeout),
                // Asking changes nothing, so it can always be tried again, until the deadline.
                Err(_) => {
                    if Instant::now() >= leader_deadline.min(deadline) {
                        return Err(ServerError::NoLeader);
                    }
                    self.wait_leader_change(leader, leader_deadline.min(deadline))
                        .await;
                    if self.leader().map(|(id, _)| id) != Some(leader) {
                        leader_deadline = Instant::now() + self.leader_wait();
                    } else {
                        tokio::time::sleep(self.config.heartbeat_interval).await;
                    }
                }
            }
        }
    }
}

/// How long [`RunningNode::shutdown`] lets requests in flight finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// A started member; dropping it does not stop it, [`RunningNode::shutdown`] does.
pub struct RunningNode {
    pub node: Arc<Node>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl RunningNode {
    /// Opens the data directory, starts Raft and serves the client and peer listeners.
    pub async fn start(
        config: Config,
        listeners: Listeners,
        faults: LinkFaults,
    ) -> Result<RunningNode, StartError> {
        let dir = config.data_dir.display().to_string();
        let storage_error = |source| StartError::Storage {
            dir: dir.clone(),
            source,
        };
        let store = Store::open(&config.data_dir).map_err(storage_error)?;
        let want = ClusterIdentity {
            cluster_id: config.cluster_id,
            member_id: config.member_id,
        };
        let fresh = match store.identity().map_err(storage_error)? {
            Some(found) if found != want => {
                return Err(StartError::WrongCluster {
                    dir,
                    found_cluster: found.cluster_id,
                    found_member: found.member_id,
                    want_cluster: want.cluster_id,
                    want_member: want.member_id,
                })
            }
            Some(_) => false,
            None => true,
        };
        if fresh && config.initial_cluster_state == ClusterState::Existing {
            return Err(StartError::JoinUnsupported);
        }

        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout.as_millis() as u64,
            election_timeout_max: 2 * config.election_timeout.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
            // Purge as soon as a snapshot allows, so the log stays bounded.
            purge_batch_size: 1,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let network = PeerNetwork::new(config.member_id, faults.clone());
        let raft = Raft::new(
            config.member_id,
            raft_config,
            network.clone(),
            store.log_store(),
            store.state_machine(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        if fresh {
            let members: BTreeMap<NodeId, PeerNode> = config
                .initial_cluster
                .iter()
                .map(|m| {
                    (
                        m.id,
                        PeerNode {
                            name: m.name.clone(),
                            peer_urls: m.peer_urls.clone(),
                        },
                    )
                })
                .collect();
            // Every initial member initializes with the same membership; openraft refuses a
            // second initialization, which is harmless here.
            if let Err(e) = raft.initialize(members).await {
                tracing::info!("cluster already initialized: {e}");
            }
            // Record the identity last: a crash before this point leaves a directory that the
            // next start treats as fresh again, which initializes identically.
            store.set_identity(&want).map_err(storage_error)?;
        }

        let proposer = Proposer::start(raft.clone(), config.request_timeout());
        let read_indexer =
            ReadIndexer::start(raft.clone(), network.clone(), config.request_timeout());
        let forwarder = Forwarder::start(network.clone(), config.request_timeout());
        let node = Arc::new(Node {
            proposer,
            forwarder,
            read_indexer,
            metrics: raft.metrics(),
            config,
            raft,
            mvcc: store.mvcc(),
            store,
            network,
        });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();

        let lessor = Lessor::new(node.clone(), cancel.clone());
        let peer_service = PeerService::new(
            node.raft.clone(),
            node.proposer.clone(),
            node.read_indexer.clone(),
            node.config.request_timeout(),
            lessor.clone(),
        );
        // TEST ONLY (--experimental-peer-fault-injection): remote control of `faults`.
        let fault_control = node
            .config
            .peer_fault_injection
            .then(|| FaultControl::server(node.id(), faults.clone()));
        for listener in listeners.peer {
            let service = peer_service.clone().into_server();
            let fault_control = fault_control.clone();
            let shutdown = cancel.clone().cancelled_owned();
            tasks.spawn(async move {
                let incoming = rampart_h2_compat::accepted(listener);
                if let Err(e) = tonic::transport::Server::builder()
                    .add_service(service)
                    .add_optional_service(fault_control)
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                {
                    tracing::error!("peer server failed: {e}");
                }
            });
        }
        for listener in listeners.client {
            let router =
                services::client_router(node.clone(), lessor.clone(), cancel.clone()).await;
            let shutdown = cancel.clone().cancelled_owned();
            tasks.spawn(async move {
                // etcdctl 3.4 sends a URL as :authority, which h2 rejects; see rampart_h2_compat.
                let incoming = rampart_h2_compat::incoming(listener);
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                {
                    tracing::error!("client server failed: {e}");
                }
            });
        }
        tasks.spawn(publish(node.clone(), cancel.clone()));
        tasks.spawn(lessor.run());

        tracing::info!(
            name = %node.config.name,
            member_id = format_args!("{:016x}", node.id()),
            cluster_id = format_args!("{:016x}", node.config.cluster_id),
            "rampart member started"
        );
        Ok(RunningNode {
            node,
            cancel,
            tasks,
        })
    }

    /// Stops in order: stop accepting and drain client and peer requests, stop Raft, then
    /// flush storage.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        // Serving stops gracefully: requests in flight finish. A client that keeps a stream or
        // connection open past the drain time is cut off rather than allowed to hold the stop.
        if tokio::time::timeout(SHUTDOWN_DRAIN, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                name = %self.node.config.name,
                "requests still in flight after {SHUTDOWN_DRAIN:?}; stopping without them"
            );
        }
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!("raft did not stop cleanly: {e}");
        }
        // openraft's workers may drop their storage handles a moment after `shutdown` returns;
        // flush only once nothing else can write.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.node.store.released() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = self.node.store.flush() {
            tracing::error!("final flush failed: {e}");
        }
        tracing::info!(name = %self.node.config.name, "rampart member stopped");
    }

    /// Completes when the node is asked to stop.
    pub async fn stopped(&self) {
        self.cancel.cancelled().await
    }
}

/// Publishes this member's name and client URLs through Raft, as etcd's members do after they
/// start, retrying until it is applied, so every member can list them.
async fn publish(node: Arc<Node>, cancel: CancellationToken) {
    let attributes = MemberAttributes {
        id: node.id(),
        name: node.config.name.clone(),
        client_urls: node.config.advertise_client_urls.clone(),
    };
    while !cancel.is_cancelled() {
        if node.mvcc.members().contains(&attributes) {
            return;
        }
        let attempt = node.write(Command::Publish(attributes.clone()));
        tokio::select! {
            _ = cancel.cancelled() => return,
            result = attempt => match result {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!("publishing member attributes failed, retrying: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(node.config.election_timeout) => {}
                    }
                }
            },
        }
    }
}
