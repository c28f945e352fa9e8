//! The paths every client request takes into Raft and back: writes proposed on the leader
//! (forwarded when this member follows) and awaited until applied here, linearizable reads
//! through a read index, and lease questions asked of the leader's lessor.
//!
//! `Node` is what a member's services share; it is built by `crate::server`, which wires it to
//! Raft, storage and the network, and reached by services through `crate::client`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, RaftMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rampart_api::etcdserverpb::ResponseHeader;
use rampart_network::{
    Admission, Admitted, CallError, ForwardError, Forwarder, LeaseHandler, LeaseRequest,
    LeaseStatus, PeerHandlers, PeerNetwork, PeerService, Proposer, ReadIndexer, ADMISSION_WAIT,
};
use rampart_storage::{
    AlarmAction, AlarmMember, AlarmType, Command, CommandResponse, CommandResult, Mvcc, NodeId,
    PeerNode, Store, TypeConfig,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::alarm::Quota;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::error::ServerError;

/// How far this member's applied index may fall behind its commit index before it refuses new
/// writes: etcd's `maxGapBetweenApplyAndCommitIndex`.
pub const MAX_APPLY_GAP: u64 = 5_000;

/// The state every client service shares: one per member.
pub struct Node {
    config: Config,
    raft: Raft<TypeConfig>,
    /// The read handle of the state machine: what this member has applied.
    mvcc: Mvcc,
    /// The data directory, for its size and its flush.
    store: Store,
    /// Calls to the other members (forwarded lease questions).
    network: PeerNetwork,
    /// Batches this node's proposals when it leads (and forwarded ones, through the peer service).
    proposer: Proposer,
    /// Batches the writes this node forwards to the leader.
    forwarder: Forwarder,
    /// The bound of this member's clients' writes in progress (`--max-pending-writes`,
    /// `--max-pending-write-bytes`), checked before anything is proposed or forwarded.
    admission: Admission,
    /// Batches the read-index rounds of linearizable reads (this node's and, when it leads,
    /// forwarded ones).
    read_indexer: ReadIndexer,
    metrics: watch::Receiver<RaftMetrics<NodeId, PeerNode>>,
    /// What the request paths count, for `crate::metrics`.
    stats: NodeStats,
    /// `--quota-backend-bytes` against this member's database size.
    quota: Quota,
    /// Set when this member's start-up check found its data unlike its peers' (before its
    /// CORRUPT alarm is applied): it serves no client.
    found_corrupt: AtomicBool,
    /// The tokens this member issued and its password hashing (`crate::auth`).
    authenticator: Authenticator,
}

/// What this member's request paths count, for its metrics (etcd's names in `crate::metrics`).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Writes proposed through this member and not answered yet.
    pub proposals_pending: Gauge,
    /// Writes through this member that failed before they were applied (no leader, timeouts,
    /// leader changes): not those the state machine refused.
    pub proposals_failed: Counter,
    /// Writes refused before they were proposed with "too many requests": a full queue, here
    /// or on the leader, or this member's applied index too far behind its commit index.
    pub writes_refused: Counter,
    /// Watchers open on this member's watch streams.
    pub watchers: Gauge,
}

impl Node {
    /// Starts the batching tasks of a member's request paths over its Raft, store and network.
    pub(crate) fn new(
        config: Config,
        raft: Raft<TypeConfig>,
        store: Store,
        network: PeerNetwork,
    ) -> Node {
        let proposer = Proposer::start(
            raft.clone(),
            config.request_timeout(),
            network.stats().clone(),
            config.pending_writes,
        );
        let read_indexer =
            ReadIndexer::start(raft.clone(), network.clone(), config.request_timeout());
        let forwarder = Forwarder::start(network.clone(), config.request_timeout());
        Node {
            admission: Admission::new(config.pending_writes),
            authenticator: Authenticator::new(config.tokens.clone(), config.bcrypt_cost),
            quota: Quota::new(config.quota_backend_bytes),
            found_corrupt: AtomicBool::new(false),
            proposer,
            forwarder,
            read_indexer,
            metrics: raft.metrics(),
            stats: NodeStats::default(),
            mvcc: store.mvcc(),
            config,
            raft,
            store,
            network,
        }
    }

    /// The receiving side of the peer protocol: Raft's RPCs, and the writes, read-index rounds
    /// and lease questions the other members send this one when it leads.
    pub(crate) fn peer_service(&self, handlers: PeerHandlers) -> PeerService {
        PeerService::new(
            self.raft.clone(),
            self.proposer.clone(),
            self.read_indexer.clone(),
            self.config.request_timeout(),
            handlers,
            rampart_network::max_peer_message_bytes(self.config.max_request_bytes),
            self.config.cluster_id,
        )
    }

    pub fn id(&self) -> NodeId {
        self.config.member_id
    }

    /// This member's Raft, for the membership changes and leader transfers of
    /// `crate::membership`; requests go through [`Node::write`] and [`Node::read_barrier`].
    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Whether member `id` answers this member's calls now.
    pub fn peer_reachable(&self, id: NodeId) -> bool {
        self.network.active_since(id).is_some()
    }

    /// Calls to the other members.
    pub(crate) fn network(&self) -> &PeerNetwork {
        &self.network
    }

    /// Whether this member is a learner of its newest membership (etcd's `IsLearner`): it
    /// receives the log but neither votes nor counts for a quorum.
    pub fn is_learner(&self) -> bool {
        let metrics = self.metrics.borrow();
        let membership = metrics.membership_config.membership();
        let id = self.id();
        membership.nodes().any(|(&node, _)| node == id) && !membership.voter_ids().any(|v| v == id)
    }

    /// This member's validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The read handle of this member's MVCC store (its applied state).
    pub fn mvcc(&self) -> &Mvcc {
        &self.mvcc
    }

    /// The tokens this member issued, and its password hashing.
    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, PeerNode> {
        self.metrics.borrow().clone()
    }

    /// Follows this member's Raft metrics (role, leader, term, applied index).
    pub(crate) fn subscribe_metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, PeerNode>> {
        self.metrics.clone()
    }

    /// What the request paths count.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// What the store measures of itself (fsync and flush durations, slow applies).
    pub fn storage_stats(&self) -> Arc<rampart_storage::StorageStats> {
        self.store.stats()
    }

    /// How many requests the applied entries held, for the log's retention.
    pub(crate) fn applied_requests(&self) -> Arc<rampart_storage::AppliedRequests> {
        self.store.applied_requests()
    }

    /// What the network and the batching measure.
    pub fn network_stats(&self) -> &Arc<rampart_network::NetworkStats> {
        self.network.stats()
    }

    /// The database's size on disk, in bytes (etcd's `dbSize`).
    pub(crate) fn db_size(&self) -> u64 {
        self.store.size_on_disk()
    }

    /// etcd's quota check where a write enters: when this member's database plus `cost` bytes
    /// would reach `--quota-backend-bytes`, raises this member's NOSPACE alarm through Raft
    /// (unless raised already) and refuses the write with "database space exceeded".
    pub(crate) async fn check_quota(&self, cost: u64) -> Result<(), ServerError> {
        if self.quota.available(cost, || self.db_size()) {
            return Ok(());
        }
        let mine = AlarmMember {
            member_id: self.id(),
            alarm: AlarmType::NoSpace,
        };
        if !self.mvcc.alarms().contains(&mine) {
            tracing::warn!(
                quota = ?self.config.quota_backend_bytes,
                size = self.db_size(),
                "the database outgrew its quota: raising the NOSPACE alarm"
            );
            // Refused either way; the alarm is raised again by the next write if this fails.
            if let Err(e) = self.alarm(AlarmAction::Activate, mine).await {
                tracing::warn!(error = %e, "cannot raise the NOSPACE alarm");
            }
        }
        Err(ServerError::NoSpace)
    }

    /// Raises or clears `alarm` through Raft; returns the alarm changed (none if it already was).
    pub(crate) async fn alarm(
        &self,
        action: AlarmAction,
        alarm: AlarmMember,
    ) -> Result<Vec<AlarmMember>, ServerError> {
        match self.write(Command::Alarm { action, alarm }).await?.result {
            Ok(CommandResult::Alarm(changed)) => Ok(changed),
            Err(e) => Err(e.into()),
            Ok(other) => Err(ServerError::Internal(format!(
                "unexpected result from the state machine: {other:?}"
            ))),
        }
    }

    /// The raised alarms, as this member has applied them.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.mvcc.alarms()
    }

    /// Marks this member's data as unlike the cluster's (the start-up corruption check): it
    /// serves no client from now on.
    pub(crate) fn mark_corrupt(&self) {
        self.found_corrupt.store(true, Ordering::SeqCst);
    }

    /// Hands the refusal of clients over to this member's CORRUPT alarm, once applied.
    pub(crate) fn clear_found_corrupt(&self) {
        self.found_corrupt.store(false, Ordering::SeqCst);
    }

    /// `Corrupt` if this member must not serve clients: its start-up check found its data
    /// unlike its peers', or a CORRUPT alarm names it. The other members go on serving.
    pub(crate) fn check_not_corrupt(&self) -> Result<(), ServerError> {
        let id = self.id();
        let named = || {
            self.mvcc
                .alarms()
                .iter()
                .any(|a| a.member_id == id && a.alarm == AlarmType::Corrupt)
        };
        if self.found_corrupt.load(Ordering::SeqCst) || named() {
            return Err(ServerError::Corrupt);
        }
        Ok(())
    }

    /// The bytes of the database in use (etcd's `dbSizeInUse`; see `Store::size_in_use`).
    pub(crate) fn db_size_in_use(&self) -> u64 {
        self.store.size_in_use()
    }

    /// Rewrites this member's database into a fresh one and swaps it in, on a blocking thread;
    /// reads and writes go on but for a short pause (see `rampart_storage::DefragReport`). A
    /// call while one runs joins it.
    pub(crate) async fn defragment(&self) -> Result<rampart_storage::DefragReport, ServerError> {
        let defragment = self.store.defragmenter();
        tokio::task::spawn_blocking(defragment)
            .await
            .map_err(|e| ServerError::Internal(format!("defragment failed: {e}")))?
            .map_err(ServerError::from)
    }

    /// Makes everything this member has applied durable (see `rampart_storage::Disk`).
    pub(crate) fn flush(&self) -> Result<(), ServerError> {
        self.store.flush().map_err(ServerError::from)
    }

    /// A response header at the revision this member has applied.
    pub fn current_header(&self) -> ResponseHeader {
        self.header(self.mvcc.revision())
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

    /// Whether this member knows of a leader it can reach (etcd's `Leader() != None`).
    pub(crate) fn has_leader(&self) -> bool {
        self.leader().is_some()
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
    pub(crate) async fn wait_for_leader(
        &self,
        deadline: Instant,
    ) -> Result<(NodeId, PeerNode), ServerError> {
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
    pub(crate) fn leader_wait(&self) -> Duration {
        2 * self.config.election_timeout
    }

    /// Proposes `command` through Raft, on the leader wherever it is, and returns once this
    /// node has applied it, so a later serializable read here sees it. The entry is on the disks
    /// of a quorum when the leader answers.
    ///
    /// A write that would exceed this member's bounds is refused at once with
    /// [`ServerError::TooManyRequests`], before it is proposed (see [`Node::admit`]).
    pub async fn write(&self, command: Command) -> Result<CommandResponse, ServerError> {
        let _admitted = self.admit(&command).await.inspect_err(|_| {
            self.stats.writes_refused.inc();
        })?;
        // Counted until the write ends, however it ends (its caller going away included).
        let _pending = Held::new(&self.stats.proposals_pending);
        let result = self.write_through_leader(command).await;
        match &result {
            Err(ServerError::TooManyRequests) => {
                self.stats.writes_refused.inc();
            }
            Err(_) => {
                self.stats.proposals_failed.inc();
            }
            Ok(_) => {}
        }
        result
    }

    /// Room for `command` among this member's writes in progress, held until the write is
    /// answered; refused, as etcd's `processInternalRaftRequestOnce` refuses, while this
    /// member's state machine is more than [`MAX_APPLY_GAP`] entries behind the commit index
    /// (its writes would wait for all of those), and when the writes in progress fill
    /// `--max-pending-writes` or `--max-pending-write-bytes` for longer than
    /// [`ADMISSION_WAIT`].
    async fn admit(&self, command: &Command) -> Result<Admitted, ServerError> {
        let applied = self.mvcc.applied_index();
        if self.store.committed_index() > applied + MAX_APPLY_GAP {
            return Err(ServerError::TooManyRequests);
        }
        self.admission
            .admit(command.encoded_size(), ADMISSION_WAIT)
            .await
            .ok_or(ServerError::TooManyRequests)
    }

    /// [`Node::write`]'s work.
    async fn write_through_leader(&self, command: Command) -> Result<CommandResponse, ServerError> {
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
                // The leader's queue was full: nothing was proposed.
                Err(ForwardError::TooManyRequests) => return Err(ServerError::TooManyRequests),
                Err(ForwardError::LeaderChanged) => return Err(ServerError::LeaderChanged),
                Err(ForwardError::Unavailable(_)) => return Err(ServerError::LeaderChanged),
                // This member checked the request as the leader did: they disagree on the
                // checks (different versions, say). Nothing was proposed.
                Err(ForwardError::Rejected(reason)) => {
                    return Err(ServerError::Internal(format!(
                        "the leader refused a request this member accepted: {reason}"
                    )))
                }
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
        // etcd's learners serve serializable reads only.
        if self.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
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

    /// Proposes `command` on this member's own Raft, never forwarded: for the lessor, whose
    /// decisions are this leader's alone. The entry is on a quorum's disks when it answers.
    pub(crate) async fn propose_here(
        &self,
        command: Command,
    ) -> Result<(u64, CommandResponse), ForwardError> {
        rampart_network::propose(&self.raft, command, self.config.request_timeout()).await
    }

    /// This member's own read index, confirmed with a quorum; it fails unless this member leads.
    pub(crate) async fn read_index_here(&self) -> Result<u64, ForwardError> {
        self.read_indexer.local(self.config.request_timeout()).await
    }

    /// Stops Raft: no more entries are appended or applied here.
    pub(crate) async fn shutdown_raft(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft did not stop cleanly: {e}");
        }
    }

    /// Whether Raft's workers have let go of the storage, so that a final flush sees every
    /// write (see `Store::released`).
    pub(crate) fn storage_released(&self) -> bool {
        self.store.released()
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

/// One of what a gauge counts (a pending write, an open watcher): raises the gauge when made,
/// lowers it when dropped.
#[derive(Debug)]
pub(crate) struct Held(Gauge);

impl Held {
    pub(crate) fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
