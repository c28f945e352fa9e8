//! The bincode payloads of the `Forward` and `ReadIndex` RPCs.

use rampart_storage::{CommandResponse, NodeId};
use serde::{Deserialize, Serialize};

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
