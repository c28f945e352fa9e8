//! The entry point of the `peer_messages` fuzz target (`fuzz/` at the repository root) and its
//! corpus replay: arbitrary bytes decoded as each message of the peer protocol, as the
//! receiving side decodes requests and the sending side replies. It panics only on a bug: a
//! decoder that panics, or a decoded message that does not encode back to itself. Not part of
//! the API.

use std::fmt::Debug;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rampart_storage::{Command, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::messages::{
    self, AdminReply, AdminRequest, ForwardReply, LeaseReply, LeaseRequest, ReadIndexReply,
};
use crate::peer_service::ForwardCheck;

/// The message types, in the order the first byte of an input picks them.
pub const MESSAGES: &[&str] = &[
    "AppendEntriesRequest",
    "InstallSnapshotRequest",
    "VoteRequest",
    "Forward (Command)",
    "ForwardBatch (Vec<Command>)",
    "ReadIndex (())",
    "LeaseRequest",
    "AdminRequest",
    "AppendEntries reply",
    "InstallSnapshot reply",
    "Vote reply",
    "ForwardReply",
    "ForwardBatch reply",
    "ReadIndexReply",
    "LeaseReply",
    "AdminReply",
];

/// The first byte of `data` picks a message type ([`MESSAGES`], modulo their number), the rest
/// is decoded as it; forwarded commands that decode then pass `checks`, as the leader checks
/// them before proposing.
pub fn peer_message(data: &[u8], checks: &dyn ForwardCheck) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match usize::from(kind) % MESSAGES.len() {
        0 => {
            round_trip::<AppendEntriesRequest<TypeConfig>>(bytes);
        }
        1 => {
            round_trip::<InstallSnapshotRequest<TypeConfig>>(bytes);
        }
        2 => {
            round_trip::<VoteRequest<NodeId>>(bytes);
        }
        3 => {
            if let Some(command) = round_trip::<Command>(bytes) {
                let _ = checks.check(&command);
            }
        }
        4 => {
            for command in round_trip::<Vec<Command>>(bytes).unwrap_or_default() {
                let _ = checks.check(&command);
            }
        }
        5 => {
            round_trip::<()>(bytes);
        }
        6 => {
            round_trip::<LeaseRequest>(bytes);
        }
        7 => {
            round_trip::<AdminRequest>(bytes);
        }
        8 => {
            round_trip::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(bytes);
        }
        9 => {
            type Reply =
                Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
            round_trip::<Reply>(bytes);
        }
        10 => {
            round_trip::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(bytes);
        }
        11 => {
            round_trip::<ForwardReply>(bytes);
        }
        12 => {
            round_trip::<Vec<ForwardReply>>(bytes);
        }
        13 => {
            round_trip::<ReadIndexReply>(bytes);
        }
        14 => {
            round_trip::<LeaseReply>(bytes);
        }
        _ => {
            round_trip::<AdminReply>(bytes);
        }
    }
}

/// Decodes `bytes` as a `T`; if that succeeds, checks that the message encodes and decodes
/// back to itself.
fn round_trip<T: Serialize + DeserializeOwned + Debug>(bytes: &[u8]) -> Option<T> {
    let message: T = messages::decode(bytes).ok()?;
    let encoded = bincode::serialize(&message).expect("a decoded message encodes");
    let again: T = messages::decode(&encoded).expect("an encoded message decodes");
    assert_eq!(
        format!("{again:?}"),
        format!("{message:?}"),
        "a message decodes, encodes and decodes back to itself"
    );
    Some(message)
}

/// A message of each type, as the fuzz target's input for it (the type's byte, then the
/// message): the seeds the fuzzer starts from.
pub fn seeds() -> Vec<Vec<u8>> {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
    use rampart_storage::{PutRequest, RequestOp, TxnRequest};

    let log_id = |index| LogId::new(CommittedLeaderId::new(3, 1), index);
    let put = Command::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    let txn = Command::Txn(TxnRequest {
        success: vec![RequestOp::Put(PutRequest {
            key: b"t".to_vec(),
            ..Default::default()
        })],
        ..Default::default()
    });
    let as_user = Command::AsUser {
        user: "u".into(),
        command: Box::new(put.clone()),
    };
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(4)),
        entries: vec![
            Entry {
                log_id: log_id(5),
                payload: EntryPayload::Normal(put.clone()),
            },
            Entry {
                log_id: log_id(6),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(7),
                payload: EntryPayload::Normal(Command::Batch(vec![txn.clone(), as_user.clone()])),
            },
        ],
        leader_commit: Some(log_id(4)),
    };
    let snapshot = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(9)),
            last_membership: Default::default(),
            snapshot_id: "3-9-1".into(),
        },
        offset: 0,
        data: b"RAMPSNAP\x02\0\0\0".to_vec(),
        done: false,
    };
    let vote = VoteRequest::new(Vote::new(4, 2), Some(log_id(9)));
    let with = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    fn enc<T: Serialize>(message: &T) -> Vec<u8> {
        bincode::serialize(message).expect("a seed encodes")
    }
    vec![
        with(0, enc(&append)),
        with(1, enc(&snapshot)),
        with(2, enc(&vote)),
        with(3, enc(&txn)),
        with(4, enc(&vec![put, txn, as_user])),
        with(5, enc(&())),
        with(6, enc(&LeaseRequest::KeepAlive { id: 7 })),
        with(7, enc(&AdminRequest::HashKv { revision: 5 })),
        with(
            8,
            enc(&Ok::<_, RaftError<NodeId>>(
                AppendEntriesResponse::<NodeId>::Success,
            )),
        ),
        with(
            10,
            enc(&Ok::<_, RaftError<NodeId>>(VoteResponse::new(
                Vote::new(4, 2),
                Some(log_id(9)),
                true,
            ))),
        ),
        with(13, enc(&Ok::<u64, messages::ForwardError>(12))),
    ]
}
