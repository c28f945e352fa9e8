//! Entry points of the fuzz targets for what a member decodes from clients and peers
//! (`fuzz/` at the repository root), and of their corpus replay. Each takes arbitrary bytes and
//! drives the same decoding and checks the server runs before anything reaches Raft. They
//! panic only on a bug: a decoder or a check that panics, or an invariant below that does not
//! hold. Not part of the API.

use std::fmt::Debug;

use prost::Message;
use rampart_api::etcdserverpb as pb;
use rampart_api::{v3electionpb, v3lockpb};
use rampart_network::ForwardCheck;
use rampart_storage::{AuthCommand, AuthState, Command};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::{Authenticator, Caller, TokenSettings};
use crate::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS, GRPC_OVERHEAD_BYTES};
use crate::convert::{self, Limits};
use crate::forward_check::ForwardedCommands;
use crate::gateway::json;
use crate::watch::WatchSpec;

/// Calls `$visit::<T>($bytes)` for the request type number `$kind` (modulo their number) among
/// every request message of etcd's client API that Rampart serves.
macro_rules! each_request {
    ($kind:expr, $visit:ident, $bytes:expr) => {{
        let visits: &[fn(&[u8])] = &[
            $visit::<pb::RangeRequest>,
            $visit::<pb::PutRequest>,
            $visit::<pb::DeleteRangeRequest>,
            $visit::<pb::TxnRequest>,
            $visit::<pb::CompactionRequest>,
            $visit::<pb::LeaseGrantRequest>,
            $visit::<pb::LeaseRevokeRequest>,
            $visit::<pb::LeaseKeepAliveRequest>,
            $visit::<pb::LeaseTimeToLiveRequest>,
            $visit::<pb::LeaseLeasesRequest>,
            $visit::<pb::WatchRequest>,
            $visit::<pb::MemberListRequest>,
            $visit::<pb::MemberAddRequest>,
            $visit::<pb::MemberRemoveRequest>,
            $visit::<pb::MemberUpdateRequest>,
            $visit::<pb::MemberPromoteRequest>,
            $visit::<pb::AlarmRequest>,
            $visit::<pb::StatusRequest>,
            $visit::<pb::DefragmentRequest>,
            $visit::<pb::HashRequest>,
            $visit::<pb::HashKvRequest>,
            $visit::<pb::SnapshotRequest>,
            $visit::<pb::MoveLeaderRequest>,
            $visit::<pb::AuthEnableRequest>,
            $visit::<pb::AuthDisableRequest>,
            $visit::<pb::AuthStatusRequest>,
            $visit::<pb::AuthenticateRequest>,
            $visit::<pb::AuthUserAddRequest>,
            $visit::<pb::AuthUserGetRequest>,
            $visit::<pb::AuthUserListRequest>,
            $visit::<pb::AuthUserDeleteRequest>,
            $visit::<pb::AuthUserChangePasswordRequest>,
            $visit::<pb::AuthUserGrantRoleRequest>,
            $visit::<pb::AuthUserRevokeRoleRequest>,
            $visit::<pb::AuthRoleAddRequest>,
            $visit::<pb::AuthRoleGetRequest>,
            $visit::<pb::AuthRoleListRequest>,
            $visit::<pb::AuthRoleDeleteRequest>,
            $visit::<pb::AuthRoleGrantPermissionRequest>,
            $visit::<pb::AuthRoleRevokePermissionRequest>,
            $visit::<v3lockpb::LockRequest>,
            $visit::<v3lockpb::UnlockRequest>,
            $visit::<v3electionpb::CampaignRequest>,
            $visit::<v3electionpb::ProclaimRequest>,
            $visit::<v3electionpb::LeaderRequest>,
            $visit::<v3electionpb::ResignRequest>,
        ];
        visits[usize::from($kind) % visits.len()]($bytes)
    }};
}

/// The leader's checks of forwarded commands, with the default limits.
fn forward_checks() -> ForwardedCommands {
    ForwardedCommands {
        limits: limits(),
        max_command_bytes: DEFAULT_MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES,
    }
}

fn limits() -> Limits {
    Limits {
        max_txn_ops: DEFAULT_MAX_TXN_OPS,
    }
}

/// A client's gRPC request: the first byte picks the request type, the rest is its protobuf
/// encoding. Decoded as tonic decodes it, then passed through what the service runs before it
/// proposes: the size check, the quota cost, `convert`'s checks, the caller's wrapping; the
/// command that results must pass the leader's checks of forwarded commands (a follower
/// forwards it) and survive the log's encoding. Types 0 to 9 have checks of their own; 10 is
/// an auth token; the rest are decoded only.
pub fn client_request(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let command = match kind {
        0 => {
            if let Some(r) = proto::<pb::RangeRequest>(bytes) {
                let _ = convert::range_request(r);
            }
            None
        }
        1 => proto::<pb::PutRequest>(bytes).and_then(|r| {
            let _cost = crate::alarm::put_cost(&r);
            sized(&r)?;
            convert::put_request(r).ok().map(Command::Put)
        }),
        2 => proto::<pb::DeleteRangeRequest>(bytes).and_then(|r| {
            sized(&r)?;
            convert::delete_request(r).ok().map(Command::DeleteRange)
        }),
        3 => proto::<pb::TxnRequest>(bytes).and_then(|r| {
            let _cost = crate::alarm::txn_cost(&r);
            sized(&r)?;
            convert::txn_request(r, limits()).ok().map(Command::Txn)
        }),
        4 => proto::<pb::CompactionRequest>(bytes).map(|r| Command::Compact {
            revision: r.revision,
        }),
        5 => proto::<pb::LeaseGrantRequest>(bytes).and_then(|r| {
            let ttl = convert::lease_ttl(r.ttl, 1).ok()?;
            let id = if r.id == 0 { 1 } else { r.id };
            Some(Command::LeaseGrant { id, ttl })
        }),
        6 => proto::<pb::LeaseRevokeRequest>(bytes).map(|r| Command::LeaseRevoke { id: r.id }),
        7 => {
            if let Some(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
            }) = proto::<pb::WatchRequest>(bytes)
            {
                let _ = WatchSpec::from_request(&create);
            }
            None
        }
        8 => proto::<pb::AuthRoleGrantPermissionRequest>(bytes).and_then(|r| {
            let permission = crate::services::permission(r.perm).ok()?;
            Some(Command::Auth(AuthCommand::RoleGrantPermission {
                role: r.name,
                permission,
            }))
        }),
        9 => {
            if let Some(r) = proto::<pb::AlarmRequest>(bytes) {
                let _ = crate::alarm::alarm_type_from_pb(r.alarm);
            }
            None
        }
        10 => {
            let token = String::from_utf8_lossy(bytes);
            let ttl = std::time::Duration::from_secs(300);
            let jwt = crate::jwt::JwtKeys::new(
                jsonwebtoken::Algorithm::HS256,
                None,
                Some(b"fuzzing secret"),
                ttl,
            )
            .expect("an HMAC key is always good");
            for tokens in [
                TokenSettings::Simple { ttl },
                TokenSettings::Jwt(Box::new(jwt)),
            ] {
                let _ = Authenticator::new(tokens, 4).caller(&auth_enabled(), Some(&token));
            }
            None
        }
        n => {
            each_request!(n - 11, decode_only, bytes);
            None
        }
    };
    let Some(command) = command else {
        return;
    };
    // What a client's checked command becomes on its way into the log: a follower forwards
    // it, the leader checks it again, and it is encoded into an entry.
    let checks = forward_checks();
    for command in [
        command.clone(),
        Caller::User("u".into()).wrap(command, true),
    ] {
        if let Err(e) = checks.check(&command) {
            panic!("a checked client command {command:?} fails the leader's check: {e}");
        }
        let encoded = bincode::serialize(&command).expect("a command encodes");
        let decoded: Command = bincode::deserialize(&encoded).expect("a command decodes");
        assert_eq!(decoded, command, "a command decodes as it was encoded");
    }
}

/// The protobuf request in `bytes`, if it decodes.
fn proto<T: Message + Default>(bytes: &[u8]) -> Option<T> {
    T::decode(bytes).ok()
}

fn decode_only<T: Message + Default>(bytes: &[u8]) {
    let _ = proto::<T>(bytes);
}

/// `Some` if `request` passes the in-process client's size check (the default
/// `--max-request-bytes`).
fn sized(request: &impl Message) -> Option<()> {
    (request.encoded_len() <= DEFAULT_MAX_REQUEST_BYTES).then_some(())
}

/// An auth store with authentication on and a root user, for token checks.
fn auth_enabled() -> AuthState {
    let mut auth = AuthState::default();
    for step in [
        AuthCommand::UserAdd {
            name: "root".into(),
            password: Some("$2b$04$hash".into()),
        },
        AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        },
        AuthCommand::Enable {
            token_key: b"key".to_vec(),
        },
    ] {
        auth = auth.after(&step).expect("the auth steps apply");
    }
    auth
}

/// A body of the JSON gateway: the first byte picks the call, the rest is the body. 0 and 1 are
/// the two streamed calls (Watch, LeaseKeepAlive), whose bodies are read as a sequence of
/// messages; the rest are unary calls, each body one request message. A message that decodes
/// must encode as JSON and decode back to itself.
pub fn gateway_json(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind {
        0 => json_stream::<pb::WatchRequest>(body),
        1 => json_stream::<pb::LeaseKeepAliveRequest>(body),
        n => each_request!(n - 2, json_request, body),
    }
}

fn json_request<T>(body: &[u8])
where
    T: DeserializeOwned + Serialize + Default + PartialEq + Debug,
{
    if let Ok(message) = json::decode::<T>(body) {
        json_round_trip(&message);
    }
}

/// Reads `body` as a streamed call's requests, as they would arrive whole.
fn json_stream<T>(body: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let mut buffered = body.to_vec();
    let mut left = buffered.len();
    while let Some(message) = json::take_message::<T>(&mut buffered, true) {
        match message {
            Ok(message) => json_round_trip(&message),
            Err(_) => break,
        }
        assert!(
            buffered.len() < left,
            "each message takes bytes off the body"
        );
        left = buffered.len();
    }
}

fn json_round_trip<T>(message: &T)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    // Unknown enum numbers decode but do not encode as names; nothing to compare then.
    let Ok(encoded) = serde_json::to_vec(message) else {
        return;
    };
    let again: T = serde_json::from_slice(&encoded).expect("the gateway's own JSON decodes");
    assert_eq!(
        &again, message,
        "a request decodes from its own JSON as it was"
    );
}

/// A peer message (see [`rampart_network::fuzzing::peer_message`]), forwarded commands checked
/// as this member's leader checks them.
pub fn peer_message(data: &[u8]) {
    rampart_network::fuzzing::peer_message(data, &forward_checks());
}

/// Seed inputs of the client and gateway targets: valid requests of the common calls, each
/// with its type byte.
pub fn seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let put = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 7,
        prev_kv: true,
        ..Default::default()
    };
    let range = pb::RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        limit: 10,
        sort_order: 2,
        sort_target: 4,
        ..Default::default()
    };
    let op = |request| pb::RequestOp {
        request: Some(request),
    };
    use pb::request_op::Request;
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: 0,
            target: 3,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            target_union: Some(pb::compare::TargetUnion::Value(b"v".to_vec())),
        }],
        success: vec![
            op(Request::RequestPut(put.clone())),
            op(Request::RequestTxn(pb::TxnRequest {
                success: vec![op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: b"d".to_vec(),
                    range_end: vec![0],
                    ..Default::default()
                }))],
                failure: vec![op(Request::RequestRange(range.clone()))],
                ..Default::default()
            })),
        ],
        failure: vec![op(Request::RequestRange(range.clone()))],
    };
    let watch = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                start_revision: 3,
                filters: vec![1],
                prev_kv: true,
                ..Default::default()
            },
        )),
    };
    let grant = pb::AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: Some(rampart_api::authpb::Permission {
            perm_type: 2,
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        }),
    };
    let with = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    let client = vec![
        with(0, range.encode_to_vec()),
        with(1, put.encode_to_vec()),
        with(
            2,
            pb::DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                prev_kv: true,
            }
            .encode_to_vec(),
        ),
        with(3, txn.encode_to_vec()),
        with(
            4,
            pb::CompactionRequest {
                revision: 5,
                physical: true,
            }
            .encode_to_vec(),
        ),
        with(5, pb::LeaseGrantRequest { ttl: 60, id: 0 }.encode_to_vec()),
        with(7, watch.encode_to_vec()),
        with(8, grant.encode_to_vec()),
        with(10, b"abc.1700000000.726f6f74.00ff".to_vec()),
    ];
    let json = |kind: u8, text: &str| [vec![kind], text.as_bytes().to_vec()].concat();
    let gateway = vec![
        json(
            0,
            r#"{"create_request":{"key":"YQ==","range_end":"Yg==","prev_kv":true}} {"progress_request":{}}"#,
        ),
        json(1, r#"{"ID":"7"}{"ID":"8"}"#),
        json(
            2,
            r#"{"key":"YQ==","range_end":"eg==","limit":"3","sort_order":"DESCEND"}"#,
        ),
        json(
            3,
            r#"{"key":"Zm9v","value":"YmFy","lease":"7","prev_kv":true}"#,
        ),
        json(
            5,
            r#"{"compare":[{"key":"Zm9v","target":"VALUE","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        json(7, r#"{"TTL":"10","ID":"0"}"#),
        json(
            40,
            r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ==","range_end":"Yg=="}}"#,
        ),
    ];
    (client, gateway)
}

#[cfg(test)]
mod tests {
    use rampart_storage::fuzzing::{fuzz_dir, replay};

    #[test]
    fn client_requests_corpus_replays() {
        replay("client_requests", super::client_request);
    }

    #[test]
    fn gateway_json_corpus_replays() {
        replay("gateway_json", super::gateway_json);
    }

    #[test]
    fn peer_messages_corpus_replays() {
        replay("peer_messages", super::peer_message);
    }

    #[test]
    #[ignore = "writes the fuzz seed corpus; run by hand"]
    fn write_seeds() {
        let (client, gateway) = super::seeds();
        let peer = rampart_network::fuzzing::seeds();
        for (target, seeds) in [
            ("client_requests", client),
            ("gateway_json", gateway),
            ("peer_messages", peer),
        ] {
            let dir = fuzz_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (n, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
            }
        }
    }
}
