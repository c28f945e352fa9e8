//! Domain types shared by the storage, the network and the server.
//!
//! These mirror the etcd v3 KV messages but are Rampart's own: they are what the Raft log carries
//! (encoded with bincode) and what the MVCC store answers. The gRPC layer converts between them and
//! the generated protobuf types, and validates requests before they reach Raft.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A member's Raft id; equal to its etcd member ID.
pub type NodeId = u64;

/// What openraft knows of a member: enough to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The member's name (`--name`).
    pub name: String,
    /// The URLs its peers reach it on (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// Rampart's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One stored version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Revision of the put that created this incarnation of the key.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Puts since creation: 1 after creation, reset by a delete.
    pub version: i64,
    pub value: Vec<u8>,
    /// Lease the key is attached to; 0 for none.
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's RangeRequest. An empty `range_end` means the single key `key`; `range_end == [0]` means
/// every key `>= key`; `key == [0] && range_end == [0]` means all keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// At most this many keys in the answer; 0 is no limit.
    pub limit: i64,
    /// Read at this revision; 0 (or less) is the current revision.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    /// Filters; 0 disables each.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    pub more: bool,
    /// Number of keys matched, ignoring `limit`.
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value; fails with `KeyNotFound` on a missing key.
    pub ignore_value: bool,
    /// Keep the current lease; fails with `KeyNotFound` on a missing key.
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at, with the operand it is compared against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// etcd's Compare. With a non-empty `range_end` it holds only if it holds for every key in
/// `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

/// A member's client-facing attributes, published through Raft once the member starts (as etcd's
/// `publish`), so every node can answer MemberList.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub id: NodeId,
    pub name: String,
    pub client_urls: Vec<String>,
}

/// A state-machine command: the payload of a normal Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Remove history before `revision` (etcd's Compact).
    Compact {
        revision: i64,
    },
    Publish(MemberAttributes),
    /// Creates a lease. The id is chosen before proposing (never 0), so every member applies the
    /// same one; `ttl` is the granted TTL in seconds, already clamped by the server.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes a lease and deletes every key attached to it, in one revision.
    LeaseRevoke {
        id: i64,
    },
    /// Records the remaining TTLs the leader measured, so a new leader resumes them.
    LeaseCheckpoint {
        checkpoints: Vec<LeaseCheckpoint>,
    },
    /// Several clients' commands proposed as one log entry (proposal batching). Each is applied
    /// as if it were an entry of its own, in order, with a revision of its own; the entry's
    /// response is [`CommandResult::Batch`]. Never nested.
    Batch(Vec<Command>),
}

/// A lease's remaining TTL as the leader saw it when it proposed the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCheckpoint {
    pub id: i64,
    /// Seconds left; never more than the lease's granted TTL.
    pub remaining_ttl: i64,
}

/// A lease as the state machine records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: i64,
    /// The TTL granted, in seconds.
    pub ttl: i64,
    /// Seconds left at the last checkpoint, if one was applied since the grant.
    pub remaining_ttl: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as etcd's `mvccpb.Event`. For a delete, `kv` carries the key and the
/// deleting revision as `mod_revision`; its other fields are zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's version before this change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Every event of one revision, in the order the command's operations made them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// A deterministic failure of a command while it is applied. The store is unchanged by a command
/// that fails, on every node alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("required revision has been compacted")]
    Compacted,
    #[error("required revision is a future revision")]
    FutureRevision,
    /// LeaseGrant with an id that is in use.
    #[error("lease already exists")]
    LeaseExists,
    /// A [`Command::Batch`] inside a batch (the server never proposes one).
    #[error("a batch of commands cannot contain another batch")]
    NestedBatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    Publish,
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// A revoke; the keys it deleted are in the revision's events.
    LeaseRevoke,
    LeaseCheckpoint,
    /// Entries without a command (blank entries, membership changes).
    Empty,
    /// The responses of a [`Command::Batch`], one per command, in order.
    Batch(Vec<CommandResponse>),
}

/// What applying one log entry produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The store's revision right after this entry was applied.
    pub revision: i64,
    pub result: Result<CommandResult, ApplyError>,
}
