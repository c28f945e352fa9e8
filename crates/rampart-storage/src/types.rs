//! Domain types shared by the storage, the network and the server.
//!
//! These mirror the etcd v3 KV messages but are Rampart's own: they are what the Raft log carries
//! (encoded with bincode) and what the MVCC store answers. The gRPC layer converts between them and
//! the generated protobuf types, and validates requests before they reach Raft.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

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
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One stored version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Revision of the put that created this incarnation of the key.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Puts since creation: 1 after creation, reset by a delete.
    pub version: i64,
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
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
    Txn(#[serde(deserialize_with = "nested")] TxnRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(#[serde(deserialize_with = "nested")] TxnResponse),
}

/// How deep the values that hold values of their own type (a txn in a txn, a command in a
/// batch or in a user's command, their responses) may nest when they are decoded. A client's
/// txn nests at most 49 deep (prost refuses protobuf nested past 100 messages, and each level
/// is two: `TxnRequest`, `RequestOp`; the JSON gateway's serde_json stops sooner), and a batch
/// or a user's command adds one each: this refuses nothing a client can send. Without it a
/// peer message, a log record or a reply nested a few thousand deep overflows the stack of
/// the thread that decodes it, which aborts the member: decoding recurses once per level.
pub const MAX_NESTING: u32 = 64;

thread_local! {
    /// How many nested values the decoding on this thread is inside (see [`nested`]).
    static NESTING: Cell<u32> = const { Cell::new(0) };
}

/// Decodes a value nested in one of its own type, refusing it past [`MAX_NESTING`] levels.
/// The depth is counted per thread, as decoding runs on one, and given back when the value is
/// done, whether it decoded or not.
fn nested<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            NESTING.with(|n| n.set(n.get() - 1));
        }
    }
    let depth = NESTING.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let _level = Level;
    if depth > MAX_NESTING {
        return Err(serde::de::Error::custom(format!(
            "nested more than {MAX_NESTING} deep"
        )));
    }
    T::deserialize(deserializer)
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
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

/// etcd's Compare. With a non-empty `range_end` it holds only if it holds for every key in
/// `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
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
///
/// # Its encoding is a contract
///
/// Commands are kept with bincode 1 (the default options of `bincode::serialize`) in the Raft
/// log's segment files (`wal/`), read back after every restart and upgrade, and sent in the
/// same bytes to other members (Raft's AppendEntries, forwarded writes), which may run an
/// older or a newer build during a rolling upgrade. [`MemberAttributes`] is also stored, the
/// same way, in the MVCC tree and its snapshots. bincode writes no names and no struct
/// lengths: a variant is its position as a `u32`, then its payload; a struct is its fields, in
/// order, and nothing else. So, for `Command` and every type a command holds (the requests,
/// [`RequestOp`], [`Compare`], [`CompareResult`], [`CompareTarget`], [`SortOrder`],
/// [`SortTarget`], [`MemberAttributes`], [`LeaseCheckpoint`], [`AlarmAction`], [`AlarmMember`],
/// [`AlarmType`], [`AuthCommand`], [`Permission`], [`PermissionKind`]):
/// - a new variant goes at the END of its enum; no variant is ever reordered or removed (one no
///   longer wanted stays, refused when applied), or every later variant decodes as another;
/// - a struct's fields, and a variant's payload, stay exactly as they are: no field added, not
///   even at the end or with `#[serde(default)]` (bincode then reads past the end of every old
///   value, or into the value after it), none removed, reordered or retyped. New data goes in a
///   NEW variant at the end (e.g. a `PutV2(PutRequestV2)` beside `Put`);
/// - renaming a variant or a field is free: names are not encoded.
///
/// An older build cannot decode a new variant: a leader proposes one only once every member
/// runs a build that knows it. The test `types::tests::the_log_encoding_of_commands_is_pinned`
/// holds the bytes of one value of every variant.
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
    Batch(#[serde(deserialize_with = "nested")] Vec<Command>),
    /// Raises or clears an alarm of one member (etcd's `AlarmRequest` through Raft); the
    /// response is [`CommandResult::Alarm`]. See `crate::alarms`.
    Alarm {
        action: AlarmAction,
        alarm: AlarmMember,
    },
    /// A client's command made on behalf of authenticated `user` (etcd's `AuthInfo` in the Raft
    /// request header): applied only if the auth store, as it is when the entry is applied,
    /// lets the user make it (see `crate::auth`), so a permission revoked after the request was
    /// checked still takes effect. The response is the inner command's. Never nested; `user`
    /// is empty for a client that gave no credentials.
    AsUser {
        user: String,
        #[serde(deserialize_with = "nested")]
        command: Box<Command>,
    },
    /// A change of users, roles or whether authentication is on (etcd's `Auth*` Raft
    /// requests); the response is [`CommandResult::Auth`]. Passwords travel only as bcrypt
    /// hashes, made before proposing. See `crate::auth`.
    Auth(AuthCommand),
}

/// A change of the auth store, as etcd's `InternalRaftRequest` auth fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Turns authentication on; needs the user `root` with the role `root`. `token_key` is
    /// the random key of the tokens issued from now on, drawn by the member that proposed it.
    Enable {
        #[serde(with = "serde_bytes")]
        token_key: Vec<u8>,
    },
    /// Turns authentication off.
    Disable,
    /// Adds a user; `password` is the bcrypt hash of its password, `None` for a user added with
    /// `--no-password` (it cannot authenticate with a password).
    UserAdd {
        name: String,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    /// Replaces a user's password hash (bcrypt).
    UserChangePassword {
        name: String,
        password: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    /// Grants `permission` to `role`, replacing the type of one on the same range.
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    /// Takes back the permission of `role` on exactly `[key, range_end)`.
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
}

/// Access to one key or range of keys, as etcd's `authpb.Permission`: `range_end` empty for the
/// key alone, `[0]` for every key from `key` on, otherwise `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermissionKind,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// What a [`Permission`] allows, as etcd's `authpb.Permission_Type` (its numbers are etcd's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionKind {
    Read,
    Write,
    ReadWrite,
}

impl PermissionKind {
    /// etcd's name of the kind (`READWRITE`), as `etcdctl role get` prints it.
    pub fn name(self) -> &'static str {
        match self {
            PermissionKind::Read => "READ",
            PermissionKind::Write => "WRITE",
            PermissionKind::ReadWrite => "READWRITE",
        }
    }
}

/// An alarm's kind, as etcd's `etcdserverpb.AlarmType` (its numbers are etcd's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// No alarm; in a question, every alarm.
    None,
    /// The member's database outgrew `--quota-backend-bytes`: writes that add data are refused
    /// on every member until it is cleared.
    NoSpace,
    /// The member's data differs from the cluster's: it stops serving clients.
    Corrupt,
}

impl AlarmType {
    /// etcd's name of the alarm (`NOSPACE`), as `etcdctl alarm list` prints it.
    pub fn name(self) -> &'static str {
        match self {
            AlarmType::None => "NONE",
            AlarmType::NoSpace => "NOSPACE",
            AlarmType::Corrupt => "CORRUPT",
        }
    }
}

/// One raised alarm: which member raised it, and what kind (etcd's `AlarmMember`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    pub member_id: NodeId,
    pub alarm: AlarmType,
}

/// Whether a [`Command::Alarm`] raises or clears its alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    Activate,
    Deactivate,
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

/// A grant or a revoke, as the state machine applied it: what [`crate::LeaseFeed`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Lease `id` was granted with `ttl` seconds.
    Granted { id: i64, ttl: i64 },
    /// Lease `id` was revoked, its keys deleted.
    Revoked { id: i64 },
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
    /// A write that adds data (a put, a txn with a put, a lease grant) while a NOSPACE alarm is
    /// raised (etcd's `applierV3Capped`).
    #[error("database space exceeded")]
    NoSpace,
    // The auth store's refusals (etcd's `auth/store.go` errors); see `crate::auth`.
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExists,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExists,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// Deleting the root user or role, or revoking the root role from root, while
    /// authentication is on.
    #[error("invalid auth management")]
    InvalidAuthManagement,
    /// A [`Command::AsUser`] inside another, or around a batch (the server never proposes one).
    #[error("a user's command cannot contain another user's command or a batch")]
    NestedUser,
}

impl Command {
    /// The bytes this command takes in a log entry (bincode's size of it).
    pub fn encoded_size(&self) -> u64 {
        // Sizing a value bincode can encode cannot fail; a command too odd to size is counted
        // as large.
        bincode::serialized_size(self).unwrap_or(u64::MAX / 2)
    }

    /// How many keys applying this command touches at most, counting each single-key
    /// operation as one and each range (read, deleted or compared) as `keys_in(key,
    /// range_end)`, the keys it holds; `None` when that is not known beforehand (a revoke deletes
    /// however many keys its lease has, a compaction, a change of users and roles or a lease
    /// checkpoint may be of any size).
    pub(crate) fn keys_touched(
        &self,
        keys_in: &mut impl FnMut(&[u8], &[u8]) -> usize,
    ) -> Option<usize> {
        match self {
            Command::Put(_)
            | Command::LeaseGrant { .. }
            | Command::Publish(_)
            | Command::Alarm { .. } => Some(1),
            Command::DeleteRange(delete) => Some(keys_in(&delete.key, &delete.range_end)),
            Command::Txn(txn) => Some(txn.keys_touched(keys_in)),
            Command::AsUser { command, .. } => command.keys_touched(keys_in),
            Command::Batch(commands) => commands.iter().map(|c| c.keys_touched(keys_in)).sum(),
            Command::Compact { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseCheckpoint { .. }
            | Command::Auth(_) => None,
        }
    }
}

impl TxnRequest {
    /// See [`Command::keys_touched`]: the compares' and both branches' keys.
    fn keys_touched(&self, keys_in: &mut impl FnMut(&[u8], &[u8]) -> usize) -> usize {
        let compares: usize = self
            .compare
            .iter()
            .map(|compare| keys_in(&compare.key, &compare.range_end))
            .sum();
        let operations: usize = self
            .success
            .iter()
            .chain(&self.failure)
            .map(|op| match op {
                RequestOp::Put(_) => 1,
                RequestOp::Range(range) => keys_in(&range.key, &range.range_end),
                RequestOp::DeleteRange(delete) => keys_in(&delete.key, &delete.range_end),
                RequestOp::Txn(txn) => txn.keys_touched(keys_in),
            })
            .sum();
        compares + operations
    }
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
    Batch(#[serde(deserialize_with = "nested")] Vec<CommandResponse>),
    /// The alarm a [`Command::Alarm`] raised or cleared; none if it was already so.
    Alarm(Vec<AlarmMember>),
    /// A [`Command::Auth`] applied; the auth store's revision after it.
    Auth {
        revision: u64,
    },
}

/// What applying one log entry produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The store's revision right after this entry was applied.
    pub revision: i64,
    pub result: Result<CommandResult, ApplyError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command nested `depth` deep: in users' commands and batches, in turn.
    fn nested_command(depth: u32) -> Command {
        let mut command = Command::Compact { revision: 1 };
        for level in 0..depth {
            command = if level % 2 == 0 {
                Command::AsUser {
                    user: String::new(),
                    command: Box::new(command),
                }
            } else {
                Command::Batch(vec![command])
            };
        }
        command
    }

    /// A txn whose success branch holds a txn, and so on, `depth` deep.
    fn nested_txn(depth: u32) -> Command {
        let mut txn = TxnRequest::default();
        for _ in 0..depth {
            txn = TxnRequest {
                success: vec![RequestOp::Txn(txn)],
                ..Default::default()
            };
        }
        Command::Txn(txn)
    }

    #[test]
    fn values_nested_past_the_limit_are_refused_not_a_stack_overflow() {
        let decode = |c: &Command| bincode::deserialize::<Command>(&bincode::serialize(c).unwrap());
        for nested in [nested_command, nested_txn] {
            let at_limit = nested(MAX_NESTING);
            assert_eq!(decode(&at_limit).unwrap(), at_limit);
            let refused = decode(&nested(MAX_NESTING + 1)).unwrap_err();
            assert!(
                refused.to_string().contains("nested more than 64 deep"),
                "{refused}"
            );
        }
        // A user's command in a user's command ... 20,000 deep (240 KB, what a peer could
        // send): written out by hand, as encoding or dropping such a value would itself
        // overflow the stack.
        let mut bytes = Vec::new();
        for _ in 0..20_000 {
            bytes.extend_from_slice(&10u32.to_le_bytes()); // AsUser
            bytes.extend_from_slice(&0u64.to_le_bytes()); // user: ""
        }
        bytes.extend_from_slice(&3u32.to_le_bytes()); // Compact
        bytes.extend_from_slice(&1i64.to_le_bytes());
        assert!(bincode::deserialize::<Command>(&bytes).is_err());
        // The refusals leave nothing counted on the thread.
        assert_eq!(NESTING.with(Cell::get), 0);
    }

    /// What `value` is, its bytes as the Raft log stores it (in hex), and `pinned`, the bytes
    /// it must have.
    fn pin<T>(value: T, pinned: &'static str) -> (String, String, &'static str)
    where
        T: Serialize + fmt::Debug,
    {
        let bytes = crate::codec::encode("pinned value", &value).expect("encodes");
        let now = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let type_name = std::any::type_name::<T>();
        let type_name = type_name.rsplit("::").next().unwrap_or(type_name);
        (format!("{type_name}::{value:?}"), now, pinned)
    }

    /// Pins the bincode bytes of one value of every variant of [`Command`] and of every enum a
    /// command holds, as logs already on disk hold them. A change that fails it breaks the rule
    /// in `Command`'s doc: entries already in a log, or sent by a member running another build,
    /// would no longer decode, or would decode as another command. A variant added anywhere but
    /// at the end of its enum fails it too, since every later variant's tag moves, and so does a
    /// field added to a struct a command holds, since its bytes join the value's. A variant
    /// added at the end passes, and gets a pinned value here.
    #[test]
    fn the_log_encoding_of_commands_is_pinned() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: true,
        };
        let delete = DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            prev_kv: true,
        };
        let range = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            limit: 1,
            revision: 2,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            serializable: true,
            keys_only: false,
            count_only: true,
            min_mod_revision: 3,
            max_mod_revision: 4,
            min_create_revision: 5,
            max_create_revision: 6,
        };
        let compare = Compare {
            result: CompareResult::Greater,
            target: CompareTarget::Mod(5),
            key: b"k".to_vec(),
            range_end: Vec::new(),
        };
        let txn = TxnRequest {
            compare: vec![compare.clone()],
            success: vec![RequestOp::Put(put.clone())],
            failure: vec![RequestOp::DeleteRange(delete.clone())],
        };
        let cases = [
            pin(
                Command::Put(put.clone()),
                "0000000001000000000000006b0100000000000000760700000000000000010001",
            ),
            pin(
                Command::DeleteRange(delete.clone()),
                "0100000001000000000000006101000000000000006201",
            ),
            pin(
                Command::Txn(txn),
                concat!(
                    "0200000001000000000000000100000002000000050000000000000001000000000000006b00",
                    "0000000000000001000000000000000100000001000000000000006b01000000000000007607",
                    "0000000000000001000101000000000000000200000001000000000000006101000000000000",
                    "006201"
                ),
            ),
            pin(Command::Compact { revision: 9 }, "030000000900000000000000"),
            pin(
                Command::Publish(MemberAttributes {
                    id: 3,
                    name: "m".into(),
                    client_urls: vec!["u".into()],
                }),
                "04000000030000000000000001000000000000006d0100000000000000010000000000000075",
            ),
            pin(
                Command::LeaseGrant { id: 7, ttl: 60 },
                "0500000007000000000000003c00000000000000",
            ),
            pin(Command::LeaseRevoke { id: 7 }, "060000000700000000000000"),
            pin(
                Command::LeaseCheckpoint {
                    checkpoints: vec![LeaseCheckpoint {
                        id: 7,
                        remaining_ttl: 30,
                    }],
                },
                "07000000010000000000000007000000000000001e00000000000000",
            ),
            pin(
                Command::Batch(vec![Command::Compact { revision: 9 }]),
                "080000000100000000000000030000000900000000000000",
            ),
            pin(
                Command::Alarm {
                    action: AlarmAction::Activate,
                    alarm: AlarmMember {
                        member_id: 3,
                        alarm: AlarmType::NoSpace,
                    },
                },
                "0900000000000000030000000000000001000000",
            ),
            pin(
                Command::AsUser {
                    user: "u".into(),
                    command: Box::new(Command::Compact { revision: 9 }),
                },
                "0a000000010000000000000075030000000900000000000000",
            ),
            pin(
                Command::Auth(AuthCommand::RoleGrantPermission {
                    role: "r".into(),
                    permission: Permission {
                        kind: PermissionKind::ReadWrite,
                        key: b"k".to_vec(),
                        range_end: b"l".to_vec(),
                    },
                }),
                "0b000000090000000100000000000000720200000001000000000000006b01000000000000006c",
            ),
            pin(
                AuthCommand::Enable {
                    token_key: b"k".to_vec(),
                },
                "0000000001000000000000006b",
            ),
            pin(AuthCommand::Disable, "01000000"),
            pin(
                AuthCommand::UserAdd {
                    name: "u".into(),
                    password: Some("h".into()),
                },
                "0200000001000000000000007501010000000000000068",
            ),
            pin(
                AuthCommand::UserDelete { name: "u".into() },
                "03000000010000000000000075",
            ),
            pin(
                AuthCommand::UserChangePassword {
                    name: "u".into(),
                    password: "h".into(),
                },
                "04000000010000000000000075010000000000000068",
            ),
            pin(
                AuthCommand::UserGrantRole {
                    user: "u".into(),
                    role: "r".into(),
                },
                "05000000010000000000000075010000000000000072",
            ),
            pin(
                AuthCommand::UserRevokeRole {
                    user: "u".into(),
                    role: "r".into(),
                },
                "06000000010000000000000075010000000000000072",
            ),
            pin(
                AuthCommand::RoleAdd { name: "r".into() },
                "07000000010000000000000072",
            ),
            pin(
                AuthCommand::RoleDelete { name: "r".into() },
                "08000000010000000000000072",
            ),
            pin(
                AuthCommand::RoleRevokePermission {
                    role: "r".into(),
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                },
                "0a00000001000000000000007201000000000000006b0000000000000000",
            ),
            pin(PermissionKind::Read, "00000000"),
            pin(PermissionKind::Write, "01000000"),
            pin(AlarmAction::Deactivate, "01000000"),
            pin(AlarmType::None, "00000000"),
            pin(AlarmType::Corrupt, "02000000"),
            pin(
                RequestOp::Range(range),
                concat!(
                    "0000000001000000000000006b01000000000000006c01000000000000000200000000000000",
                    "0200000003000000010001030000000000000004000000000000000500000000000000060000",
                    "0000000000"
                ),
            ),
            pin(
                RequestOp::Put(put),
                "0100000001000000000000006b0100000000000000760700000000000000010001",
            ),
            pin(
                RequestOp::DeleteRange(delete),
                "0200000001000000000000006101000000000000006201",
            ),
            pin(
                RequestOp::Txn(TxnRequest::default()),
                "03000000000000000000000000000000000000000000000000000000",
            ),
            pin(
                compare,
                "0100000002000000050000000000000001000000000000006b0000000000000000",
            ),
            pin(CompareResult::Equal, "00000000"),
            pin(CompareResult::Greater, "01000000"),
            pin(CompareResult::Less, "02000000"),
            pin(CompareResult::NotEqual, "03000000"),
            pin(CompareTarget::Version(1), "000000000100000000000000"),
            pin(CompareTarget::Create(2), "010000000200000000000000"),
            pin(CompareTarget::Mod(3), "020000000300000000000000"),
            pin(
                CompareTarget::Value(b"v".to_vec()),
                "03000000010000000000000076",
            ),
            pin(CompareTarget::Lease(4), "040000000400000000000000"),
            pin(SortOrder::None, "00000000"),
            pin(SortOrder::Ascend, "01000000"),
            pin(SortOrder::Descend, "02000000"),
            pin(SortTarget::Key, "00000000"),
            pin(SortTarget::Version, "01000000"),
            pin(SortTarget::Create, "02000000"),
            pin(SortTarget::Mod, "03000000"),
            pin(SortTarget::Value, "04000000"),
        ];
        let changed: Vec<String> = cases
            .iter()
            .filter(|(_, now, pinned)| now != pinned)
            .map(|(what, now, pinned)| format!("{what}\n  pinned: {pinned}\n  now:    {now}"))
            .collect();
        assert!(
            changed.is_empty(),
            "the Raft log's encoding of commands changed, against the rule in `Command`'s doc \
             (types.rs): entries already in logs, or sent by members running another build, \
             would no longer decode or would decode as something else. Keep every variant and \
             field as it is and add new data as new variants at the end.\n{}",
            changed.join("\n")
        );
    }
}
