//! The bincode payloads of the peer RPCs other than openraft's own.

use rampart_storage::{CommandResponse, NodeId, PeerNode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Decodes one peer message, request or reply, from its bincode bytes: the one decoding of
/// what comes from another member. Decoding from a slice allocates no more than the slice
/// could hold for every length it reads.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

/// Why a forwarded request was not carried out by the node it was sent to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader; it names the leader it knows of, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The receiver lost leadership while the request was in flight: its outcome is unknown.
    #[error("leader changed")]
    LeaderChanged,
    /// The receiver could not reach a quorum in time.
    #[error("request timed out")]
    Timeout,
    /// The receiver is shutting down or hit a fatal storage error.
    #[error("peer unavailable: {0}")]
    Unavailable(String),
    /// The leader refused to propose the command: it fails a check every client request
    /// passes (a follower running the same checks never sends one). Nothing was proposed.
    #[error("the leader refused the command: {0}")]
    Rejected(String),
    /// The leader's proposal queue was full: the command was not proposed, and may be sent
    /// again later (etcd's "too many requests"). Last, so that the variants before it keep
    /// their encoding.
    #[error("too many requests")]
    TooManyRequests,
}

/// Reply to `Forward`: the outcome of applying the command on the leader, with the log index of
/// the entry that carried it, so the forwarding node can wait until it has applied it too.
pub type ForwardReply = Result<(u64, CommandResponse), ForwardError>;

/// Reply to `ReadIndex`: the log index a read must wait for, confirmed by a quorum of the
/// leader's term (0: nothing to wait for).
pub type ReadIndexReply = Result<u64, ForwardError>;

/// A lease question only the leader can answer: it alone tracks when leases expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseRequest {
    /// Renew the lease to its full TTL.
    KeepAlive { id: i64 },
    /// How long the lease has left.
    TimeToLive { id: i64 },
}

/// The leader's answer about one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// Seconds left (after a keep-alive: the full TTL); 0 or less when the lease does not exist.
    pub remaining_ttl: i64,
    /// The TTL the lease was granted with; 0 when it does not exist.
    pub granted_ttl: i64,
}

/// Reply to `Lease`.
pub type LeaseReply = Result<LeaseStatus, ForwardError>;

/// A question or order about the cluster itself, sent to one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The receiver's view of the cluster: what a member joining it asks first.
    ClusterInfo,
    /// A change of the membership, which only the leader makes.
    ChangeMembers(MemberChange),
    /// Is this member still in the cluster? Asked of the leader by a member that hears from no
    /// leader, to learn whether it was removed.
    IsMember { id: NodeId },
    /// The leader hands its leadership over: the receiver stands for election at once.
    TimeoutNow,
    /// The leader has just removed the receiver: it should ask the leader (`IsMember`) now
    /// rather than when it notices that no leader speaks to it.
    AskMembership,
    /// The receiver's `HashKV` at `revision` (the corruption checks): answered once it has
    /// applied that revision, or refused.
    HashKv { revision: i64 },
}

/// One change of the membership, as etcd's Cluster service asks for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Remove {
        id: NodeId,
    },
    Update {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    Promote {
        id: NodeId,
    },
}

/// One member as the membership holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub node: PeerNode,
    pub is_learner: bool,
}

/// A member's view of its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    /// The member that answers.
    pub id: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The newest membership it has (appended, perhaps not yet committed).
    pub members: Vec<MemberInfo>,
}

/// Why the leader refused a membership change: each is one of etcd's errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeRefused {
    #[error("member not found")]
    MemberNotFound,
    #[error("peer URLs already exist")]
    PeerUrlExists,
    #[error("given member URLs are invalid")]
    BadUrls,
    #[error("not enough started members")]
    NotEnoughStarted,
    #[error("unhealthy cluster")]
    Unhealthy,
    #[error("not a learner")]
    NotLearner,
    #[error("learner not in sync with the leader")]
    LearnerNotReady,
    #[error("too many learners")]
    TooManyLearners,
}

/// What the receiver of an [`AdminRequest`] answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAnswer {
    ClusterInfo(ClusterInfo),
    /// The change is committed: the new member (for an add) and the membership after it.
    Changed {
        member: Option<MemberInfo>,
        members: Vec<MemberInfo>,
    },
    /// Whether the asked-about member is in the leader's newest membership.
    IsMember(bool),
    /// The receiver stood for election.
    Standing,
    /// The receiver will ask.
    Noted,
    /// The receiver's `HashKV`.
    HashKv(KvHashAnswer),
}

/// A member's `HashKV` at a revision, as etcd's `HashKVResponse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvHashAnswer {
    /// The member that answers.
    pub id: NodeId,
    pub hash: u32,
    pub compact_revision: i64,
    pub revision: i64,
}

/// Why an [`AdminRequest`] was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    /// Only the leader answers this, and the receiver does not lead.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("membership change refused: {0}")]
    Refused(ChangeRefused),
    /// The change may or may not have been made (a leader change or a timeout meanwhile).
    #[error("membership change outcome unknown: {0}")]
    Unknown(String),
    /// The change was not committed in time; it may still be.
    #[error("membership change not committed in time")]
    Timeout,
    #[error("peer unavailable: {0}")]
    Unavailable(String),
}

/// Reply to `Admin`.
pub type AdminReply = Result<AdminAnswer, AdminError>;
