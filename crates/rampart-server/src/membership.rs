//! Membership: the changes of etcd's Cluster service (add, remove, update, promote) and
//! Maintenance's MoveLeader, made by the leader through openraft's joint consensus with etcd's
//! checks (`--strict-reconfig-check`) and errors; and the peer side of them ([`AdminHandler`]):
//! what a joining member asks, the changes a follower forwards to the leader, whether a member
//! was removed, and the leader's hand-over of its leadership.
//!
//! Invariants:
//! - One change at a time: the leader makes them under `changing`, and openraft commits each
//!   (both joint-consensus steps) before the next begins.
//! - A change answers once it is committed; the members it returns are its result.
//! - A member id is never reused: an added member's id hashes its URLs, the token and the time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership as RaftMembership, RaftMetrics};
use rampart_network::{
    AdminAnswer, AdminError, AdminHandler, AdminReply, AdminRequest, CallError, ChangeRefused,
    ClusterInfo, MemberChange, MemberInfo,
};
use rampart_storage::{NodeId, PeerNode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::node::Node;

/// Most learners a cluster has at once (etcd's `maxLearners`).
const MAX_LEARNERS: usize = 1;

/// How long every voter must have been reachable before a voter is added (etcd's
/// `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// How often each member asks the others whether they answer (see `Membership::probe_peers`).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A learner is in sync once it has this share of the leader's log (etcd's 90%).
const LEARNER_READY_PERCENT: u64 = 90;

/// Membership changes and leader transfers of one member.
pub struct Membership {
    node: Arc<Node>,
    /// Held by the leader while it makes a change: one at a time.
    changing: tokio::sync::Mutex<()>,
    /// Wakes `watch_removal` to ask the leader at once (the leader says it removed this member).
    ask_now: tokio::sync::Notify,
}

/// The members of `membership`, voters and learners, in id order.
pub fn member_infos(membership: &RaftMembership<NodeId, PeerNode>) -> Vec<MemberInfo> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(&id, node)| MemberInfo {
            id,
            node: node.clone(),
            is_learner: !voters.contains(&id),
        })
        .collect()
}

/// The voters as etcd's `--strict-reconfig-check` sees them: which ever started (published
/// their attributes, etcd's `IsStarted`), which this leader reaches now, and which it has
/// reached without a break for [`HEALTH_INTERVAL`].
#[derive(Clone, Debug, Default)]
struct Voters {
    all: BTreeSet<NodeId>,
    me: NodeId,
    started: BTreeSet<NodeId>,
    connected: BTreeSet<NodeId>,
    healthy: BTreeSet<NodeId>,
}

impl Voters {
    /// etcd's `mayAddMember` for a voter, which counts as not started.
    fn may_add(&self) -> Result<(), AdminError> {
        let (started, after) = (self.started.len(), self.all.len() + 1);
        // Growing a one-member cluster to two (etcd's exception, for restoring a cluster).
        let growing_one = started == 1 && after == 2;
        if started < quorum(after) && !growing_one {
            return Err(AdminError::Refused(ChangeRefused::NotEnoughStarted));
        }
        if self.healthy.len() < self.all.len() {
            return Err(AdminError::Refused(ChangeRefused::Unhealthy));
        }
        Ok(())
    }

    /// etcd's `mayRemoveMember` for voter `id`.
    fn may_remove(&self, id: NodeId) -> Result<(), AdminError> {
        let after = self.all.len() - 1;
        let started = self.started.iter().filter(|&&s| s != id).count();
        if started < quorum(after) {
            return Err(AdminError::Refused(ChangeRefused::NotEnoughStarted));
        }
        // A member that is down is no part of the active quorum: removing it costs nothing.
        if id != self.me && !self.connected.contains(&id) {
            return Ok(());
        }
        if self.healthy.len().saturating_sub(1) < quorum(after) {
            return Err(AdminError::Refused(ChangeRefused::Unhealthy));
        }
        Ok(())
    }

    /// etcd's `mayPromoteMember`: the learner, in sync, counts as started.
    fn may_promote(&self) -> Result<(), AdminError> {
        if self.started.len() + 1 < quorum(self.all.len() + 1) {
            return Err(AdminError::Refused(ChangeRefused::NotEnoughStarted));
        }
        Ok(())
    }
}

/// The last log index the leader knows member `id` holds, from the leader's `metrics`.
fn matched_index(metrics: &RaftMetrics<NodeId, PeerNode>, id: NodeId) -> Option<u64> {
    let replication = metrics.replication.as_ref()?;
    replication
        .get(&id)
        .copied()
        .flatten()
        .map(|log_id| log_id.index)
}

/// Votes needed out of `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

impl Membership {
    pub fn new(node: Arc<Node>) -> Arc<Membership> {
        Arc::new(Membership {
            node,
            changing: tokio::sync::Mutex::new(()),
            ask_now: tokio::sync::Notify::new(),
        })
    }

    /// The members of this member's newest membership.
    pub fn members(&self) -> Vec<MemberInfo> {
        member_infos(self.node.metrics().membership_config.membership())
    }

    /// Makes `change` on the leader, wherever it is, and answers once it is committed: the new
    /// member (for an add) and the members after the change.
    pub async fn change(
        &self,
        change: MemberChange,
    ) -> Result<(Option<MemberInfo>, Vec<MemberInfo>), ServerError> {
        let deadline = Instant::now() + self.node.config().request_timeout();
        let mut leader_deadline = Instant::now() + self.node.leader_wait();
        loop {
            let (leader, node) = self
                .node
                .wait_for_leader(leader_deadline.min(deadline))
                .await?;
            let reply = if leader == self.node.id() {
                self.change_on_leader(change.clone()).await
            } else {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let request = AdminRequest::ChangeMembers(change.clone());
                match self
                    .node
                    .network()
                    .admin(leader, &node, &request, remaining)
                    .await
                {
                    Ok(reply) => reply,
                    Err(CallError::NotSent { .. }) => Err(AdminError::NotLeader { leader: None }),
                    Err(CallError::Timeout { .. }) => return Err(ServerError::Timeout),
                    // Perhaps carried out: sending it again could add a second member.
                    Err(_) => return Err(ServerError::LeaderChanged),
                }
            };
            match reply {
                Ok(AdminAnswer::Changed { member, members }) => return Ok((member, members)),
                Ok(other) => {
                    return Err(ServerError::Internal(format!(
                        "membership change answered with {other:?}"
                    )))
                }
                Err(AdminError::Refused(refused)) => return Err(refused_error(refused)),
                Err(AdminError::Unknown(reason)) => {
                    tracing::warn!("membership change outcome unknown: {reason}");
                    return Err(ServerError::LeaderChanged);
                }
                Err(AdminError::Unavailable(_)) => return Err(ServerError::Stopped),
                Err(AdminError::Timeout) => return Err(ServerError::Timeout),
                // Nothing was changed: ask the new leader.
                Err(AdminError::NotLeader { .. }) => {
                    if Instant::now() >= deadline {
                        return Err(ServerError::NoLeader);
                    }
                    leader_deadline = Instant::now() + self.node.leader_wait();
                    tokio::time::sleep(self.node.config().heartbeat_interval).await;
                }
            }
        }
    }

    /// Makes `change` if this member leads. A leader asked to remove itself first hands its
    /// leadership to the most caught-up other voter and sends the asker there, so that the
    /// cluster never waits out an election timeout for a new leader; if no hand-over succeeds,
    /// it removes itself and steps down once the change is committed.
    async fn change_on_leader(&self, change: MemberChange) -> AdminReply {
        let me = self.node.id();
        if change == (MemberChange::Remove { id: me }) {
            let metrics = self.node.metrics();
            let voters: BTreeSet<NodeId> =
                metrics.membership_config.membership().voter_ids().collect();
            if metrics.current_leader == Some(me) && voters.contains(&me) {
                if self.node.config().strict_reconfig_check {
                    self.voters_now(&voters).may_remove(me)?;
                }
                let successor = metrics
                    .replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| **id != me && voters.contains(id))
                    .max_by_key(|(_, matched)| matched.map(|log_id| log_id.index))
                    .map(|(&id, _)| id);
                if let Some(successor) = successor {
                    match self.move_leader(successor).await {
                        Ok(()) => {
                            return Err(AdminError::NotLeader {
                                leader: Some(successor),
                            })
                        }
                        Err(e) => tracing::warn!(
                            "could not hand leadership over before removing this member: {e}"
                        ),
                    }
                }
            }
        }
        self.change_here(change).await
    }

    /// Makes `change` if this member leads.
    async fn change_here(&self, change: MemberChange) -> AdminReply {
        let _one_at_a_time = self.changing.lock().await;
        let metrics = self.node.metrics();
        if metrics.current_leader != Some(self.node.id()) {
            return Err(AdminError::NotLeader {
                leader: metrics.current_leader,
            });
        }
        let membership = metrics.membership_config.membership().clone();
        let members = member_infos(&membership);
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let find = |id: NodeId| {
            members
                .iter()
                .find(|m| m.id == id)
                .ok_or(AdminError::Refused(ChangeRefused::MemberNotFound))
        };
        let strict = self.node.config().strict_reconfig_check;
        let raft = self.node.raft();
        let (new_member, changes) = match change {
            MemberChange::Add {
                peer_urls,
                is_learner,
            } => {
                check_urls(&peer_urls)?;
                if members
                    .iter()
                    .any(|m| m.node.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(AdminError::Refused(ChangeRefused::PeerUrlExists));
                }
                if is_learner {
                    if members.iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS {
                        return Err(AdminError::Refused(ChangeRefused::TooManyLearners));
                    }
                } else if strict {
                    self.voters_now(&voters).may_add()?;
                }
                let id = self.new_member_id(&peer_urls, &members);
                let node = PeerNode {
                    name: String::new(),
                    peer_urls,
                };
                let member = MemberInfo {
                    id,
                    node: node.clone(),
                    is_learner,
                };
                tracing::info!(
                    member_id = format_args!("{id:016x}"),
                    is_learner,
                    peer_urls = ?member.node.peer_urls,
                    "adding a member"
                );
                let change = if is_learner {
                    ChangeMembers::AddNodes(BTreeMap::from([(id, node)]))
                } else {
                    ChangeMembers::AddVoters(BTreeMap::from([(id, node)]))
                };
                (Some(member), change)
            }
            MemberChange::Remove { id } => {
                let member = find(id)?;
                let change = if member.is_learner {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    if strict {
                        self.voters_now(&voters).may_remove(id)?;
                    }
                    tracing::info!(member_id = format_args!("{id:016x}"), "removing a member");
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                };
                (None, change)
            }
            MemberChange::Update { id, peer_urls } => {
                check_urls(&peer_urls)?;
                let member = find(id)?;
                if members
                    .iter()
                    .any(|m| m.id != id && m.node.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(AdminError::Refused(ChangeRefused::PeerUrlExists));
                }
                let node = PeerNode {
                    name: member.node.name.clone(),
                    peer_urls,
                };
                tracing::info!(
                    member_id = format_args!("{id:016x}"),
                    peer_urls = ?node.peer_urls,
                    "updating a member's peer URLs"
                );
                (None, ChangeMembers::SetNodes(BTreeMap::from([(id, node)])))
            }
            MemberChange::Promote { id } => {
                let member = find(id)?;
                if !member.is_learner {
                    return Err(AdminError::Refused(ChangeRefused::NotLearner));
                }
                let last = metrics.last_log_index.unwrap_or(0);
                let matched = matched_index(&metrics, id).unwrap_or(0);
                if matched * 100 < last * LEARNER_READY_PERCENT {
                    return Err(AdminError::Refused(ChangeRefused::LearnerNotReady));
                }
                if strict {
                    self.voters_now(&voters).may_promote()?;
                }
                tracing::info!(member_id = format_args!("{id:016x}"), "promoting a learner");
                (None, ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            }
        };
        // The member a removal takes out, to be told so once it is committed.
        let removed = match &changes {
            ChangeMembers::RemoveNodes(ids) | ChangeMembers::RemoveVoters(ids) => ids
                .iter()
                .find_map(|id| members.iter().find(|m| m.id == *id).cloned()),
            _ => None,
        };
        // A learner is added beside the voters (openraft's `add_learner`); every other change
        // leaves no removed voter behind as a learner.
        let retain = matches!(changes, ChangeMembers::AddNodes(_));
        let timeout = self.node.config().request_timeout();
        let result = tokio::time::timeout(timeout, raft.change_membership(changes, retain)).await;
        let Ok(result) = result else {
            tracing::warn!("a membership change was not committed within {timeout:?}");
            return Err(AdminError::Timeout);
        };
        match result {
            Ok(response) => {
                if let Some(removed) = removed {
                    self.tell_removed(removed);
                }
                let members = response
                    .membership
                    .as_ref()
                    .map(member_infos)
                    .unwrap_or_else(|| self.members());
                Ok(AdminAnswer::Changed {
                    member: new_member,
                    members,
                })
            }
            Err(error) => Err(change_failed(error)),
        }
    }

    /// What the strict reconfiguration checks need to know of `voters` now.
    fn voters_now(&self, voters: &BTreeSet<NodeId>) -> Voters {
        let published: BTreeSet<NodeId> = self.node.mvcc().members().iter().map(|m| m.id).collect();
        let now = std::time::Instant::now();
        let network = self.node.network();
        let me = self.node.id();
        Voters {
            all: voters.clone(),
            me,
            started: voters
                .iter()
                .copied()
                .filter(|id| published.contains(id))
                .collect(),
            connected: voters
                .iter()
                .copied()
                .filter(|&id| id == me || network.active_since(id).is_some())
                .collect(),
            healthy: voters
                .iter()
                .copied()
                .filter(|&id| {
                    id == me
                        || network.active_since(id).is_some_and(|since| {
                            now.saturating_duration_since(since) >= HEALTH_INTERVAL
                        })
                })
                .collect(),
        }
    }

    /// An id for a member added on `peer_urls`, unlike any of `members`'.
    fn new_member_id(&self, peer_urls: &[String], members: &[MemberInfo]) -> NodeId {
        let mut secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        loop {
            let id = crate::config::added_member_id(peer_urls, secs);
            if !members.iter().any(|m| m.id == id) {
                return id;
            }
            secs += 1;
        }
    }

    /// Hands the leadership to `target`, a voter, and answers once it leads. Only the leader
    /// does this (etcd's `MoveLeader`).
    ///
    /// openraft 0.9 has no leader transfer, and a follower refuses votes while the leader's
    /// lease (`election_timeout_max` after its last message) lasts. So the leader waits until
    /// `target` has its whole log, stops sending (no entries, no heartbeats) until the
    /// followers' lease has run out, and asks `target` to stand: it wins, having the newest log,
    /// before any other follower's election timer fires. Writes meanwhile wait or fail as in any
    /// election.
    pub async fn move_leader(&self, target: NodeId) -> Result<(), ServerError> {
        let _one_at_a_time = self.changing.lock().await;
        let metrics = self.node.metrics();
        if metrics.current_leader != Some(self.node.id()) {
            return Err(ServerError::NotLeader);
        }
        if target == self.node.id() {
            return Ok(());
        }
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|id| id == target) {
            return Err(ServerError::BadLeaderTransferee);
        }
        let Some(node) = membership.get_node(&target).cloned() else {
            return Err(ServerError::BadLeaderTransferee);
        };
        let config = self.node.config();
        let deadline = Instant::now() + config.request_timeout();
        let mut watch = self.node.subscribe_metrics();

        // 1. The target has everything this leader has appended.
        loop {
            let (caught_up, still_leading) = {
                let m = watch.borrow();
                let matched = matched_index(&m, target);
                (
                    matched.is_some() && matched == m.last_log_index,
                    m.current_leader == Some(self.node.id()),
                )
            };
            if !still_leading {
                return Err(ServerError::LeaderChanged);
            }
            if caught_up {
                break;
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Err(ServerError::LeaderTransferTimeout);
            }
        }

        // 2. Silence, until the followers' lease on this leader runs out; 3. the target stands.
        let network = self.node.network().clone();
        network.pause_replication(true);
        let _resume = ResumeReplication(&network);
        tracing::info!(
            target = format_args!("{target:016x}"),
            "handing leadership over"
        );
        let lease = config.election_timeout * 3 / 5;
        tokio::time::sleep(lease + config.heartbeat_interval).await;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match network
            .admin(target, &node, &AdminRequest::TimeoutNow, remaining)
            .await
        {
            Ok(Ok(AdminAnswer::Standing)) => {}
            Ok(other) => {
                tracing::warn!("leader transfer: target answered {other:?}");
                return Err(ServerError::LeaderTransferTimeout);
            }
            Err(e) => {
                tracing::warn!("leader transfer: target unreachable: {e}");
                return Err(ServerError::LeaderTransferTimeout);
            }
        }

        // 4. This member hears of the new leader.
        loop {
            let leader = watch.borrow().current_leader;
            if leader == Some(target) {
                tracing::info!(
                    target = format_args!("{target:016x}"),
                    "leadership handed over"
                );
                return Ok(());
            }
            if leader.is_some() && leader != Some(self.node.id()) {
                return Err(ServerError::LeaderChanged);
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Err(ServerError::LeaderTransferTimeout);
            }
        }
    }

    fn cluster_info(&self) -> ClusterInfo {
        let metrics = self.node.metrics();
        ClusterInfo {
            cluster_id: self.node.config().cluster_id,
            id: self.node.id(),
            leader: metrics.current_leader,
            members: member_infos(metrics.membership_config.membership()),
        }
    }

    /// Tells `member`, just removed, to ask the leader whether it is still a member: it stops
    /// at once instead of after three election timeouts without a leader. Best effort: the
    /// member asks by itself anyway.
    fn tell_removed(&self, member: MemberInfo) {
        if member.id == self.node.id() {
            return;
        }
        let network = self.node.network().clone();
        let timeout = self.node.config().election_timeout;
        tokio::spawn(async move {
            let _ = network
                .admin(
                    member.id,
                    &member.node,
                    &AdminRequest::AskMembership,
                    timeout,
                )
                .await;
        });
    }

    /// Stops this member once the leader says it was removed from the cluster (etcd's members
    /// stop when their peers tell them so). It asks when its own membership leaves it out, or
    /// when it has heard from no leader for a while: a removed member hears from none.
    pub async fn watch_removal(self: Arc<Self>, stop: CancellationToken) {
        let period = self.node.config().election_timeout;
        let mut leaderless_since: Option<Instant> = None;
        while !stop.is_cancelled() {
            let told = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => false,
                _ = self.ask_now.notified() => true,
            };
            let metrics = self.node.metrics();
            let membership = metrics.membership_config.membership();
            if membership.nodes().next().is_none() {
                // Not yet initialized: a member joining waits for the leader's first message.
                continue;
            }
            let left_out = !membership.nodes().any(|(&id, _)| id == self.node.id());
            let leaderless = match (self.node.has_leader(), leaderless_since) {
                (true, _) => {
                    leaderless_since = None;
                    false
                }
                (false, None) => {
                    leaderless_since = Some(Instant::now());
                    false
                }
                (false, Some(since)) => since.elapsed() >= 3 * period,
            };
            if !(told || left_out || leaderless) {
                continue;
            }
            if self.removed().await {
                tracing::error!(
                    member_id = format_args!("{:016x}", self.node.id()),
                    "this member was removed from the cluster; stopping"
                );
                stop.cancel();
                return;
            }
        }
    }

    /// Asks every other member who the cluster is, every [`PROBE_INTERVAL`], so that this
    /// member knows which peers answer and since when (etcd's members keep streams to each
    /// other for the same reason): a member that has just become leader judges the strict
    /// reconfiguration checks on that history, not on its first heartbeats.
    pub async fn probe_peers(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            let metrics = self.node.metrics();
            let me = self.node.id();
            let probes = metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(&id, _)| id != me)
                .map(|(&id, node)| {
                    let network = self.node.network().clone();
                    let node = node.clone();
                    async move {
                        let _ = network
                            .admin(id, &node, &AdminRequest::ClusterInfo, PROBE_INTERVAL)
                            .await;
                    }
                })
                .collect::<Vec<_>>();
            futures::future::join_all(probes).await;
        }
    }

    /// Whether a leader says this member is not in the cluster.
    async fn removed(&self) -> bool {
        let metrics = self.node.metrics();
        let me = self.node.id();
        let timeout = self.node.config().election_timeout;
        let request = AdminRequest::IsMember { id: me };
        for (&id, node) in metrics.membership_config.membership().nodes() {
            if id == me {
                continue;
            }
            let reply = self.node.network().admin(id, node, &request, timeout).await;
            if let Ok(Ok(AdminAnswer::IsMember(false))) = reply {
                return true;
            }
        }
        false
    }
}

/// Resumes replication when a leader transfer ends, however it ends.
struct ResumeReplication<'a>(&'a rampart_network::PeerNetwork);

impl Drop for ResumeReplication<'_> {
    fn drop(&mut self) {
        self.0.pause_replication(false);
    }
}

#[tonic::async_trait]
impl AdminHandler for Membership {
    async fn handle(&self, request: AdminRequest) -> AdminReply {
        match request {
            AdminRequest::ClusterInfo => Ok(AdminAnswer::ClusterInfo(self.cluster_info())),
            AdminRequest::ChangeMembers(change) => self.change_on_leader(change).await,
            AdminRequest::IsMember { id } => {
                let metrics = self.node.metrics();
                if metrics.current_leader != Some(self.node.id()) {
                    return Err(AdminError::NotLeader {
                        leader: metrics.current_leader,
                    });
                }
                let member = metrics
                    .membership_config
                    .membership()
                    .nodes()
                    .any(|(&node, _)| node == id);
                Ok(AdminAnswer::IsMember(member))
            }
            AdminRequest::AskMembership => {
                self.ask_now.notify_one();
                Ok(AdminAnswer::Noted)
            }
            AdminRequest::HashKv { revision } => {
                crate::corruption::answer(&self.node, revision).await
            }
            AdminRequest::TimeoutNow => {
                tracing::info!("the leader hands its leadership to this member: standing");
                match self.node.raft().trigger().elect().await {
                    Ok(()) => Ok(AdminAnswer::Standing),
                    Err(e) => Err(AdminError::Unavailable(e.to_string())),
                }
            }
        }
    }
}

/// etcd's checks of a member's peer URLs (`types.NewURLs`): each an http or https URL with a
/// host and a port and no path.
fn check_urls(urls: &[String]) -> Result<(), AdminError> {
    let valid = |url: &String| {
        url.parse::<tonic::codegen::http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
                && uri.port_u16().is_some()
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none()
        })
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(AdminError::Refused(ChangeRefused::BadUrls));
    }
    Ok(())
}

/// The error of a change openraft did not make.
fn change_failed(error: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>) -> AdminError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => AdminError::NotLeader {
            leader: forward.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::LearnerNotFound(_),
        )) => AdminError::Refused(ChangeRefused::MemberNotFound),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            AdminError::Unknown(e.to_string())
        }
        RaftError::Fatal(e) => AdminError::Unavailable(e.to_string()),
    }
}

/// etcd's error for a refusal.
pub fn refused_error(refused: ChangeRefused) -> ServerError {
    match refused {
        ChangeRefused::MemberNotFound => ServerError::MemberNotFound,
        ChangeRefused::PeerUrlExists => ServerError::PeerUrlExists,
        ChangeRefused::BadUrls => ServerError::MemberBadUrls,
        ChangeRefused::NotEnoughStarted => ServerError::MemberNotEnoughStarted,
        ChangeRefused::Unhealthy => ServerError::Unhealthy,
        ChangeRefused::NotLearner => ServerError::MemberNotLearner,
        ChangeRefused::LearnerNotReady => ServerError::LearnerNotReady,
        ChangeRefused::TooManyLearners => ServerError::TooManyLearners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_as_etcd_checks_them() {
        let ok = |urls: &[&str]| {
            check_urls(&urls.iter().map(|u| u.to_string()).collect::<Vec<_>>()).is_ok()
        };
        assert!(ok(&["http://10.0.0.1:2380"]));
        assert!(ok(&[
            "https://node-4.example:2380",
            "http://127.0.0.1:2381/"
        ]));
        assert!(!ok(&[]));
        assert!(!ok(&["10.0.0.1:2380"]));
        assert!(!ok(&["http://10.0.0.1"]));
        assert!(!ok(&["ftp://10.0.0.1:2380"]));
        assert!(!ok(&["http://10.0.0.1:2380/path"]));
        assert!(!ok(&["http://10.0.0.1:2380", "not a url"]));
    }

    fn voters(
        all: &[NodeId],
        started: &[NodeId],
        connected: &[NodeId],
        healthy: &[NodeId],
    ) -> Voters {
        let set = |ids: &[NodeId]| ids.iter().copied().collect();
        Voters {
            all: set(all),
            me: 1,
            started: set(started),
            connected: set(connected),
            healthy: set(healthy),
        }
    }

    fn refused(result: Result<(), AdminError>) -> Option<ChangeRefused> {
        match result {
            Ok(()) => None,
            Err(AdminError::Refused(refused)) => Some(refused),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn strict_checks_refuse_as_etcd_does() {
        use ChangeRefused::*;
        let all = [1, 2, 3];
        let healthy = voters(&all, &all, &all, &all);
        assert_eq!(refused(healthy.may_add()), None);
        assert_eq!(refused(healthy.may_remove(2)), None);
        assert_eq!(refused(healthy.may_remove(1)), None);
        assert_eq!(refused(healthy.may_promote()), None);

        // One member down: no voter may be added, nor a running one removed; the down one may.
        let one_down = voters(&all, &all, &[1, 2], &[1, 2]);
        assert_eq!(refused(one_down.may_add()), Some(Unhealthy));
        assert_eq!(refused(one_down.may_remove(2)), Some(Unhealthy));
        assert_eq!(refused(one_down.may_remove(3)), None);

        // Connected, but not for the whole health interval yet.
        let fresh = voters(&all, &all, &all, &[1]);
        assert_eq!(refused(fresh.may_add()), Some(Unhealthy));

        // Two of four voters never started (added, not yet run).
        let four = [1, 2, 3, 4];
        let unstarted = voters(&four, &[1, 2], &[1, 2], &[1, 2]);
        assert_eq!(refused(unstarted.may_add()), Some(NotEnoughStarted));
        assert_eq!(refused(unstarted.may_remove(2)), Some(NotEnoughStarted));
        let one_started = voters(&four, &[1], &[1], &[1]);
        assert_eq!(refused(one_started.may_promote()), Some(NotEnoughStarted));

        // A one-member cluster may grow to two.
        let single = voters(&[1], &[1], &[1], &[1]);
        assert_eq!(refused(single.may_add()), None);
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
    }
}
