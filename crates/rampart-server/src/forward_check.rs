//! The checks a leader makes on a command another member forwards, before proposing it.
//!
//! A member checks each client request when it takes it (`convert`, and the size check of the
//! in-process client), and a follower forwards only commands that passed. The leader checks
//! them again on the domain command, where it enters the log: a member of another version, or
//! anyone who reaches the peer port, must not be able to put into every member's log what no
//! client could (an empty key, an oversized or over-long txn, a duplicate key, or the leader's
//! own lease checkpoints and proposal batches).

use rampart_network::ForwardCheck;
use rampart_storage::{Command, PutRequest, RequestOp, TxnRequest};

use crate::convert::{check_intervals, Limits, MAX_LEASE_TTL};
use crate::error::ServerError;

/// The leader's check of forwarded commands, with this member's limits.
pub(crate) struct ForwardedCommands {
    pub limits: Limits,
    /// The largest encoded command accepted: the client request limit plus etcd's allowance for
    /// framing, which covers the encoding's own overhead.
    pub max_command_bytes: usize,
}

impl ForwardCheck for ForwardedCommands {
    fn check(&self, command: &Command) -> Result<(), String> {
        self.checked(command).map_err(|e| e.to_string())
    }
}

impl ForwardedCommands {
    fn checked(&self, command: &Command) -> Result<(), ServerError> {
        let size = bincode::serialized_size(command).unwrap_or(u64::MAX);
        if size > self.max_command_bytes as u64 {
            return Err(ServerError::RequestTooLarge);
        }
        match command {
            Command::Put(p) => put(p)?,
            Command::DeleteRange(delete) => key(&delete.key)?,
            Command::Txn(txn) => {
                txn_ops(txn, self.limits.max_txn_ops)?;
                check_intervals(&txn.success)?;
                check_intervals(&txn.failure)?;
            }
            Command::LeaseGrant { id, ttl } => {
                if *id == 0 || *ttl <= 0 {
                    return Err(ServerError::InvalidArgument(format!(
                        "lease grant with id {id} and TTL {ttl}"
                    )));
                }
                if *ttl > MAX_LEASE_TTL {
                    return Err(ServerError::LeaseTtlTooLarge);
                }
            }
            Command::Compact { .. } | Command::Publish(_) | Command::LeaseRevoke { .. } => {}
            Command::Alarm { alarm, .. } => crate::alarm::alarm_type(alarm.alarm)?,
            Command::AsUser { command, .. } => match **command {
                Command::AsUser { .. } | Command::Batch(_) | Command::LeaseCheckpoint { .. } => {
                    return Err(ServerError::InvalidArgument(
                        "a user's command holds another user's, a batch or a checkpoint".into(),
                    ))
                }
                ref inner => self.checked(inner)?,
            },
            Command::Auth(_) => {}
            Command::LeaseCheckpoint { .. } | Command::Batch(_) => {
                return Err(ServerError::InvalidArgument(
                    "lease checkpoints and batches are proposed by the leader only".into(),
                ))
            }
        }
        Ok(())
    }
}

/// etcd's `checkTxnRequest` on the domain txn: no branch longer than the op budget, and nested
/// txns within what is left of it.
fn txn_ops(txn: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
    let ops = txn
        .compare
        .len()
        .max(txn.success.len())
        .max(txn.failure.len());
    if ops > max_ops {
        return Err(ServerError::TooManyOps);
    }
    for compare in &txn.compare {
        key(&compare.key)?;
    }
    for request in txn.success.iter().chain(&txn.failure) {
        match request {
            RequestOp::Range(range) => key(&range.key)?,
            RequestOp::Put(p) => put(p)?,
            RequestOp::DeleteRange(delete) => key(&delete.key)?,
            RequestOp::Txn(nested) => txn_ops(nested, max_ops - ops)?,
        }
    }
    Ok(())
}

fn put(put: &PutRequest) -> Result<(), ServerError> {
    if put.ignore_value && !put.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    key(&put.key)
}

fn key(key: &[u8]) -> Result<(), ServerError> {
    if key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}
