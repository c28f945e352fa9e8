//! Calls into this member's own Raft: a proposal, and a read index. The batching tasks
//! ([`crate::Proposer`], [`crate::ReadIndexer`]) and the peer service's forwarded requests go
//! through them, as do the server's lessor's own proposals.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::Raft;
use rampart_storage::{Command, TypeConfig};

use crate::messages::{ForwardError, ForwardReply, ReadIndexReply};

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

/// Confirms with a quorum that this node is still the leader and returns openraft's read log
/// id (Raft thesis §6.4, "read index"): the later of the commit index and the first entry of
/// this leader's term. Entries appended but not yet committed are not included. A leader that
/// openraft restored within its term needs a floor on top of it: [`crate::ReadIndexer`] adds
/// it, and every read goes through there.
pub(crate) async fn read_index(raft: &Raft<TypeConfig>, timeout: Duration) -> ReadIndexReply {
    match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |id| id.index)),
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
